"""The prediction log: sampled requests' inputs, outputs, model version and time, as hourly Parquet files.

The request path only appends a reference to a queue. A background thread drains it every second into
a row group of the hour's open file (small slices keep it from holding the interpreter for long), and
every `flush_seconds`, at the turn of the hour and at shutdown closes the file:
`<root>/dt=YYYY-MM-DD/hr=HH/part-*.parquet` (UTC, Hive-style partitions). Open files have a dot name
and are renamed when complete, so readers never see half a file. The production monitoring DAG reads
the directory as one dataset.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from serving.metrics import Metrics
from serving.model import OnnxModel
from serving.parquet import Column, ParquetWriter
from serving.protocol import Rows

log = logging.getLogger("serving.predlog")
# Columns of every file besides the features; a feature with one of these names is stored as feature_<name>.
RESERVED = ("ts", "model_name", "model_version", "request_id", "probability", "label", "dt", "hr")
SLICE_SECONDS = 1.0


@dataclass(slots=True)
class _Entry:
    at: float  # epoch seconds
    model: OnnxModel
    request_id: str | None
    rows: Rows
    probs: np.ndarray


@dataclass
class _OpenFile:
    writer: ParquetWriter
    final: Path
    model: OnnxModel
    opened: float


class PredictionLog:
    def __init__(self, root: Path, sample: float, flush_seconds: float, metrics: Metrics,
                 max_pending_rows: int = 500_000) -> None:
        self.root = root
        self._sample = sample
        self._flush_seconds = flush_seconds
        self._metrics = metrics
        self._max_pending = max_pending_rows
        self._queue: deque[_Entry] = deque()
        self._queued = 0  # rows; only the request path adds
        self._taken = 0  # rows; only the writer adds
        self._open: dict[tuple[int, int], _OpenFile] = {}  # (hours since epoch, id(model)) -> its open file
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def record(self, at: float, model: OnnxModel, rows: Rows, probs: np.ndarray, request_id: str | None) -> None:
        """Called on the request path: a sampling draw and an append, nothing else."""
        if self._sample < 1.0 and random.random() >= self._sample:  # noqa: S311 - sampling, not security
            return
        if self._queued - self._taken >= self._max_pending:
            self._metrics.log_dropped += rows.count
            return
        self._queued += rows.count
        self._queue.append(_Entry(at, model, request_id, rows, probs))

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the writer after it has written and closed what is queued."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(min(SLICE_SECONDS, self._flush_seconds)):
            self._append()
            now = time.time()
            for key in [k for k, f in self._open.items()
                        if now - f.opened >= self._flush_seconds or k[0] < now // 3600]:
                self._close(key)
        self.flush()

    def flush(self) -> list[Path]:
        """Write everything queued so far and close the open files; the complete files written."""
        self._append()
        return [p for p in (self._close(key) for key in list(self._open)) if p is not None]

    def _append(self) -> None:
        entries = []
        while self._queue:
            entries.append(self._queue.popleft())
        self._taken += sum(e.rows.count for e in entries)
        groups: dict[tuple[int, int], list[_Entry]] = {}
        for e in entries:  # by hour since the epoch and model object (one version, one feature schema)
            groups.setdefault((int(e.at // 3600), id(e.model)), []).append(e)
        for key, group in groups.items():
            rows = sum(e.rows.count for e in group)
            try:
                self._file(key, group[0]).writer.write(_columns(group))
            except OSError as exc:
                log.warning("prediction log: could not write %d rows: %s", rows, exc)
                self._metrics.log_dropped += rows
                continue
            self._metrics.log_rows += rows

    def _file(self, key: tuple[int, int], first: _Entry) -> _OpenFile:
        if key not in self._open:
            hour = datetime.fromtimestamp(key[0] * 3600, UTC)
            folder = self.root / f"dt={hour:%Y-%m-%d}" / f"hr={hour:%H}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{int(first.at * 1000)}-v{first.model.version}-{uuid.uuid4().hex[:8]}.parquet"
            writer = ParquetWriter(folder / f".{name}.tmp", [(c.name, c.kind) for c in _columns([first])])
            self._open[key] = _OpenFile(writer, folder / name, first.model, time.time())
        return self._open[key]

    def _close(self, key: tuple[int, int]) -> Path | None:
        f = self._open.pop(key)
        try:
            f.writer.close({"model_name": f.model.name, "model_version": f.model.version,
                            "threshold": repr(f.model.threshold)})
            f.writer.path.replace(f.final)
        except OSError as exc:
            log.warning("prediction log: could not complete %s: %s", f.final, exc)
            return None
        self._metrics.log_files += 1
        return f.final


def _columns(group: list[_Entry]) -> list[Column]:
    model = group[0].model
    counts = [e.rows.count for e in group]
    rows = sum(counts)
    probs = np.concatenate([e.probs for e in group]).astype(np.float32)
    single = all(c == 1 for c in counts)  # the common case: no repetition needed
    columns = [
        Column("ts", "timestamp_us", np.repeat((np.array([e.at for e in group]) * 1_000_000).astype(np.int64),
                                               counts)),
        Column("model_name", "string", [model.name] * rows),
        Column("model_version", "string", [model.version] * rows),
        Column("request_id", "string", [e.request_id for e in group] if single
               else list(_repeat([e.request_id for e in group], counts))),
    ]
    for f, values in zip(model.features, _feature_values(group), strict=True):
        name = f"feature_{f.name}" if f.name in RESERVED else f.name
        if f.kind == "numeric":
            columns.append(Column(name, "float32", np.array(values, dtype=np.float32)))
        else:
            columns.append(Column(name, "string", values))
    columns.append(Column("probability", "float32", probs))
    columns.append(Column("label", "int64", (probs >= model.threshold).astype(np.int64)))
    return columns


def _feature_values(group: list[_Entry]) -> list[Sequence[Any]]:
    """One sequence per feature over all rows of the group (one transposition when all came as records)."""
    if all(e.rows.records is not None for e in group):
        return list(zip(*chain.from_iterable(e.rows.records or [] for e in group), strict=True))
    per_entry = [e.rows.feature_columns() for e in group]
    return [list(chain.from_iterable(c[i] for c in per_entry)) for i in range(len(per_entry[0]))]


def _repeat(values: list[Any], counts: list[int]) -> chain[Any]:
    return chain.from_iterable([v] * n for v, n in zip(values, counts, strict=True))
