"""The retrain decision: the spec's `monitoring` rules over a drift digest and live metrics, kept with its reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from tasks import tracking
from tasks.config import Monitoring, PipelineSpec
from tasks.monitor import monitor_report_dir
from tasks.report import put_json

DECISION_FILE = "decision.json"


@dataclass(frozen=True)
class Check:
    """One retrain rule: its value and threshold, whether it asks for a retrain, and why, in words."""

    rule: str
    value: float | None
    threshold: float
    retrain: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """Whether to retrain, the reasons, every rule's outcome, and where a retrain's window should end."""

    retrain: bool
    reasons: list[str]
    checks: list[Check]
    window_end: str | None  # the day after the newest event with an outcome; None: the retrain picks its own

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _drift_check(policy: Monitoring, drift: dict[str, Any]) -> Check:
    limit = policy.max_drifted_share
    if drift.get("report") is None:
        return Check("drifted_share", None, limit, False,
                     f"drift not judged: {drift.get('rows', 0)} predictions by champion "
                     f"v{drift.get('champion_version')} in {drift.get('interval')}, {policy.min_rows} needed")
    share, drifted = drift["drifted_share"], drift["drifted"]
    counted = f"{len(drifted)} of {drift['features']} features drifted ({share:.0%}"
    if share >= limit:
        return Check("drifted_share", share, limit, True, f"{counted} >= {limit:.0%}): {', '.join(drifted)}")
    return Check("drifted_share", share, limit, False, f"{counted} < {limit:.0%})")


def _metric_check(policy: Monitoring, live: dict[str, Any], metric: str, floor: float) -> Check:
    name = {"roc_auc": "live ROC AUC", "accuracy": "live accuracy"}[metric]
    labelled = live.get("labelled", 0)
    value = (live.get("metrics") or {}).get(metric)
    if labelled < policy.min_labelled_rows or value is None:
        why = live.get("reason") or f"{labelled} predictions with an arrived outcome, {policy.min_labelled_rows} needed"
        return Check(metric, None, floor, False, f"{name} not judged: {why}")
    on = f"{name} {value:.3f} on {labelled:,} predictions with an arrived outcome"
    if value < floor:
        return Check(metric, value, floor, True, f"{on} is below {floor:g}")
    return Check(metric, value, floor, False, f"{on} (floor {floor:g})")


def decide_retrain(policy: Monitoring, drift: dict[str, Any], live: dict[str, Any]) -> Decision:
    """Apply the spec's `monitoring` rules to a drift digest and live metrics (from the functions above)."""
    checks = [_drift_check(policy, drift)]
    if policy.retrain_on_prediction_drift and drift.get("report") is not None:
        moved = bool(drift.get("prediction_drift"))
        checks.append(Check("prediction_drift", float(moved), 1.0, moved,
                            "the live scores drifted from the champion's scores on its training data" if moved
                            else "the live scores look like the champion's scores on its training data"))
    for metric, floor in (("roc_auc", policy.min_roc_auc), ("accuracy", policy.min_accuracy)):
        if floor is not None:
            checks.append(_metric_check(policy, live, metric, floor))
    reasons = [c.reason for c in checks if c.retrain]
    newest = live.get("newest_event")
    window_end = (pd.Timestamp(newest).normalize() + pd.Timedelta(days=1)).date().isoformat() if newest else None
    return Decision(bool(reasons), reasons, checks, window_end)


def record_decision(spec: PipelineSpec, decision: Decision, drift: dict[str, Any], live: dict[str, Any],
                    dag_run_id: str, dag_id: str = "", tracking_uri: str | None = None) -> str:
    """Keep the decision and why: `decision.json` next to the run's report, an MLflow run in experiment
    `<name>_monitoring` (metrics over time), and `monitor.*` tags on the champion's version.

    Returns:
        Where decision.json was written.
    """
    import mlflow

    champion = drift.get("champion_version") or live.get("champion_version")
    doc = {"dag_id": dag_id, "dag_run_id": dag_run_id, "model_name": spec.registered_model,
           "champion_version": champion, **decision.to_dict(), "drift": drift, "live": live}
    where = put_json(doc, monitor_report_dir(spec, dag_id, dag_run_id), DECISION_FILE)
    experiment = tracking.use_experiment(f"{spec.name}_monitoring", tracking_uri)
    metrics = {"live_rows": drift.get("rows"), "drifted_share": drift.get("drifted_share"),
               "labelled_rows": live.get("labelled"),
               **{f"live_{k}": v for k, v in (live.get("metrics") or {}).items()}}
    # A retried task (or a rerun of the DAG run) records into the run it started before, not a second one.
    earlier = tracking.client().search_runs([experiment], f"tags.`airflow.run_id` = '{dag_run_id}'", max_results=1)
    with mlflow.start_run(run_id=earlier[0].info.run_id if earlier else None, experiment_id=experiment,
                          run_name=f"{dag_id or 'monitor'} {drift.get('interval', '')}"):
        mlflow.set_tags({"monitor.retrain": str(decision.retrain).lower(), "model.version": str(champion),
                         "monitor.reasons": "; ".join(decision.reasons)[:5000] or "none",
                         "airflow.dag_id": dag_id, "airflow.run_id": dag_run_id})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_dict(doc, DECISION_FILE)
    if champion:
        verdict = ("retrain: " + "; ".join(decision.reasons)) if decision.retrain else "ok"
        for key, value in {"monitor.decision": verdict[:5000], "monitor.run": dag_run_id}.items():
            tracking.client().set_model_version_tag(spec.registered_model, champion, key, value)
    return str(where)
