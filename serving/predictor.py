"""One served model version: its wire protocol and an adaptive micro-batcher in front of onnxruntime.

Requests that arrive while a runtime call is under way queue up and go together into the next call,
so the batch size follows the load: one row when idle, dozens of requests per call under
concurrency (a 1-row onnxruntime call costs about as much as a 30-row one). Each request was
validated alone before it queued, so a batch holds only valid rows; if a call still fails, its
requests are retried one by one and only the culprit fails.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import chain

import numpy as np

from serving.model import Feature, OnnxModel
from serving.protocol import Protocol, Rows, Values

# Calls of up to this many rows (~4 ms of onnxruntime) run on the event loop thread; larger ones go to
# the runtime thread, so health checks and scrapes are answered meanwhile. Measured with 1000-row
# requests: inline, 2 processes answer 10-15 % more (the hand-off costs more than the overlap gives once
# every core has a process); with 1 process it is even. 1-row requests merge to ~10-30 rows a call.
INLINE_ROWS = 8192


@dataclass(slots=True)
class _Job:
    rows: Rows
    future: asyncio.Future[np.ndarray]
    log: LogTag | None  # (time, request id) when this request is to be logged


LogTag = tuple[float, str | None]
_Ran = tuple[dict[str, np.ndarray] | None, np.ndarray, list[np.ndarray | Exception]]
# (model, the call's feeds, its probabilities, per request: (rows, its log tag or None), the rows to log),
# on the event loop thread
BatchLogger = Callable[[OnnxModel, dict[str, np.ndarray], np.ndarray, list[tuple[int, LogTag | None]], int], None]


class Predictor:
    """Owns a model: decode requests for it, predict them in merged runtime calls."""

    def __init__(self, model: OnnxModel, executor: Executor | None = None, max_batch_rows: int = 4096,
                 on_batch: Callable[[int, int], None] | None = None, log_batch: BatchLogger | None = None) -> None:
        self.model = model
        self.protocol = Protocol(model)
        self._executor = executor  # None: run on the event loop thread
        self._max_rows = max_batch_rows
        self._on_batch = on_batch or (lambda rows, requests: None)
        self._log_batch = log_batch
        self._queue: deque[_Job] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def predict(self, rows: Rows, log: LogTag | None = None) -> np.ndarray:
        """Probabilities for `rows`, computed in the next runtime call together with concurrent requests;
        with `log`, the rows go to the prediction log too, straight from the call's input arrays."""
        loop = self._loop
        if loop is None or loop.is_closed():  # asyncio.get_running_loop() costs a getpid() syscall per call
            loop = self._loop = asyncio.get_running_loop()
        job = _Job(rows, loop.create_future(), log)
        self._queue.append(job)
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await job.future

    def warm_up(self) -> None:
        """Run the model once on small and batch-sized inputs, so the first requests pay no setup cost."""
        for n in (1, 64):
            self.model.predict_columns(assemble(self.model.features, [_example_rows(self.model.features, n)]))

    async def _drain(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            # One more turn of the loop first: requests whose bytes have already arrived are parsed and
            # join this call. Under 1-row load that doubles the requests per call (13 -> 26 with one
            # process) and cuts the loop's CPU per request by a fifth; idle, it costs one loop turn.
            await asyncio.sleep(0)
            while self._queue:
                jobs, rows = self._take()
                if self._executor is None or rows <= INLINE_ROWS:
                    feeds, probs, results = self._run(jobs)
                else:
                    feeds, probs, results = await loop.run_in_executor(self._executor, self._run, jobs)
                if feeds is None:  # requests ran one by one: count the rows of those that did not fail
                    rows = sum([len(r) for r in results if not isinstance(r, Exception)])
                self._on_batch(rows, len(jobs))
                if self._log_batch is not None and feeds is not None:
                    spans = [(j.rows.count, j.log) for j in jobs]
                    logged = sum([n for n, tag in spans if tag])
                    if logged:
                        self._log_batch(self.model, feeds, probs, spans, logged)
                for job, result in zip(jobs, results, strict=True):
                    if job.future.done():  # the caller went away
                        continue
                    if isinstance(result, Exception):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
        finally:
            self._drainer = None

    def _take(self) -> tuple[list[_Job], int]:
        """The next call's requests, up to max_batch_rows rows (one request may be more), and their rows."""
        rows = sum([j.rows.count for j in self._queue])
        if rows <= self._max_rows:  # the common case: all that waits goes into this call
            jobs = list(self._queue)
            self._queue.clear()
            return jobs, rows
        jobs = [self._queue.popleft()]
        rows = jobs[0].rows.count
        while self._queue and rows + self._queue[0].rows.count <= self._max_rows:
            job = self._queue.popleft()
            jobs.append(job)
            rows += job.rows.count
        return jobs, rows

    def _run(self, jobs: list[_Job]) -> _Ran:
        """(feeds, probabilities, per request its slice or error); feeds None when requests ran one by one."""
        try:
            feeds = assemble(self.model.features, [j.rows for j in jobs])
            probs = self.model.predict_columns(feeds)
        except Exception as exc:  # noqa: BLE001 - isolate the request that broke the call
            alone: list[np.ndarray | Exception] = [exc] if len(jobs) == 1 else [
                r for j in jobs for r in self._run([j])[2]]
            return None, np.empty(0, np.float32), alone
        out: list[np.ndarray | Exception] = []
        start = 0
        for job in jobs:
            out.append(probs[start:start + job.rows.count])
            start += job.rows.count
        return feeds, probs, out


def assemble(features: list[Feature], parts: list[Rows]) -> dict[str, np.ndarray]:
    """The runtime's feeds for several requests' rows: float32 numerics (missing = NaN), string categoricals."""
    records = [p.records for p in parts]
    if None not in records:  # JSON records: transpose all rows at once
        columns: list[Values] = list(zip(*chain.from_iterable(records), strict=True))  # type: ignore[arg-type]
        numeric = [i for i, f in enumerate(features) if f.kind == "numeric"]
        matrix = np.array([columns[i] for i in numeric], dtype=np.float32)  # (n_numeric, N); one conversion
        feeds = {features[i].name: row for i, row in zip(numeric, matrix, strict=True)}
        feeds.update({f.name: _strings([columns[i]]) for i, f in enumerate(features) if f.kind != "numeric"})
        return feeds
    per_part = [p.feature_columns() for p in parts]
    return {f.name: _floats([c[i] for c in per_part]) if f.kind == "numeric" else _strings([c[i] for c in per_part])
            for i, f in enumerate(features)}


def _floats(parts: list[Values]) -> np.ndarray:
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float32)
    if not any(isinstance(c, np.ndarray) for c in parts):
        return np.array(list(chain.from_iterable(parts)), dtype=np.float32)
    return np.concatenate([np.asarray(c, dtype=np.float32) for c in parts])


def _strings(parts: list[Values]) -> np.ndarray:
    arrays = []
    for values in parts:
        if isinstance(values, np.ndarray):  # binary BYTES: already strings, never missing
            arrays.append(values)
            continue
        if None in values:  # missing: the "unknown" category
            values = ["" if v is None else v for v in values]
        arrays.append(np.array(values, dtype=object))
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _example_rows(features: list[Feature], n: int) -> Rows:
    return Rows(n, columns=[[0.0] * n if f.kind == "numeric" else [""] * n for f in features])
