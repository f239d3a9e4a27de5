# The Airflow image for docker-compose.yaml: the official image plus the project's pinned set and code.
# Build from the repo root: docker build -f config/airflow.Dockerfile -t flights-mlops/airflow:3.3.2 .
# MLflow's server runs from this image too, so client and server are the same mlflow version.
FROM apache/airflow:3.3.2-python3.11

# Mount points of the state and MLflow artifact volumes; an empty named volume takes this ownership.
USER root
RUN mkdir -p /state /mlflow/artifacts \
 && chown -R airflow:0 /state /mlflow
USER airflow

# torch first, from the CPU index: PyPI's Linux wheel is the CUDA build (GBs a CPU worker never uses).
# The GPU worker builds with TORCH_INDEX_URL=https://pypi.org/simple to get exactly that CUDA build.
# The pinned set then finds torch==X satisfied by X+cpu and leaves it alone.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt /opt/airflow/project/requirements.txt
RUN pip install --no-cache-dir "$(grep -i '^torch==' /opt/airflow/project/requirements.txt)" \
      --index-url "${TORCH_INDEX_URL}" \
 && pip install --no-cache-dir -r /opt/airflow/project/requirements.txt

# Code last (changes most often). Root-owned and read-only to the services that run it.
COPY dags/ /opt/airflow/project/dags/
COPY plugins/ /opt/airflow/project/plugins/
COPY tasks/ /opt/airflow/project/tasks/
COPY serving/ /opt/airflow/project/serving/
COPY config/ /opt/airflow/project/config/

ENV PYTHONPATH=/opt/airflow/project \
    PIPELINE_CONFIG=/opt/airflow/project/config/flights.yaml \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/project/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/project/plugins \
    STATE_DIR=/state
