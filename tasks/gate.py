"""The promotion gate: rules declared in the spec, the champion re-scored on the candidate's holdout,
the registered artifact checked through the serving code, and a verdict on the record."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np

from serving.model import OnnxModel
from tasks import registry, tracking
from tasks.config import LOWER_IS_BETTER, ChampionRule, PipelineSpec, as_path
from tasks.dataset import LABEL, feature_columns, load_frame, split_by_time
from tasks.evaluate import PARITY_TOLERANCE, download_model, download_onnx, torch_probs
from tasks.metrics import classification_metrics
from tasks.model import load_checkpoint
from tasks.report import put_json, report_dir
from tasks.slices import slice_metrics
from tasks.snapshot import read_manifest

log = logging.getLogger(__name__)
Mode = Literal["enforce", "dry_run", "override"]
VERDICT_FILE = "verdict.json"


class GateRejected(RuntimeError):
    """The candidate is not promoted; the message lists every failed rule."""


def rule(name: str, passed: bool, reason: str, value: float | None = None, threshold: float | None = None,
         baseline: float | None = None) -> dict[str, Any]:
    delta = None if value is None or baseline is None else value - baseline
    return {"rule": name, "value": value, "threshold": threshold, "baseline": baseline, "delta": delta,
            "passed": bool(passed), "reason": reason}


def _better(metric: str, value: float, than: float) -> float:
    """How much better `value` is than `than` (positive = better), whichever way the metric points."""
    return than - value if metric in LOWER_IS_BETTER else value - than


def _absolute_rules(spec: PipelineSpec, metrics: dict[str, float]) -> list[dict[str, Any]]:
    rules = []
    for metric, floor in spec.gate.min.items():
        value = metrics[metric]
        rules.append(rule(f"min_{metric}", not math.isnan(value) and value >= floor,
                          f"candidate {metric} {value:.4f}, at least {floor} required", value, floor))
    for metric, ceiling in spec.gate.max.items():
        value = metrics[metric]
        rules.append(rule(f"max_{metric}", not math.isnan(value) and value <= ceiling,
                          f"candidate {metric} {value:.4f}, at most {ceiling} allowed", value, ceiling))
    return rules


def _champion_rule(cfg: ChampionRule, metrics: dict[str, float], base: dict[str, float],
                   champion: str) -> dict[str, Any]:
    metric, value, was = cfg.metric, metrics[cfg.metric], base[cfg.metric]
    gain = _better(metric, value, was)
    if cfg.max_degradation is not None:
        need, wording = -cfg.max_degradation, f"may be worse by at most {cfg.max_degradation}"
    elif cfg.min_improvement is not None:
        need, wording = cfg.min_improvement, f"must be better by at least {cfg.min_improvement}"
    else:
        assert cfg.min_relative_improvement is not None
        need = cfg.min_relative_improvement * abs(was)
        wording = f"must be better by at least {cfg.min_relative_improvement:.1%} of the champion's"
    return rule(f"champion_{metric}", not math.isnan(gain) and gain >= need,
                f"candidate {metric} {value:.4f} vs champion v{champion} {was:.4f} on the same holdout "
                f"({wording})", value, was + need if metric not in LOWER_IS_BETTER else was - need, was)


def _slice_rule(spec: PipelineSpec, candidate: list[dict[str, Any]], champion: list[dict[str, Any]],
                name: str) -> dict[str, Any]:
    cfg = spec.gate.slices
    assert cfg is not None
    theirs = {(r["slice"], r["value"]): r for r in champion}
    drops = []
    for row in candidate:
        other = theirs.get((row["slice"], row["value"]))
        if row["rows"] < cfg.min_rows or other is None or cfg.metric not in row or cfg.metric not in other:
            continue
        gain = _better(cfg.metric, row[cfg.metric], other[cfg.metric])
        if not math.isnan(gain):
            drops.append((gain, row, other))
    if not drops:
        return rule("slices", True, f"no slice has {cfg.min_rows}+ rows and a {cfg.metric} for both models")
    worst, row, other = min(drops, key=lambda d: d[0])
    failing = [f"{r['slice']}={r['value']} ({g:+.4f})" for g, r, _ in sorted(drops, key=lambda d: d[0])
               if g < -cfg.max_drop]
    where = f"{row['slice']}={row['value']}"
    reason = (f"{cfg.metric} drops more than {cfg.max_drop} against champion v{name} in: {', '.join(failing)}"
              if failing else f"worst slice {where}: {cfg.metric} {worst:+.4f} against champion v{name} "
                              f"(may drop at most {cfg.max_drop})")
    return rule("slices", not failing, reason, row[cfg.metric], -cfg.max_drop, other[cfg.metric])


def _drift_rule(spec: PipelineSpec, drift: dict[str, Any] | None, trained_on: str) -> list[dict[str, Any]]:
    cfg = spec.gate.drift
    if cfg is None:
        return []
    if drift is None:
        return [rule("drift", False, "the drift policy is set but the run has no drift summary")]
    share = float(drift.get("drifted_share", 0.0))
    seen = drift.get("current_fingerprint") == trained_on
    passed = share <= cfg.max_drifted_share or seen
    reason = (f"{share:.0%} of the features drifted (at most {cfg.max_drifted_share:.0%})"
              + ("; the candidate was trained on that data" if seen and share > cfg.max_drifted_share else ""))
    return [rule("drift", passed, reason, share, cfg.max_drifted_share)]


def evaluate_rules(spec: PipelineSpec, evaluation: dict[str, Any], quality: dict[str, Any],
                   champion: str | None = None, champion_metrics: dict[str, float] | None = None,
                   champion_slices: list[dict[str, Any]] | None = None, live: dict[str, Any] | None = None,
                   drift: dict[str, Any] | None = None, trained_on: str = "") -> list[dict[str, Any]]:
    """Every declared rule, in order; with no champion only the absolute ones. Fails closed."""
    metrics = evaluation["metrics"]
    parity = evaluation["parity_max_abs_diff"]
    rules = [
        rule("data_quality", bool(quality.get("passed")),
             "the snapshot passed its data contract" if quality.get("passed")
             else "the snapshot failed its data contract"),
        rule("parity", parity <= PARITY_TOLERANCE, f"ONNX vs torch max |diff| {parity:.2e} on the whole holdout",
             parity, PARITY_TOLERANCE),
    ]
    if live is not None:
        rules.append(live)
    comparable = champion is not None and champion_metrics is not None
    declared = _absolute_rules(spec, metrics)
    if spec.gate.champion is not None and comparable:
        assert champion is not None and champion_metrics is not None
        declared.append(_champion_rule(spec.gate.champion, metrics, champion_metrics, champion))
    if spec.gate.slices is not None and comparable and champion_slices is not None:
        assert champion is not None
        declared.append(_slice_rule(spec, evaluation.get("slices", []), champion_slices, champion))
    declared += _drift_rule(spec, drift, trained_on)
    if not declared:
        declared.append(rule("rules_declared", False, "the spec declares no promotion rule that applies: "
                             "set gate.min/max (or a champion rule once there is a champion)"))
    return rules + declared


def rescore_champion(spec: PipelineSpec, champion: str, snapshot: Path,
                     threshold: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The champion's metrics and slices on the candidate's holdout (never its old numbers)."""
    holdout = split_by_time(spec, load_frame(spec, snapshot)).holdout
    labels = holdout[LABEL].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        probs = download_model(spec, champion, Path(tmp)).predict_columns(feature_columns(spec, holdout))
    return (classification_metrics(labels, probs, threshold),
            slice_metrics(spec, holdout, labels, probs, threshold))


