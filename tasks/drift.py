"""Evidently drift reports: this window's data against the data the champion was trained on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset, DataSummaryPreset

from tasks.config import ColumnDrift, PipelineSpec, SpecError
from tasks.dataset import LABEL

SAMPLE_SEED = 0
PREDICTION = "prediction"  # the candidate's score, a column of both report datasets
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
TOP_COLUMNS = 5
# Evidently marks a failed test FAIL (critical) or WARNING; either means the column drifted.
DRIFTED_STATUSES = frozenset({"FAIL", "WARNING"})

Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class Side:
    """One side of the comparison: its rows, and what they are in words and by identity."""

    frame: pd.DataFrame
    description: str
    snapshot: str | None = None
    fingerprint: str | None = None

    def describe(self, sampled: int) -> dict[str, Any]:
        return {"description": self.description, "snapshot": self.snapshot, "fingerprint": self.fingerprint,
                "rows": len(self.frame), "rows_sampled": sampled}


def sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """At most `max_rows` rows, the same ones every time (seeded), in their original order."""
    if len(frame) <= max_rows:
        return frame
    return frame.sample(max_rows, random_state=SAMPLE_SEED).sort_index()


def split_window(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older half, newer half) of a frame in time order: the comparison when there is no champion yet."""
    half = len(frame) // 2
    return frame.iloc[:half], frame.iloc[half:]


def _check_columns(spec: PipelineSpec) -> None:
    unknown = sorted(set(spec.drift.columns) - set(spec.features.all))
    if unknown:
        raise SpecError(f"drift.columns: {', '.join(unknown)} not among the features ({', '.join(spec.features.all)})")


def _value_drift(column: str, test: ColumnDrift) -> ValueDrift:
    return ValueDrift(column=column, method=test.method, threshold=test.threshold)


def drift_metrics(spec: PipelineSpec, prediction: bool, target: bool) -> list[Any]:
    """Data drift and data summary over the features; prediction and target drift when asked for."""
    _check_columns(spec)
    cfg, features = spec.drift, spec.features.all
    metrics: list[Any] = [
        DataDriftPreset(
            columns=features, drift_share=cfg.drift_share,
            num_method=cfg.numeric.method, num_threshold=cfg.numeric.threshold,
            cat_method=cfg.categorical.method, cat_threshold=cfg.categorical.threshold,
            per_column_method={c: t.method for c, t in cfg.columns.items() if t.method} or None,
            per_column_threshold={c: t.threshold for c, t in cfg.columns.items() if t.threshold} or None),
        DataSummaryPreset(columns=features),
    ]
    if prediction:
        metrics.append(_value_drift(PREDICTION, cfg.prediction))
    if target:
        metrics.append(_value_drift(LABEL, cfg.target))
    return metrics


def _past_threshold(col: dict[str, Any]) -> float:
    # How many times past its threshold a drifted column is: score/threshold for distances,
    # threshold/score for p-values (a drifted p-value is below its threshold).
    score, threshold = max(col["score"], 1e-300), col["threshold"]
    return score / threshold if score >= threshold else threshold / score


def _column_drift(metric: dict[str, Any], statuses: dict[str, str]) -> dict[str, Any]:
    cfg, score = metric["config"], float(metric["value"])
    threshold = float(cfg["threshold"])
    status = statuses.get(metric["id"])
    # Without tests (include_tests=False) fall back to the method's direction.
    drifted = (status in DRIFTED_STATUSES if status is not None
               else (score < threshold if "p_value" in cfg["method"] else score >= threshold))
    return {"column": cfg["column"], "method": cfg["method"], "score": score if math.isfinite(score) else None,
            "threshold": threshold, "drifted": drifted}


