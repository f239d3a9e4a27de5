"""Where a contract result goes: the DAG run's report folder and, when it stops the run, MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import tracking
from tasks.config import PipelineSpec
from tasks.report import put_json, report_dir

RESULT_FILE = "quality.json"


def write_result(spec: PipelineSpec, result: dict[str, Any], dag_run_id: str) -> Path:
    """The result document as `<reports_root>/<dag run>/quality.json`, next to the drift report."""
    return put_json(result, report_dir(spec, dag_run_id), RESULT_FILE)


def log_failed_run(spec: PipelineSpec, result: dict[str, Any], dag_run_id: str,
                   tracking_uri: str | None = None) -> str:
    """Record a failed check as a FAILED run in the spec's experiment; no model is trained or registered.

    Find them with the filter `tags.quality.passed = 'false'`.

    Returns:
        The MLflow run id.
    """
    experiment = tracking.use_experiment(spec.name, tracking_uri)
    client = tracking.client()
    failed = sorted({r["rule"] for r in result["rules"] if not r["passed"] and r["severity"] == "error"})
    run = client.create_run(experiment, run_name=f"check_quality failed ({dag_run_id})", tags={
        "quality.passed": "false", "quality.failed_rules": ",".join(failed),
        "data.fingerprint": result["fingerprint"], "data.snapshot": result["snapshot"],
        "airflow.dag_run_id": dag_run_id, "airflow.task_id": "check_quality",
        "mlflow.note.content": "\n".join(result["failures"]),
    })
    client.log_metric(run.info.run_id, "quality.rows", result["rows"])
    client.log_dict(run.info.run_id, result, "quality/result.json")
    client.set_terminated(run.info.run_id, status="FAILED")
    return str(run.info.run_id)