def live_check(spec: PipelineSpec, version: str, run_id: str, snapshot: Path) -> dict[str, Any]:
    """The registered artifact, checksum-verified and loaded by the serving code, answers holdout rows
    sent as a client sends them (JSON records) exactly as the trained torch model does."""
    n = spec.gate.live_check_rows
    holdout = split_by_time(spec, load_frame(spec, snapshot)).holdout.head(n)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_onnx(spec, version, Path(tmp))
            expected = registry.version_tags(spec.registered_model, version).get("onnx.sha256")
            actual = tracking.file_sha256(path)
            if actual != expected:
                return rule("live_load", False, f"the registered artifact's sha256 {actual[:12]}... differs "
                                                 f"from the one recorded at registration ({str(expected)[:12]}...)")
            model = OnnxModel.from_file(path, spec.registered_model, version)
            ckpt = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="torch/checkpoint.pt",
                                                       dst_path=tmp)
            reference = torch_probs(load_checkpoint(Path(ckpt)), spec, holdout)
            records = json.loads(holdout[list(spec.features.all)].to_json(orient="records"))
            answered = model.predict_columns(model.columns_from_records(records))
    except Exception as exc:  # noqa: BLE001 - any failure to load or answer is the rule's verdict
        return rule("live_load", False, f"the serving code could not load or run version {version}: {exc}")
    diff = float(np.max(np.abs(answered - reference))) if len(reference) else 0.0
    return rule("live_load", diff <= PARITY_TOLERANCE,
                f"the serving code answered {len(records)} holdout rows sent as JSON; max |diff| {diff:.2e} "
                f"against torch", diff, PARITY_TOLERANCE)


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


