"""Holdout metrics per value of the spec's slice columns: where the model is weak, not just how weak."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.config import TIME_PARTS, PipelineSpec
from tasks.metrics import classification_metrics


def slice_values(spec: PipelineSpec, frame: pd.DataFrame, name: str) -> pd.Series:
    """The slice column, or a part of the event time (month, weekday, hour) when no column has its name."""
    if name in frame.columns:
        return frame[name].astype("string").fillna("(null)")
    if name in TIME_PARTS:
        times = pd.to_datetime(frame[spec.event_time])
        part = {"month": times.dt.month, "weekday": times.dt.day_name(), "hour": times.dt.hour}[name]
        return part.astype("string")
    raise KeyError(f"slice {name!r} is neither a column of the snapshot nor one of {TIME_PARTS}")


def slice_metrics(spec: PipelineSpec, frame: pd.DataFrame, labels: np.ndarray, probs: np.ndarray,
                  threshold: float) -> list[dict[str, Any]]:
    """One row per (slice, value), largest first; slices under `min_slice_rows` rows carry no metrics."""
    rows: list[dict[str, Any]] = []
    for name in spec.evaluation.slices:
        values = slice_values(spec, frame, name).to_numpy()
        for value in pd.unique(values):
            mask = values == value
            n = int(mask.sum())
            row: dict[str, Any] = {"slice": name, "value": str(value), "rows": n}
            if n >= spec.evaluation.min_slice_rows:
                row.update(classification_metrics(labels[mask], probs[mask], threshold))
            rows.append(row)
    return sorted(rows, key=lambda r: (r["slice"], -r["rows"]))
