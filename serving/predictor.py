"""One served model version: its wire protocol and an adaptive micro-batcher in front of onnxruntime.

Requests that arrive while a runtime call is under way queue up and go together into the next call,
so the batch size follows the load: one row when idle, dozens of requests per call under
concurrency (a 1-row onnxruntime call costs about as much as a 30-row one). Each request was
validated alone before it queued, so a batch holds only valid rows; if a call still fails, its
requests are retried one by one and only the culprit fails.
"""

from __future__ import annotations

import asyncio
import typing
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgspec
import numpy as np

from serving.model import Feature, OnnxModel
from serving.protocol import Protocol, Rows, Values

# Calls of up to this many rows (~4 ms of onnxruntime) run on the event loop thread; larger ones go to
# the runtime thread, so health checks and scrapes are answered meanwhile. Measured with 1000-row
# requests: inline, 2 processes answer 10-15 % more (the hand-off costs more than the overlap gives once
# every core has a process); with 1 process it is even. 1-row requests merge to ~10-30 rows a call.
INLINE_ROWS = 8192


class _Job(msgspec.Struct):  # per request: a Struct's __init__ is C
    rows: Rows
    future: asyncio.Future[np.ndarray]
    log: LogTag | None  # (time, request id) when this request is to be logged


LogTag = tuple[float, str | None]
_Ran = tuple[dict[str, np.ndarray] | None, np.ndarray, list[np.ndarray | Exception] | None]


@dataclass(slots=True)
class Slot:
    """Where a small call's feeds are assembled in place: views of the prediction log's preallocated
    columns, so logging the call copies nothing and holds no arrays of its own."""

    numeric: np.ndarray  # (numeric features, rows) float32, in the model's feature order
    strings: np.ndarray  # (categorical features, rows) object
    block: Any  # the log's, handed back with the call's outputs
    start: int
    # The log's one object per distinct categorical value, stored instead of each request's own string:
    # the log holds its rows for a tenth of a second, and ~2,600 requests' own strings held that long cost
    # ~2 µs of server CPU per request under load (cache misses); the request's strings are freed at once.
    canonical: Mapping[str | None, str]  # and None (missing) to "", the "unknown" category


class CallLog(typing.Protocol):
    """The prediction log as the batcher sees it, on the event loop thread."""

    def reserve(self, model: OnnxModel, rows: int, at: float) -> Slot | None:
        """Room for a call's `rows` in the log's columns (the first logged request came at `at`), or
        None: the caller assembles its own arrays and hands them over in `commit`."""

    def release(self, slot: Slot) -> None:
        """The call failed: its reserved rows are not logged."""

    def commit(self, model: OnnxModel, slot: Slot | None, feeds: dict[str, np.ndarray], probs: np.ndarray,
               tags: list[LogTag | None], counts: list[int] | None, rows: int) -> None:
        """A call ran: its `rows` sampled rows go to the log. Per request: its log tag or None, and its
        row count (`counts` None: one row each)."""


