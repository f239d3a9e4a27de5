"""From a snapshot to model-ready frames: label, time-ordered train/validation/holdout split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import PipelineSpec
from tasks.snapshot import read_snapshot

LABEL = "label"


@dataclass(frozen=True)
class Splits:
    """Oldest rows train, newer rows validate, the newest are held out (as production sees them)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame


def load_frame(spec: PipelineSpec, snapshot: Path) -> pd.DataFrame:
    """Features, event time and the binary label, in time order; cancelled flights (no target) dropped.

    Only the needed columns are read; the filter and the sort happen in Arrow, and the conversion
    frees each Arrow column as it goes, so the rows are never held twice over.
    """
    columns = list(dict.fromkeys([spec.key, spec.event_time, spec.target.column, *spec.features.all]))
    table = read_snapshot(snapshot, columns)
    target = table.column(spec.target.column)
    known = pc.is_valid(target)
    if pa.types.is_floating(target.type):
        known = pc.and_kleene(known, pc.invert(pc.is_nan(target)))
    table = table.filter(known)
    order = pc.sort_indices(table, [(spec.event_time, "ascending"), (spec.key, "ascending")])
    table = table.take(order)
    label = pc.cast(pc.greater_equal(table.column(spec.target.column), spec.target.threshold), pa.float32())
    table = table.append_column(LABEL, label)
    return table.to_pandas(self_destruct=True, split_blocks=True)


def split_by_time(spec: PipelineSpec, frame: pd.DataFrame) -> Splits:
    n = len(frame)
    n_hold = int(n * spec.training.holdout_share)
    n_val = int(n * spec.training.validation_share)
    n_train = n - n_val - n_hold
    return Splits(
        train=frame.iloc[:n_train],
        validation=frame.iloc[n_train:n_train + n_val],
        holdout=frame.iloc[n_train + n_val:],
    )


def feature_columns(spec: PipelineSpec, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw feature columns as the model and its ONNX export take them: float32 and strings."""
    out: dict[str, np.ndarray] = {}
    for col in spec.features.numeric:
        out[col] = frame[col].to_numpy(dtype=np.float32, na_value=np.nan)
    for col in spec.features.categorical:
        out[col] = frame[col].astype("string").fillna("").to_numpy(dtype=object)
    return out
