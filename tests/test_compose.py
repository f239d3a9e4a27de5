"""docker-compose.yaml holds together (no engine runs here): services, GPU worker, and every path,
module, route and environment variable it refers to exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
           "airflow-worker-gpu", "airflow-init"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_the_stack_follows_the_official_layout(compose):
    services = compose["services"]
    assert AIRFLOW | {"postgres", "redis", "mlflow", "serving"} <= set(services)
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = env["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://") and "redis:6379" in broker
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        assert "healthcheck" in service or name == "airflow-init", f"{name} has no healthcheck"


def test_the_gpu_worker_takes_queue_gpu_and_reserves_a_gpu(compose):
    gpu = compose["services"]["airflow-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert re.search(r"celery worker -q gpu --concurrency 1", gpu["command"])
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    init = "\n".join(compose["services"]["airflow-init"]["command"])
    assert 'airflow pools set gpu 1' in init  # the pool the train task runs in (TRAIN_POOL's default)
    dag_source = (REPO / "dags" / "train_and_deploy.py").read_text()
    assert 'os.environ.get("TRAIN_POOL", "gpu")' in dag_source
    assert 'os.environ.get("TRAIN_QUEUE", "default")' in dag_source


def test_every_file_the_stack_refers_to_exists(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    for dockerfile in ("config/airflow.Dockerfile", "serving/Dockerfile"):
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                source = line.split()[1]
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source} is not in the repo"


def test_commands_modules_routes_and_variables_exist(compose):
    services = compose["services"]
    init = "\n".join(services["airflow-init"]["command"])
    assert "python -m tasks.seed" in init and "--months" in (REPO / "tasks" / "seed.py").read_text()
    ready = " ".join(services["serving"]["healthcheck"]["test"])
    assert "/v2/health/ready" in ready and "/v2/health/ready" in (REPO / "serving" / "app.py").read_text()
    code = "\n".join(p.read_text() for folder in ("tasks", "serving", "dags")
                     for p in (REPO / folder).rglob("*.py"))
    variables = set(services["airflow-scheduler"]["environment"]) | set(services["serving"]["environment"])
    ours = {v for v in variables if not v.startswith("AIRFLOW__") and not v.startswith("AIRFLOW_CONN_")}
    for variable in sorted(ours):
        assert variable in code, f"compose sets {variable}, which no code reads"
    assert "flights_db" in (REPO / "config" / "flights.yaml").read_text()  # AIRFLOW_CONN_FLIGHTS_DB's connection