class Predictor:
    """Owns a model: decode requests for it, predict them in merged runtime calls."""

    def __init__(self, model: OnnxModel, executor: Executor | None = None, max_batch_rows: int = 4096,
                 on_batch: Callable[[int, int], None] | None = None, log: CallLog | None = None) -> None:
        self.model = model
        self.protocol = Protocol(model)
        self._executor = executor  # None: run on the event loop thread
        self._max_rows = max_batch_rows
        self._on_batch = on_batch or (lambda rows, requests: None)
        self._log = log
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._drainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def predict(self, rows: Rows, log: LogTag | None = None) -> asyncio.Future[np.ndarray]:
        """Probabilities for `rows` (to await), computed in the next runtime call together with concurrent
        requests; with `log`, the rows go to the prediction log too. A future, not a coroutine: the
        caller awaits it directly (one frame less to suspend and resume per request)."""
        loop = self._loop
        if loop is None or loop.is_closed():  # asyncio.get_running_loop() costs a getpid() syscall per call
            loop = self._loop = asyncio.get_running_loop()
        job = _Job(rows, loop.create_future(), log)
        self._queue.append(job)
        self._queued_rows += rows.count
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return job.future

    def warm_up(self) -> None:
        """Run the model once on small and batch-sized inputs, so the first requests pay no setup cost."""
        for n in (1, 64):
            self.model.predict_feeds(assemble(self.model, [_example_rows(self.model.features, n)]))

    async def _drain(self) -> None:
        loop, log = self._loop, self._log
        assert loop is not None
        try:
            # One more turn of the loop first: requests whose bytes have already arrived are parsed and
            # join this call. Under 1-row load that doubles the requests per call (13 -> 26 with one
            # process) and cuts the loop's CPU per request by a fifth; idle, it costs one loop turn.
            await asyncio.sleep(0)
            while self._queue:
                jobs, rows = self._take()
                tags = [j.log for j in jobs] if log is not None else []
                slot = self._reserve(log, tags, rows) if log is not None else None
                if self._executor is None or rows <= INLINE_ROWS:
                    feeds, probs, alone = self._run(jobs, slot)
                else:
                    feeds, probs, alone = await loop.run_in_executor(self._executor, self._run, jobs, None)
                if feeds is None:  # the call failed: its requests ran one by one
                    assert alone is not None
                    self._answer_alone(jobs, alone)
                    continue
                self._on_batch(rows, len(jobs))
                one_row_each = rows == len(jobs)  # the common case under load: 1-row requests
                if log is not None:
                    if one_row_each:
                        counts, logged = None, rows - tags.count(None)
                    else:
                        counts = [j.rows.count for j in jobs]
                        logged = sum([n for n, tag in zip(counts, tags, strict=True) if tag])
                    if logged:
                        log.commit(self.model, slot, feeds, probs, tags, counts, logged)
                # Each request's rows of the call's probabilities: 1-row requests iterate an (N, 1) view, as
                # long as `jobs` (not strict: that would run numpy's iterator to its end, which numpy signals
                # with a formatted IndexError, ~5 k instructions).
                for job, result in zip(jobs, probs.reshape(rows, 1) if one_row_each else _slices(probs, jobs),
                                       strict=False):
                    try:
                        job.future.set_result(result)
                    except asyncio.InvalidStateError:  # the caller went away (its future was cancelled)
                        pass
        finally:
            self._drainer = None

    def _answer_alone(self, jobs: list[_Job], results: list[np.ndarray | Exception]) -> None:
        """The call failed and its requests ran one by one: each gets its own result or error."""
        self._on_batch(sum([len(r) for r in results if not isinstance(r, Exception)]), len(jobs))
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():  # the caller went away
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _take(self) -> tuple[list[_Job], int]:
        """The next call's requests, up to max_batch_rows rows (one request may be more), and their rows."""
        rows = self._queued_rows
        if rows <= self._max_rows:  # the common case: all that waits goes into this call
            jobs = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            return jobs, rows
        jobs = [self._queue.popleft()]
        rows = jobs[0].rows.count
        while self._queue and rows + self._queue[0].rows.count <= self._max_rows:
            job = self._queue.popleft()
            jobs.append(job)
            rows += job.rows.count
        self._queued_rows -= rows
        return jobs, rows

    def _reserve(self, log: CallLog, tags: list[LogTag | None], rows: int) -> Slot | None:
        """The log's room for this call's rows when any of its requests is logged (assembled in place)."""
        if rows > INLINE_ROWS:
            return None
        first = next(filter(None, tags), None)
        return None if first is None else log.reserve(self.model, rows, first[0])

    def _run(self, jobs: list[_Job], slot: Slot | None) -> _Ran:
        """(feeds, probabilities, None) from one call; when it failed, (None, empty, per request its
        probabilities or error from running alone)."""
        try:
            feeds = assemble(self.model, [j.rows for j in jobs], slot)
            return feeds, self.model.predict_feeds(feeds), None
        except Exception as exc:  # noqa: BLE001 - isolate the request that broke the call
            if slot is not None and self._log is not None:
                self._log.release(slot)
            if len(jobs) == 1:
                return None, np.empty(0, np.float32), [exc]
            alone: list[np.ndarray | Exception] = []
            for job in jobs:
                _, probs, failed = self._run([job], None)
                alone.append(probs if failed is None else failed[0])
            return None, np.empty(0, np.float32), alone


