"""The pipeline's logic as plain, typed functions: no Airflow import anywhere in this package."""
