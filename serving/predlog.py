"""The prediction log: sampled requests' inputs, outputs, model version and time, as hourly Parquet files.

The request path only draws the sample; after each runtime call, the call's input arrays and
probabilities are queued by reference (no per-row work then). A writer task on the same event loop
drains the queue every tenth of a second into a row group of the hour's open file, a page of one
column (at most PAGE_ROWS rows) per step, with requests served between them, and closes the file every
`flush_seconds`, at the turn of the hour and at shutdown:
`<root>/dt=YYYY-MM-DD/hr=HH/part-*.parquet` (UTC, Hive-style partitions). Open files have a dot name
and are renamed when complete, so readers never see half a file. The production monitoring DAG reads
the directory as one dataset. Beside each open file, a journal records every row group written: when
a process dies without closing its files (SIGKILL, out of memory), the next start, or a sibling
process within `orphan_after` seconds, completes them up to their last row group (at most one slice,
a tenth of a second, is lost, instead of the whole file).

Why not a thread: a writer thread needs the GIL in many short turns, and each turn makes the event
loop wait for it to be scheduled: on a busy machine that cost ~15 % of the requests per second and
doubled the 99th-percentile latency, for ~5 % of the work. On the loop it is plain, interleaved work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import numpy as np

from serving.metrics import Metrics
from serving.model import OnnxModel
from serving.parquet import Column, Constant, Pages, ParquetWriter, is_complete, recover
from serving.predictor import LogTag

log = logging.getLogger("serving.predlog")
# Columns of every file besides the features; a feature with one of these names is stored as feature_<name>.
RESERVED = ("ts", "model_name", "model_version", "request_id", "probability", "label", "dt", "hr")
SLICE_SECONDS = 0.1  # a slice's row group stays small (~1-2 k rows of 1-row requests under load)
# Rows per data page: small runtime calls are joined into pages of up to this many rows (a writer step's
# work; the largest array it joins is ~25 KB), a larger call's arrays are a page as they are (no copy).
PAGE_ROWS = 2048
# An open file is `.<name>.tmp` beside its journal `.<name>.journal` (each row group's index entry, for
# completing the file if its process dies); a file being completed by another process is `.<name>.recovering-*`.
TMP, JOURNAL, CLAIMED = ".tmp", ".journal", ".recovering"


@dataclass(slots=True)
class _Entry:
    """One runtime call: its feeds and probabilities, and per request (rows, (time, id) or None: not sampled)."""

    model: OnnxModel
    feeds: dict[str, np.ndarray]
    probs: np.ndarray
    spans: list[tuple[int, LogTag | None]]
    rows: int  # sampled rows

    @property
    def at(self) -> float:
        return next(tag[0] for _, tag in self.spans if tag)


@dataclass
class _OpenFile:
    writer: ParquetWriter
    final: Path
    model: OnnxModel  # held while the file is open: its id() is part of the file's key, never reused meanwhile
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
        self._pending = 0  # rows queued, not yet taken by the writer
        self._open: dict[tuple[int, int], _OpenFile] = {}  # (hours since epoch, id(model)) -> its open file
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        # A file untouched this long belongs to a process that stopped without closing it.
        self.orphan_after = 2 * flush_seconds + 10

    def sampled(self) -> bool:
        """Called per request: whether this one goes to the log."""
        return self._sample >= 1.0 or random.random() < self._sample  # noqa: S311 - sampling, not security

    def record_batch(self, model: OnnxModel, feeds: dict[str, np.ndarray], probs: np.ndarray,
                     spans: list[tuple[int, LogTag | None]], rows: int) -> None:
        """Called after a runtime call with `rows` sampled rows, on the event loop: one append, the work is
        the writer's."""
        if self._pending + rows > self._max_pending:
            self._metrics.log_dropped += rows
            return
        self._pending += rows
        self._queue.append(_Entry(model, feeds, probs, spans, rows))

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._writer = asyncio.get_running_loop().create_task(self._write_slices())

    async def close(self) -> None:
        """Let the writer finish its slice, then write and close what is queued."""
        self._stopping = True
        if self._writer is not None:
            await self._writer
        self.flush()

    async def _write_slices(self) -> None:
        # Every folder was scanned before the server started (ServingApp.startup); from then on, the
        # folders of the last hours, where a sibling process that dies leaves its files (a few ms).
        scan_at = time.time() + self.orphan_after / 2
        while not self._stopping:
            await asyncio.sleep(min(SLICE_SECONDS, self._flush_seconds))
            if time.time() >= scan_at:
                scan_at = time.time() + self.orphan_after / 2
                try:
                    self.recover_orphans(hours=2)
                except Exception:  # noqa: BLE001 - the writer must outlive a bad scan
                    log.exception("prediction log: the scan for files left open failed")
            try:
                for _ in self._append():
                    await asyncio.sleep(0)  # requests run between the steps
            except Exception:  # noqa: BLE001 - the writer must outlive a bad slice; the log says why
                log.exception("prediction log: a slice failed; its rows are lost")
            now = time.time()
            for key in [k for k, f in self._open.items()
                        if now - f.opened >= self._flush_seconds or k[0] < now // 3600]:
                self._close(key)

    def flush(self) -> list[Path]:
        """Write everything queued so far and close the open files; the complete files written."""
        for _ in self._append():
            pass
        return [p for p in (self._close(key) for key in list(self._open)) if p is not None]

    def _append(self) -> Iterator[None]:
        """Take the queue and write it as row groups, in steps (yields between them)."""
        entries = list(self._queue)
        self._queue.clear()
        self._pending -= sum(e.rows for e in entries)
        groups: dict[tuple[int, int], list[_Entry]] = {}
        for e in entries:  # by hour since the epoch and model object (one version, one feature schema)
            groups.setdefault((int(e.at // 3600), id(e.model)), []).append(e)
        for key, group in groups.items():
            rows = sum(e.rows for e in group)
            columns = yield from _columns(group)
            try:
                yield from self._file(key, group[0], columns).writer.write_steps(columns)
            except OSError as exc:
                log.warning("prediction log: could not write %d rows: %s", rows, exc)
                self._metrics.log_dropped += rows
                continue
            self._metrics.log_rows += rows

    def _file(self, key: tuple[int, int], first: _Entry, columns: list[Column]) -> _OpenFile:
        if key not in self._open:
            folder = _folder(self.root, key[0])
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{int(first.at * 1000)}-v{first.model.version}-{uuid.uuid4().hex[:8]}.parquet"
            model = first.model
            writer = ParquetWriter(folder / f".{name}{TMP}", [(c.name, c.kind) for c in columns],
                                   {"model_name": model.name, "model_version": model.version,
                                    "threshold": repr(model.threshold)}, journal=folder / f".{name}{JOURNAL}")
            self._open[key] = _OpenFile(writer, folder / name, model, time.time())
        return self._open[key]

    def _close(self, key: tuple[int, int]) -> Path | None:
        f = self._open.pop(key)
        try:
            f.writer.close()
            f.writer.path.replace(f.final)
        except OSError as exc:  # the journal stays: a later scan completes what was written
            log.warning("prediction log: could not complete %s: %s", f.final, exc)
            return None
        f.final.with_name(f".{f.final.name}{JOURNAL}").unlink(missing_ok=True)
        self._metrics.log_files += 1
        return f.final

    def recover_orphans(self, hours: int | None = None) -> list[Path]:
        """Complete the files that stopped processes left open (killed, out of memory): untouched for
        `orphan_after` seconds (a live writer closes its files every flush_seconds), in the folders of
        the last `hours` hours (None: all). Their rows up to the last row group written are kept, from
        the file's journal. Several processes may scan the same folders: each file is taken by one."""
        now = time.time()
        hour = int(now // 3600)
        folders = (sorted(self.root.glob("dt=*/hr=*")) if hours is None else
                   [_folder(self.root, h) for h in range(hour - hours, hour + 1)])
        done = []
        for folder in folders:
            for path in [*folder.glob(f".part-*{TMP}"), *folder.glob(f".part-*{CLAIMED}*")]:
                try:
                    if now - path.stat().st_mtime < self.orphan_after:
                        continue
                except OSError:  # gone meanwhile: closed by its writer, or taken by another process
                    continue
                completed = self._recover(path)
                if completed is not None:
                    done.append(completed)
            for journal in folder.glob(f".part-*{JOURNAL}"):  # left when a writer died after its rename
                base = journal.name[1:].removesuffix(JOURNAL)
                if (journal.with_name(base).exists() and not journal.with_name(f".{base}{TMP}").exists()
                        and not any(folder.glob(f".{base}{CLAIMED}*"))):
                    journal.unlink(missing_ok=True)
        return done

    def _recover(self, orphan: Path) -> Path | None:
        base = orphan.name[1:].split(".parquet", 1)[0] + ".parquet"
        final, journal = orphan.with_name(base), orphan.with_name(f".{base}{JOURNAL}")
        claimed = orphan.with_name(f".{base}{CLAIMED}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        try:
            orphan.rename(claimed)  # atomic: of several processes scanning, one takes it
            os.utime(claimed)  # and it is fresh again: not taken from this one while it works
        except OSError:
            return None
        try:
            rows: int | None = None  # None: complete already (its writer closed it, then died before the rename)
            if not is_complete(claimed):
                if not journal.exists():
                    raise ValueError("no journal (written before files had one?)")
                rows = recover(claimed, journal)
            if rows == 0:
                claimed.unlink()
            else:
                claimed.replace(final)
            journal.unlink(missing_ok=True)
        except ValueError as exc:  # nothing to complete it from: set aside, not retried on every scan
            with contextlib.suppress(OSError):
                claimed.rename(orphan.with_name(f".{base}.unrecoverable"))
            log.warning("prediction log: cannot complete %s, left open by a stopped process: %s; renamed "
                        ".unrecoverable", orphan, exc)
            return None
        except OSError as exc:  # tried again on a later scan
            log.warning("prediction log: could not complete %s, left by a stopped process: %s", orphan, exc)
            return None
        if rows:
            self._metrics.log_recovered += rows
        log.warning("prediction log: completed %s (%s) that a stopped process left open", final,
                    "closed, not renamed" if rows is None else f"{rows} rows kept")
        return None if rows == 0 else final


def _folder(root: Path, hours_since_epoch: int) -> Path:
    hour = datetime.fromtimestamp(hours_since_epoch * 3600, UTC)
    return root / f"dt={hour:%Y-%m-%d}" / f"hr={hour:%H}"


def _columns(group: list[_Entry]) -> Generator[None, None, list[Column]]:
    """The row group's columns (the generator's return value), prepared in steps: the features as `Pages`
    of the runtime calls' arrays, without the requests that were not sampled, in groups of about
    PAGE_ROWS rows that the writer joins one page at a time; the columns made here (times, ids,
    probabilities, labels) are made once for the slice and cut into the same pages (views, no copies)."""
    model = group[0].model
    keep = [_sampled_rows(e) for e in group]
    pages: list[list[int]] = [[]]  # entry indexes per page
    bounds = [0]  # the pages' row offsets
    in_page = 0
    for i, e in enumerate(group):
        if pages[-1] and in_page + e.rows > PAGE_ROWS:
            pages.append([])
            bounds.append(bounds[-1] + in_page)
            in_page = 0
        pages[-1].append(i)
        in_page += e.rows
    bounds.append(bounds[-1] + in_page)

    def paged(values: list[Any]) -> Pages:
        return Pages([[values[i] if keep[i] is None else values[i][keep[i]] for i in page] for page in pages])

    def cut(values: Any) -> Pages:  # one sequence for the slice, cut at the pages' bounds
        return Pages([[values[a:b]] for a, b in pairwise(bounds)])

    rows = bounds[-1]
    sampled = [(n, tag) for e in group for n, tag in e.spans if tag]
    times = (np.repeat([tag[0] for _, tag in sampled], [n for n, _ in sampled]) * 1_000_000).astype(np.int64)
    ids = {tag[1] for _, tag in sampled}
    # One id (or none) for all rows is the common case: stored once.
    request_ids: Any = (Constant(ids.pop(), rows) if len(ids) == 1
                        else cut(list(chain.from_iterable([tag[1]] * n for n, tag in sampled))))
    probs = np.concatenate([e.probs if k is None else e.probs[k] for e, k in zip(group, keep, strict=True)])
    yield
    return [
        Column("ts", "timestamp_us", cut(times)),
        Column("model_name", "string", Constant(model.name, rows)),
        Column("model_version", "string", Constant(model.version, rows)),
        Column("request_id", "string", request_ids),
        *(Column(f"feature_{f.name}" if f.name in RESERVED else f.name,
                 "float32" if f.kind == "numeric" else "string", paged([e.feeds[f.name] for e in group]))
          for f in model.features),
        Column("probability", "float32", cut(probs)),
        Column("label", "int64", cut((probs >= model.threshold).astype(np.int64))),
    ]


def _sampled_rows(e: _Entry) -> np.ndarray | None:
    """The mask of an entry's rows that were sampled; None when all were."""
    if e.rows == e.probs.shape[0]:
        return None
    return np.repeat([tag is not None for _, tag in e.spans], [n for n, _ in e.spans])
