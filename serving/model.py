"""A loaded ONNX model and the conversion from JSON records to its raw feature columns."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

_OUTPUT = ["probability"]  # the model's output the server reads


class InputError(ValueError):
    """The request's data does not fit the model's inputs; the message names the field."""


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "numeric" (FP32) or "categorical" (BYTES/string)


class OnnxModel:
    """One immutable model version: session, feature schema and identity."""

    def __init__(self, payload: bytes, name: str, version: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # many small requests: threads per request cost more than they give
        self.session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        self.name = name
        self.version = version
        self.sha256 = hashlib.sha256(payload).hexdigest()
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.features = [
            Feature(i.name, "categorical" if i.type == "tensor(string)" else "numeric")
            for i in self.session.get_inputs()
        ]
        self.threshold = float(self.metadata.get("threshold", 0.5))
        # Feature positions by kind, for the batcher's assembly of each call's feeds.
        self.numeric = [i for i, f in enumerate(self.features) if f.kind == "numeric"]
        self.categorical = [i for i, f in enumerate(self.features) if f.kind != "numeric"]
        # onnxruntime's Python `run` first re-checks the feed's names against the session's inputs (a few
        # µs a call, for each of the ~15 inputs), which the feeds are built from: its
        # compiled binding is called directly when the pinned version has it (shapes and types are still
        # checked there).
        binding = getattr(self.session, "_sess", None)
        self._run = binding.run if binding is not None and hasattr(binding, "run") else self.session.run

    @classmethod
    def from_file(cls, path: Path, name: str = "", version: str = "") -> OnnxModel:
        return cls(path.read_bytes(), name, version)

    def predict_columns(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for raw feature columns (float32 arrays, object arrays of str)."""
        return self.predict_feeds({f.name: columns[f.name] for f in self.features})

    def predict_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for `feeds`: one array per model input, by name, and nothing else."""
        return np.asarray(self._run(_OUTPUT, feeds, None)[0], dtype=np.float32)

    def columns_from_records(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """JSON records -> feature columns. Missing or null numerics are NaN (the model imputes)."""
        if not records:
            raise InputError("records: at least one record is required")
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise InputError(f"records[{i}]: expected an object of feature values")
        columns: dict[str, np.ndarray] = {}
        for f in self.features:
            values = [r.get(f.name) for r in records]
            if f.kind == "categorical":
                columns[f.name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
            else:
                columns[f.name] = np.array([_number(f.name, i, v) for i, v in enumerate(values)],
                                           dtype=np.float32)
        return columns


def _number(field: str, row: int, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"records[{row}].{field}: expected a number, got {type(value).__name__}")
    return float(value)
