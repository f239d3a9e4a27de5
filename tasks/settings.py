"""Where local state lives and which external systems to use, from the environment.

The Makefile exports the same variables with the same defaults, so plain-Python use, tests and
Airflow tasks agree. Functions, not constants: tests point the environment elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """All local state: Airflow home, MLflow store, snapshots, reports, prediction logs."""
    return Path(os.environ.get("STATE_DIR", REPO_ROOT / ".state")).resolve()


def pipeline_config_path() -> Path:
    return Path(os.environ.get("PIPELINE_CONFIG", REPO_ROOT / "config" / "flights.yaml"))


def mlflow_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir()}/mlflow/mlflow.db"


def mlflow_artifact_root() -> Path:
    return state_dir() / "mlflow" / "artifacts"


def flights_db_uri() -> str:
    """The demo business database as an Airflow-style connection URI (`AIRFLOW_CONN_FLIGHTS_DB`)."""
    return os.environ.get("AIRFLOW_CONN_FLIGHTS_DB") or f"sqlite:///{state_dir()}/flights.db"
