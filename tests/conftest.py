"""Shared fixtures: an isolated STATE_DIR, the demo database seeded with a slice, a small spec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

# Before anything imports tasks or airflow: every test run gets its own installation.
_STATE = Path(tempfile.mkdtemp(prefix="mlops-test-state-"))
os.environ["STATE_DIR"] = str(_STATE)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE}/mlflow/mlflow.db"
os.environ["AIRFLOW_CONN_FLIGHTS_DB"] = f"sqlite:///{_STATE}/flights.db"
os.environ.pop("PIPELINE_CONFIG", None)
os.environ["AIRFLOW_HOME"] = str(_STATE / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")

from tasks import seed, settings  # noqa: E402
from tasks.config import PipelineSpec, load_spec  # noqa: E402
from tasks.snapshot import Window  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://root@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
JUNE_WEEK = Window(datetime(2013, 6, 1), datetime(2013, 6, 8))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def sqlite_url(state_dir: Path) -> str:
    """The demo database (SQLite) with June and July 2013, plus the landing file."""
    url = f"sqlite:///{state_dir}/flights.db"
    seed.seed_database(url, months={6, 7})
    seed.write_landing_files(settings.state_dir())
    return url


@pytest.fixture(scope="session")
def airflow_db(sqlite_url: str) -> None:
    """A migrated Airflow metadata database (dag.test needs one), once per session."""
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture()
def dag(airflow_db: None):  # noqa: ANN201 - an airflow DAG; airflow is imported only here
    """train_and_deploy freshly parsed: dag.test() merges a run's conf into the DAG's params in place,
    so a DAG object shared between tests would carry one test's conf into the next."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["train_and_deploy"]


@pytest.fixture(scope="session")
def spec() -> PipelineSpec:
    """The flights spec, sized for tests: few epochs."""
    base = load_spec(REPO / "config" / "flights.yaml")
    return base.model_copy(update={"training": base.training.model_copy(update={"epochs": 2})})


@pytest.fixture()
def data_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


@pytest.fixture(scope="session")
def live_registry(tmp_path_factory):  # noqa: ANN201 - a serving_live.Registry
    """A real MLflow server for the serving tests (each test registers models of its own name), once per session."""
    from serving_live import mlflow_registry

    with mlflow_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry
