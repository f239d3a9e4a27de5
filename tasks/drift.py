"""Evidently drift reports: the current snapshot against the data the champion was trained on."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset, DataSummaryPreset

from tasks.config import PipelineSpec
from tasks.dataset import load_frame

SAMPLE_SEED = 0


def _sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    # Deterministic sample: the same snapshot always gives the same report.
    return frame.sample(max_rows, random_state=SAMPLE_SEED) if len(frame) > max_rows else frame


def _is_drifted(method: str, value: float, threshold: float) -> bool:
    # p-value tests drift below the threshold; distances drift at or above it.
    return value < threshold if "p_value" in method else value >= threshold


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Per-column method, score, threshold and verdict, plus the overall drifted share."""
    columns = []
    overall: dict[str, Any] = {}
    for metric in report["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            overall = {"drifted_columns": int(metric["value"]["count"]),
                       "drifted_share": float(metric["value"]["share"]),
                       "drift_share_threshold": float(cfg["drift_share"])}
        elif cfg["type"].endswith("ValueDrift"):
            value = float(metric["value"])
            columns.append({"column": cfg["column"], "method": cfg["method"], "score": value,
                            "threshold": float(cfg["threshold"]),
                            "drifted": _is_drifted(cfg["method"], value, float(cfg["threshold"]))})
    columns.sort(key=lambda c: (not c["drifted"], c["column"]))
    drifted = overall.get("drifted_share", 0.0) >= overall.get("drift_share_threshold", 0.5)
    return {**overall, "status": "drift" if drifted else "ok", "columns": columns}


def build_drift_report(spec: PipelineSpec, current: Path, reference: Path | None, out_dir: Path,
                       context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `report.html` and `summary.json` for current vs reference into `out_dir`.

    Args:
        spec: the pipeline spec (features, sample size).
        current: the snapshot this run trained on.
        reference: the champion's training snapshot; None on the first run, when the older
            half of the current window is the reference and the newer half the current data.
        out_dir: the report's folder, written atomically (temp folder, then rename).
        context: run details stored in the summary (DAG run, model version, ...).

    Returns:
        The summary document.
    """
    features = spec.features.all
    cur = load_frame(spec, current)[features]
    if reference is None:
        half = len(cur) // 2
        ref, cur, ref_label = cur.iloc[:half], cur.iloc[half:], "older half of the current window"
    else:
        ref, ref_label = load_frame(spec, reference)[features], str(reference)
    definition = DataDefinition(numerical_columns=spec.features.numeric,
                                categorical_columns=spec.features.categorical)
    datasets = [Dataset.from_pandas(_sample(f, spec.drift.max_rows), data_definition=definition)
                for f in (cur, ref)]
    snapshot = Report([DataDriftPreset(), DataSummaryPreset()]).run(*datasets)
    summary = {**(context or {}), **summarize(snapshot.dict()), "reference": ref_label,
               "current": str(current), "rows_current": len(cur), "rows_reference": len(ref)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        snapshot.save_html(str(tmp / "report.html"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
