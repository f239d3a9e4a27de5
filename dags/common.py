"""Helpers every DAG shares: task defaults, the pipeline spec, a failure that is not retried, a connection's URL.

Imports stay inside the functions: parsing a DAG file must not load the pipeline's libraries.
"""

from __future__ import annotations

from typing import Any, NoReturn


def default_args() -> dict[str, Any]:
    """Every DAG's task defaults: no retries unless a task asks for them, and for every failed task one
    summary line (task, reason, log link) and, when configured, a mail."""
    from dags.notifications import RunFailureNotifier

    return {"owner": "mlops", "retries": 0, "on_failure_callback": [RunFailureNotifier()]}


def spec() -> Any:
    """The pipeline spec (PIPELINE_CONFIG, else config/flights.yaml)."""
    from tasks.config import load_spec

    return load_spec()


def fail(exc: Exception) -> NoReturn:
    """Fail the task without retries: for deterministic failures (bad data, a refused candidate, a bad
    parameter), where another attempt would give the same answer."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(str(exc)) from exc


def connection_url(conn_id: str) -> str:
    """A SQLAlchemy URL from an Airflow connection: credentials stay in the connection (or AIRFLOW_CONN_*)."""
    from airflow.sdk import Connection

    from tasks.sources import sqlalchemy_url

    conn = Connection.get(conn_id)
    return sqlalchemy_url(conn.conn_type, conn.host, conn.schema, conn.login, conn.password, conn.port)