def _slices(probs: np.ndarray, jobs: list[_Job]) -> list[np.ndarray]:
    """Each request's rows of a call's probabilities, in call order."""
    out, start = [], 0
    for job in jobs:
        out.append(probs[start:start + job.rows.count])
        start += job.rows.count
    return out


def assemble(model: OnnxModel, parts: list[Rows], slot: Slot | None = None) -> dict[str, np.ndarray]:
    """The runtime's feeds for several requests' rows: float32 numerics (missing = NaN), string categoricals;
    with a `slot`, assembled in its arrays (the feeds are views of them)."""
    features, numeric, categorical = model.features, model.numeric, model.categorical
    records = [p.records for p in parts]
    if None not in records:  # JSON records: transpose all rows at once
        columns: list[Values] = list(zip(*chain.from_iterable(records), strict=True))  # type: ignore[arg-type]
        if slot is None:
            matrix = np.array([columns[i] for i in numeric], dtype=np.float32)  # (n_numeric, N); one conversion
        else:
            matrix = slot.numeric
            if numeric:  # (a model of categoricals only has none)
                matrix[...] = [columns[i] for i in numeric]
        feeds = {features[i].name: row for i, row in zip(numeric, matrix, strict=False)}  # not strict: see _drain
        for k, i in enumerate(categorical):
            feeds[features[i].name] = (_strings([columns[i]]) if slot is None else
                                       _strings_into([columns[i]], slot.strings[k], slot.canonical))
        return feeds
    per_part = [p.feature_columns() for p in parts]
    if slot is None:
        return {f.name: _floats([c[i] for c in per_part]) if f.kind == "numeric" else _strings([c[i] for c in per_part])
                for i, f in enumerate(features)}
    feeds = {}
    for k, i in enumerate(numeric):
        slot.numeric[k] = _floats([c[i] for c in per_part])
        feeds[features[i].name] = slot.numeric[k]
    for k, i in enumerate(categorical):
        feeds[features[i].name] = _strings_into([c[i] for c in per_part], slot.strings[k], slot.canonical)
    return {f.name: feeds[f.name] for f in features}


def _strings_into(parts: list[Values], out: np.ndarray, canonical: Mapping[str | None, str]) -> np.ndarray:
    """One categorical feature's values written into `out` (a slot's row), each as `canonical`'s object for
    it, which is "" (the "unknown" category) for a missing one."""
    joined = chain.from_iterable(p.tolist() if isinstance(p, np.ndarray) else p for p in parts)
    out[...] = list(map(canonical.__getitem__, joined))
    return out


def _floats(parts: list[Values]) -> np.ndarray:
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float32)
    if not any(isinstance(c, np.ndarray) for c in parts):
        return np.array(list(chain.from_iterable(parts)), dtype=np.float32)
    return np.concatenate([np.asarray(c, dtype=np.float32) for c in parts])


def _strings(parts: list[Values]) -> np.ndarray:
    """One categorical feature's values as one array (missing = "")."""
    arrays: list[Values] = []
    for values in parts:
        if not isinstance(values, np.ndarray) and None in values:  # missing: the "unknown" category
            values = ["" if v is None else v for v in values]
        arrays.append(values)  # binary BYTES arrive as arrays of strings, never missing
    if len(arrays) == 1:
        return arrays[0] if isinstance(arrays[0], np.ndarray) else np.array(arrays[0], dtype=object)
    return np.concatenate([np.asarray(a, dtype=object) if not isinstance(a, np.ndarray) else a for a in arrays])


def _example_rows(features: list[Feature], n: int) -> Rows:
    return Rows(n, columns=[[0.0] * n if f.kind == "numeric" else [""] * n for f in features])
