"""The promotion gate: declared rules, and the champion re-scored on the candidate's holdout."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from tasks import registry, tracking
from tasks.config import PipelineSpec
from tasks.evaluate import PARITY_TOLERANCE, download_model, holdout_columns
from tasks.metrics import classification_metrics

log = logging.getLogger(__name__)


class GateRejected(RuntimeError):
    """The candidate failed a promotion rule; the message lists every failed rule."""


def _rule(name: str, value: float | None, threshold: float | None, passed: bool, reason: str,
          baseline: float | None = None) -> dict[str, Any]:
    return {"rule": name, "value": value, "threshold": threshold, "baseline": baseline,
            "passed": bool(passed), "reason": reason}


def rescore_champion(spec: PipelineSpec, champion: str, snapshot: Path) -> dict[str, float]:
    """The champion's metrics on the candidate's holdout (never its old numbers)."""
    columns, labels = holdout_columns(spec, snapshot)
    with tempfile.TemporaryDirectory() as tmp:
        probs = download_model(spec, champion, Path(tmp)).predict_columns(columns)
    return classification_metrics(labels, probs)


def evaluate_rules(spec: PipelineSpec, candidate: str, evaluation: dict[str, Any],
                   quality: dict[str, Any], champion: str | None,
                   champion_metrics: dict[str, float] | None) -> list[dict[str, Any]]:
    auc = evaluation["metrics"]["roc_auc"]
    rules = [
        _rule("data_quality", None, None, quality.get("passed", False),
              "the snapshot passed its data contract" if quality.get("passed")
              else "the snapshot failed its data contract"),
        _rule("parity", evaluation["parity_max_abs_diff"], PARITY_TOLERANCE,
              evaluation["parity_max_abs_diff"] <= PARITY_TOLERANCE,
              f"ONNX vs torch max |diff| {evaluation['parity_max_abs_diff']:.2e}"),
        _rule("min_roc_auc", auc, spec.gate.min_roc_auc, not math.isnan(auc) and auc >= spec.gate.min_roc_auc,
              f"candidate ROC AUC {auc:.4f}, at least {spec.gate.min_roc_auc} required"),
    ]
    if champion is not None and champion != candidate and champion_metrics is not None:
        base = champion_metrics["roc_auc"]
        floor = base - spec.gate.max_degradation
        rules.append(_rule("not_worse_than_champion", auc, floor, auc >= floor,
                           f"candidate ROC AUC {auc:.4f} vs champion v{champion} {base:.4f} on the same "
                           f"holdout (may trail by at most {spec.gate.max_degradation})", baseline=base))
    return rules


def _window_end(spec: PipelineSpec, version: str) -> str:
    """The end of the training window of a version (ISO text sorts like time)."""
    run_id = tracking.client().get_model_version(spec.registered_model, version).run_id
    if not run_id:
        return ""
    return str(tracking.client().get_run(run_id).data.tags.get("data.window_end", ""))


def no_change_reason(spec: PipelineSpec, candidate: str, champion: str | None) -> str | None:
    """Why promotion has nothing to do: the candidate already serves, or the champion is newer."""
    if champion is None:
        return None
    if champion == candidate:
        return f"version {candidate} is already the champion"
    champion_end, candidate_end = _window_end(spec, champion), _window_end(spec, candidate)
    if candidate_end and champion_end and candidate_end < champion_end:
        # A rerun or backfill of an older window never replaces a model trained on newer data.
        return (f"champion v{champion} was trained on newer data (window ending {champion_end}) "
                f"than version {candidate} (window ending {candidate_end})")
    return None


def decide_promotion(spec: PipelineSpec, snapshot: Path, run_id: str, candidate: str,
                     evaluation: dict[str, Any], quality: dict[str, Any],
                     tracking_uri: str | None = None) -> dict[str, Any]:
    """Evaluate every rule and record the verdict on the run and the model version.

    Returns:
        The verdict: {"passed", "promote", "reason", "candidate", "champion", "rules": [...]}.
        `promote` is False with a reason when there is nothing to change (see no_change_reason).

    Raises:
        GateRejected: a rule failed; the candidate gets alias `challenger`, the champion stays.
    """
    tracking.use_experiment(spec.name, tracking_uri)
    champion = registry.champion_version(spec.registered_model)
    unchanged = no_change_reason(spec, candidate, champion)
    champion_metrics = (rescore_champion(spec, champion, snapshot)
                        if champion is not None and unchanged is None else None)
    rules = evaluate_rules(spec, candidate, evaluation, quality, champion, champion_metrics)
    passed = all(r["passed"] for r in rules)
    verdict = {"passed": passed, "promote": passed and unchanged is None, "reason": unchanged or "",
               "candidate": candidate, "champion": champion, "rules": rules}
    for r in rules:
        log.info("%-26s %-4s %s", r["rule"], "PASS" if r["passed"] else "FAIL", r["reason"])
    if unchanged:
        log.info("nothing to promote: %s", unchanged)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(verdict, "gate/verdict.json")
    if unchanged is None:
        tracking.client().set_model_version_tag(spec.registered_model, candidate, "gate.status",
                                                "passed" if passed else "rejected")
    if not passed:
        if unchanged is None:
            registry.mark_challenger(spec.registered_model, candidate)
        failed = "; ".join(r["reason"] for r in rules if not r["passed"])
        raise GateRejected(f"version {candidate} not promoted: {failed}")
    return verdict
