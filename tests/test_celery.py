"""Scale-out for real: train_and_deploy on the CeleryExecutor with the local Redis broker and a PostgreSQL
metadata database, one worker on queue `default` and one on queue `gpu`; training lands on the gpu one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from live_airflow import REPO, free_port

pytestmark = pytest.mark.slow
PG = os.environ.get("TEST_POSTGRES_LIBPQ", "postgresql://root@127.0.0.1:5432/test")
REDIS = ("127.0.0.1", 6379)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def metadata_db() -> Iterator[str]:
    """A PostgreSQL database of its own for Airflow's metadata, dropped afterwards."""
    name = f"airflow_celery_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _state(db: str, run_id: str) -> str | None:
    with psycopg.connect(PG.rsplit("/", 1)[0] + f"/{db}") as conn:
        row = conn.execute("SELECT state FROM dag_run WHERE dag_id = 'train_and_deploy' AND run_id = %s",
                           (run_id,)).fetchone()
        return row[0] if row else None


def _task_rows(db: str, run_id: str) -> dict[str, tuple[str, str, int]]:
    with psycopg.connect(PG.rsplit("/", 1)[0] + f"/{db}") as conn:
        rows = conn.execute("SELECT task_id, state, queue, try_number FROM task_instance "
                            "WHERE dag_id = 'train_and_deploy' AND run_id = %s", (run_id,)).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_train_runs_on_the_gpu_queue_worker_and_the_run_succeeds(sqlite_url, tmp_path, metadata_db):
    if not _reachable(*REDIS):
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home, state = tmp_path / "airflow", tmp_path / "state"
    home.mkdir()
    (state / "landing").mkdir(parents=True)
    # The demo data (June and July) and the airports file the spec joins.
    from tasks import seed

    seed.write_landing_files(state)
    broker_db = 1 + int(uuid.uuid4().int % 14)  # a Redis database of its own, so parallel runs never mix
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "PIPELINE"))}
    env.update({
        "AIRFLOW_HOME": str(home), "PYTHONPATH": str(REPO), "STATE_DIR": str(state),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://root@127.0.0.1:5432/{metadata_db}",
        # The API server's async engine: psycopg 3 (installed) rather than asyncpg (not needed elsewhere).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+psycopg://root@127.0.0.1:5432/{metadata_db}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{broker_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://root@127.0.0.1:5432/{metadata_db}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW_CONN_FLIGHTS_DB": sqlite_url,
        "MLFLOW_TRACKING_URI": f"sqlite:///{state}/mlflow/mlflow.db",
        "TRAIN_QUEUE": "gpu",  # what compose sets with its gpu profile
    })
    airflow = str(Path(sys.executable).parent / "airflow")

    def cli(*args: str) -> str:
        done = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    cli("db", "migrate")
    cli("pools", "set", "gpu", "1", "Training jobs: one per GPU")
    cli("dags", "reserialize")
    services = {
        "api-server": ["api-server", "-H", "127.0.0.1", "-p", str(port)],
        "scheduler": ["scheduler"],
        "worker-default": ["celery", "worker", "--queues", "default", "--concurrency", "1",
                           "--celery-hostname", "default@%h"],
        "worker-gpu": ["celery", "worker", "--queues", "gpu", "--concurrency", "1", "--celery-hostname", "gpu@%h"],
    }
    procs = []
    try:
        for name, args in services.items():
            worker = {"WORKER_NAME": name} if name.startswith("worker") else {}
            with (tmp_path / f"{name}.log").open("w") as log:
                procs.append(subprocess.Popen([airflow, *args], env={**env, **worker}, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        run_id = f"celery__{uuid.uuid4().hex[:8]}"
        conf = {"window_end": "2013-06-22", "window_days": 14, "epochs": 1}
        cli("dags", "trigger", "train_and_deploy", "--run-id", run_id, "--conf", json.dumps(conf))
        deadline = time.monotonic() + 600
        while (state_now := _state(metadata_db, run_id)) not in ("success", "failed"):
            for proc, name in zip(procs, services, strict=True):
                assert proc.poll() is None, f"{name} exited:\n" + (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"run still {state_now}: {_task_rows(metadata_db, run_id)}"
            time.sleep(3)
        tasks = _task_rows(metadata_db, run_id)
        assert state_now == "success", tasks
        assert tasks["train"][1] == "gpu" and tasks["extract"][1] == "default", tasks
        # The model was trained by the gpu worker, as the run's lineage tag says.
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        [run] = client.search_runs([client.get_experiment_by_name("flights").experiment_id],
                                   "tags.`airflow.run_id` = '" + run_id + "'")
        assert run.data.tags["train.worker"] == "worker-gpu"
        gpu_log = (tmp_path / "worker-gpu.log").read_text()
        assert "train" in gpu_log and "check_quality" not in gpu_log
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