def summarize(report: dict[str, Any], features: list[str]) -> dict[str, Any]:
    """Drifted share, per-column method/score/threshold/verdict, prediction and target drift, status."""
    statuses = {t["metric_config"]["metric_id"]: t["status"] for t in report.get("tests", [])}
    overall: dict[str, Any] = {}
    drift: dict[str, dict[str, Any]] = {}
    for metric in report["metrics"]:
        kind = metric["config"]["type"]
        if kind.endswith(":DriftedColumnsCount"):
            overall = {"drifted_columns": int(metric["value"]["count"]),
                       "drifted_share": float(metric["value"]["share"]),
                       "drift_share_threshold": float(metric["config"]["drift_share"])}
        elif kind.endswith(":ValueDrift"):
            drift[metric["config"]["column"]] = _column_drift(metric, statuses)
    columns = [drift[c] for c in features if c in drift]
    columns.sort(key=lambda c: (not c["drifted"], -_past_threshold(c) if c["drifted"] and c["score"] is not None else 0,
                                c["column"]))
    dataset_drift = overall.get("drifted_share", 0.0) >= overall.get("drift_share_threshold", 0.5)
    extra = [drift.get(PREDICTION), drift.get(LABEL)]
    anything = any(c["drifted"] for c in columns) or any(e and e["drifted"] for e in extra)
    status = "drift" if dataset_drift else "warning" if anything else "ok"
    return {**overall, "features": len(columns), "status": status, "columns": columns,
            "prediction": drift.get(PREDICTION), "target": drift.get(LABEL)}


def headline(summary: dict[str, Any], target: str = "the label") -> str:
    """The summary in one or two sentences for people who will not open the report."""
    drifted = [c["column"] for c in summary["columns"] if c["drifted"]]
    n, total = len(drifted), summary["features"]
    against, differ = summary["reference"]["description"], "differs" if n == 1 else "differ"
    top = ", ".join(drifted[:3])
    if summary["status"] == "drift":
        text = f"The data has drifted: {n} of {total} features {differ} from {against} (most: {top})."
    elif drifted:
        text = (f"Mostly unchanged: {n} of {total} features {differ} from {against} ({top}); "
                f"the data counts as drifted from {summary['drift_share_threshold']:.0%} of the features.")
    else:
        text = f"No drift: all {total} features look like {against}."
    for key, name in (("prediction", "The model's scores"), ("target", target[:1].upper() + target[1:])):
        if summary.get(key):
            text += f" {name} {'shifted' if summary[key]['drifted'] else 'did not shift'}."
    return text


def _dataset(frame: pd.DataFrame, spec: PipelineSpec, score: Scorer | None, target: bool) -> Dataset:
    data = frame[spec.features.all].copy()
    numeric, categorical = list(spec.features.numeric), list(spec.features.categorical)
    if score is not None:
        data[PREDICTION] = score(frame)
        numeric.append(PREDICTION)
    if target:
        data[LABEL] = frame[LABEL].astype(int).astype(str)  # two categories, not a number
        categorical.append(LABEL)
    return Dataset.from_pandas(data, data_definition=DataDefinition(numerical_columns=numeric,
                                                                    categorical_columns=categorical))


def build_drift_report(spec: PipelineSpec, current: Side, reference: Side, out_dir: Path,
                       score: Scorer | None = None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `report.html` and `summary.json` for current vs reference into the local folder `out_dir`.

    Args:
        spec: the pipeline spec (features, the `drift` section: sample size and tests).
        current: this window's rows (features, and the label for target drift).
        reference: the rows the champion was trained on, or the older half of this window.
        out_dir: a local folder; created if needed.
        score: the candidate's scorer; given, the report includes prediction drift.
        context: run details stored in the summary (DAG run, model version, ...).

    Returns:
        The summary document (also in `summary.json`).
    """
    target = LABEL in current.frame and LABEL in reference.frame
    cur, ref = sample(current.frame, spec.drift.max_rows), sample(reference.frame, spec.drift.max_rows)
    report = Report(drift_metrics(spec, prediction=score is not None, target=target), include_tests=True)
    snapshot = report.run(_dataset(cur, spec, score, target), _dataset(ref, spec, score, target))
    summary = {**(context or {}), "current": current.describe(len(cur)), "reference": reference.describe(len(ref)),
               "max_rows": spec.drift.max_rows, **summarize(snapshot.dict(), spec.features.all)}
    summary["headline"] = headline(summary, f"the share of {spec.target.column} >= {spec.target.threshold:g}")
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out_dir / REPORT_FILE))
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return summary
