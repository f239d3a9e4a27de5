"""Per-run drift report: where it is stored and how it is tied to the candidate and its run."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow

from tasks import registry, tracking
from tasks.config import PipelineSpec, as_path
from tasks.drift import build_drift_report


def report_dir(spec: PipelineSpec, dag_run_id: str) -> Path:
    """A report folder per DAG run; the id is reduced to a safe file name."""
    return spec.reports_root_path / re.sub(r"[^A-Za-z0-9_.-]+", "_", dag_run_id)


def write_run_report(spec: PipelineSpec, snapshot: str, run_id: str, version: str, dag_run_id: str,
                     tracking_uri: str | None = None) -> str:
    """Drift of this snapshot against the champion's training snapshot; logged on the candidate run.

    Returns:
        The report folder (report.html, summary.json).
    """
    tracking.use_experiment(spec.name, tracking_uri)
    champion = registry.champion_version(spec.registered_model)
    reference = None
    if champion is not None:
        ref = registry.version_tags(spec.registered_model, champion).get("data.snapshot")
        reference = as_path(ref) if ref and as_path(ref).exists() else None
    out = report_dir(spec, dag_run_id)
    summary = build_drift_report(spec, as_path(snapshot), reference, out, context={
        "dag_run_id": dag_run_id, "model_name": spec.registered_model, "model_version": version,
        "champion_version": champion,
    })
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(out), "drift")
    tracking.client().set_model_version_tag(spec.registered_model, version, "drift.status", summary["status"])
    tracking.client().set_model_version_tag(spec.registered_model, version, "drift.drifted_share",
                                            f"{summary.get('drifted_share', 0):.3f}")
    return str(out)