def format_table(verdict: dict[str, Any]) -> str:
    """The verdict as a fixed-width table for the task log."""
    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.4g}"
    lines = [f"gate verdict for version {verdict['candidate']} (champion: {verdict['champion'] or 'none'}, "
             f"mode {verdict['mode']}): {verdict['status'].upper()}",
             f"{'rule':<20} {'result':<6} {'value':>10} {'threshold':>10} {'baseline':>10} {'delta':>10}  reason"]
    for r in verdict["rules"]:
        lines.append(f"{r['rule']:<20} {'PASS' if r['passed'] else 'FAIL':<6} {num(r['value']):>10} "
                     f"{num(r['threshold']):>10} {num(r['baseline']):>10} {num(r['delta']):>10}  {r['reason']}")
    if verdict["reason"]:
        lines.append(f"promotion: {verdict['reason']}")
    return "\n".join(lines)


def _status(mode: Mode, passed: bool) -> str:
    if mode == "dry_run":
        return "dry_run_passed" if passed else "dry_run_rejected"
    if not passed and mode == "override":
        return "overridden"
    return "passed" if passed else "rejected"


def decide_promotion(spec: PipelineSpec, snapshot: Path, run_id: str, candidate: str,
                     evaluation: dict[str, Any], quality: dict[str, Any], mode: Mode = "enforce",
                     justification: str | None = None, user: str | None = None, dag_run_id: str = "",
                     drift_dir: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Evaluate every rule and record the verdict: MLflow artifact, version tags, the run's report folder.

    Modes: `enforce` promotes only on pass; `dry_run` records and never promotes (no alias moves);
    `override` promotes despite failed rules, only with a justification, which is recorded with the user.

    Returns:
        The verdict: passed, promote, status, mode, reason, candidate, champion, rules, justification, user.

    Raises:
        GateRejected: enforce mode and a rule failed (the candidate gets alias `challenger`), or
            override mode without a justification.
    """
    if mode == "override" and not (justification or "").strip():
        raise GateRejected("mode override needs a justification: say why this model must serve despite the gate")
    tracking.use_experiment(spec.name, tracking_uri)
    champion = registry.champion_version(spec.registered_model)
    unchanged = no_change_reason(spec, candidate, champion)
    champion_metrics = champion_slices = None
    if champion is not None and unchanged is None:
        champion_metrics, champion_slices = rescore_champion(spec, champion, snapshot, evaluation["threshold"])
    drift = None
    if drift_dir and (as_path(drift_dir) / "summary.json").exists():
        drift = {**json.loads((as_path(drift_dir) / "summary.json").read_text()),
                 "current_fingerprint": read_manifest(snapshot)["fingerprint"]}
    trained_on = tracking.client().get_run(run_id).data.tags.get("data.fingerprint", "")
    rules = evaluate_rules(spec, evaluation, quality, champion, champion_metrics, champion_slices,
                           live_check(spec, candidate, run_id, snapshot), drift, trained_on)
    passed = all(r["passed"] for r in rules)
    status = _status(mode, passed)
    promote = unchanged is None and mode != "dry_run" and (passed or mode == "override")
    reason = unchanged or ("dry run: recorded, never promoted" if mode == "dry_run" else "")
    verdict = {"passed": passed, "promote": promote, "status": status, "mode": mode, "reason": reason,
               "candidate": candidate, "champion": champion, "rules": rules,
               "justification": justification if mode == "override" else None, "user": user,
               "dag_run_id": dag_run_id, "data_fingerprint": trained_on}
    print(format_table(verdict))
    _record(spec, verdict, run_id, dag_run_id, tag_version=unchanged is None)
    if not passed and mode == "enforce":
        if unchanged is None:
            registry.mark_challenger(spec.registered_model, candidate)
        failed = "; ".join(f"[{r['rule']}] {r['reason']}" for r in rules if not r["passed"])
        raise GateRejected(f"version {candidate} not promoted: {failed}")
    return verdict


def _record(spec: PipelineSpec, verdict: dict[str, Any], run_id: str, dag_run_id: str, tag_version: bool) -> None:
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(verdict, "gate/verdict.json")
    if dag_run_id:  # next to the run's drift report: the Drift reports page shows it
        put_json(verdict, report_dir(spec, dag_run_id), VERDICT_FILE)
    if tag_version:
        failed = "; ".join(f"[{r['rule']}] {r['reason']}" for r in verdict["rules"] if not r["passed"])
        tags = {"gate.status": verdict["status"], "gate.mode": verdict["mode"],
                "gate.reasons": (failed or "every rule passed")[:4000]}
        if verdict["justification"]:
            tags |= {"gate.justification": verdict["justification"][:4000], "gate.user": verdict["user"] or ""}
        for key, value in tags.items():
            tracking.client().set_model_version_tag(spec.registered_model, verdict["candidate"], key, value)
