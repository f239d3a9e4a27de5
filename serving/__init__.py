"""The model server: ASGI, onnxruntime, follows the registry's champion alias. No torch/mlflow/airflow."""
