"""The prediction log: sampled requests' inputs, outputs, model version and time, as hourly Parquet files.

The request path only draws the sample. A small runtime call's inputs are assembled in place in a
block of the log's preallocated columns (BLOCK_ROWS rows; its feeds are views of them), and its
probabilities and request times are copied next to them: nothing is held per call, and a block's
memory is reused once written. A large call's arrays are held as they are. A writer task on the same
event loop takes the blocks every tenth of a second and writes them as a row group of the hour's open
file, a page of one column per step (a block's slice as it is, or several blocks joined), with requests
served between them, and closes the file every `flush_seconds`, at the turn of the hour and at shutdown:
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.metrics import Metrics
from serving.model import OnnxModel
from serving.parquet import Column, Constant, Flags, Pages, ParquetWriter, Values, is_complete, recover
from serving.predictor import LogTag, Slot

log = logging.getLogger("serving.predlog")
# Columns of every file besides the features; a feature with one of these names is stored as feature_<name>.
RESERVED = ("ts", "model_name", "model_version", "request_id", "probability", "label", "dt", "hr")
SLICE_SECONDS = 0.1  # a slice's row group stays small (~1-2 k rows of 1-row requests under load)
# Rows per block: calls of up to SMALL_CALL rows share a block; a larger call's arrays are a block as
# they are (no copy). Blocks are preallocated and reused, so their memory stays warm: fresh memory costs
# a page fault per 4 KB, more than the copy. A slice's blocks are data pages of up to PAGE_ROWS rows
# per column (one page: a writer step's work): one block as it is, several joined.
BLOCK_ROWS, SMALL_CALL, PAGE_ROWS = 2048, 256, 8192
FREE_BLOCKS = 8  # written blocks kept for reuse (per process: ~8 x 200 KB)
# Distinct categorical values the log keeps one object for (see Slot.canonical), and their longest: more
# than any vocabulary of codes a model embeds; once a flood of unknown values has filled it, further new
# values are logged as they came, and so is a longer value (kept for good, it would pin its memory).
CANONICAL_VALUES, CANONICAL_LENGTH = 4096, 64
# An open file is `.<name>.tmp` beside its journal `.<name>.journal` (each row group's index entry, for
# completing the file if its process dies); a file being completed by another process is `.<name>.recovering-*`.
TMP, JOURNAL, CLAIMED = ".tmp", ".journal", ".recovering"


class _Canonical(dict[str | None, str]):
    """Each categorical value's one shared object: the first one seen, while there is room; a missing value
    (None) is "", the "unknown" category the runtime sees."""

    def __init__(self) -> None:
        super().__init__({None: ""})

    def __missing__(self, value: str) -> str:
        if len(self) < CANONICAL_VALUES and len(value) <= CANONICAL_LENGTH:
            self[value] = value
        return value


class _Block:
    """Logged rows of one model version and hour, in columns: preallocated for small calls (their feeds
    are assembled in place, see `Slot`), or one large call's own arrays."""

    def __init__(self, model: OnnxModel, hour: int, capacity: int = BLOCK_ROWS,
                 columns: list[np.ndarray] | None = None) -> None:
        self.model, self.hour = model, hour
        self.layout = _layout(model)
        self.reusable = columns is None
        if columns is None:  # one column per feature, in feature order: rows of two matrices
            self.numeric = np.empty((sum(self.layout), capacity), np.float32)
            self.strings = np.empty((len(self.layout) - sum(self.layout), capacity), object)
            rows = iter(self.numeric), iter(self.strings)
            columns = [next(rows[0] if numeric else rows[1]) for numeric in self.layout]
        self.columns = columns
        self.capacity = len(columns[0]) if columns else capacity
        self.probs = np.empty(self.capacity, np.float32)
        self.times = np.empty(self.capacity, np.float64)  # per row: its request's time
        self.keep: np.ndarray | None = None  # per row: sampled; None while every row is
        self.ids: list[tuple[int, int, str]] = []  # (start, stop, request id) of rows with an id
        self.rows = 0

    def reset(self, model: OnnxModel, hour: int) -> _Block:
        self.model, self.hour, self.rows, self.keep, self.ids = model, hour, 0, None, []
        return self

    def add(self, start: int, probs: np.ndarray, tags: list[LogTag | None], counts: list[int] | None) -> None:
        """A call's outputs and its requests' times, ids and sampling, for its rows from `start` (per
        request: its log tag or None, and its row count; `counts` None: one row each)."""
        stop = start + len(probs)
        self.probs[start:stop] = probs
        if None not in tags:  # every request sampled (the default): times and ids unzipped without a loop
            times, ids = zip(*tags, strict=True)
            plain = ids.count(None) == len(ids)  # and none with an id
        else:
            times, plain = tuple(tag[0] if tag else 0.0 for tag in tags), False
        self.times[start:stop] = times if counts is None else np.repeat(times, counts)
        if not plain:  # some requests not sampled, or with ids
            at = start
            for n, tag in zip(counts or [1] * len(tags), tags, strict=True):
                if tag is None:
                    if self.keep is None:
                        self.keep = np.ones(self.capacity, bool)
                    self.keep[at:at + n] = False
                elif tag[1] is not None:
                    self.ids.append((at, at + n, tag[1]))
                at += n
        self.rows = max(self.rows, stop)


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
        self._queue: deque[_Block] = deque()  # full blocks and large calls, for the writer
        # id(model) -> the block its small calls go to now (the block holds the model: its id is not reused)
        self._filling: dict[int, _Block] = {}
        self._free: list[_Block] = []  # written blocks, to reuse
        self._canonical = _Canonical()
        self._pending = 0  # rows logged, not yet taken by the writer
        self._open: dict[tuple[int, int], _OpenFile] = {}  # (hours since epoch, id(model)) -> its open file
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        # A file untouched this long belongs to a process that stopped without closing it.
        self.orphan_after = 2 * flush_seconds + 10

    def sampled(self) -> bool:
        """Called per request: whether this one goes to the log."""
        return self._sample >= 1.0 or random.random() < self._sample  # noqa: S311 - sampling, not security

    def reserve(self, model: OnnxModel, rows: int, at: float) -> Slot | None:
        """Room for a small call's rows in the block its model's calls of the hour `at` fill (see `Slot`)."""
        if rows > SMALL_CALL or self._pending + rows > self._max_pending:
            return None
        hour = int(at // 3600)
        block = self._filling.get(id(model))
        if block is None or block.hour != hour or block.rows + rows > block.capacity:
            if block is not None and block.rows:
                self._queue.append(block)
            block = self._filling[id(model)] = self._block(model, hour)
        start = block.rows
        block.rows += rows  # taken now: a release gives it back
        return Slot(block.numeric[:, start:block.rows], block.strings[:, start:block.rows], block, start,
                    self._canonical)

    def release(self, slot: Slot) -> None:
        """The call failed: its rows were the last reserved in their block; they are not logged."""
        if slot.block.rows == slot.start + slot.numeric.shape[1]:
            slot.block.rows = slot.start

    def commit(self, model: OnnxModel, slot: Slot | None, feeds: dict[str, np.ndarray], probs: np.ndarray,
               tags: list[LogTag | None], counts: list[int] | None, rows: int) -> None:
        """A call ran, on the event loop: one copy of its outputs (in place), or its arrays held as they are."""
        if slot is not None:
            slot.block.add(slot.start, probs, tags, counts)
            self._pending += rows
            return
        if self._pending + rows > self._max_pending:
            self._metrics.log_dropped += rows
            return
        at = next(tag[0] for tag in tags if tag)
        block = _Block(model, int(at // 3600), columns=[feeds[f.name] for f in model.features])
        block.add(0, probs, tags, counts)
        self._pending += rows
        filling = self._filling.pop(id(model), None)
        if filling is not None and filling.rows:  # rows stay in the order their calls ran
            self._queue.append(filling)
        self._queue.append(block)

    def _block(self, model: OnnxModel, hour: int) -> _Block:
        layout = _layout(model)
        while self._free:
            block = self._free.pop()
            if block.layout == layout:  # else another model's: dropped
                return block.reset(model, hour)
        return _Block(model, hour)

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
        """Take the blocks and write them as row groups, in steps (yields between them)."""
        blocks = [b for b in (*self._queue, *self._filling.values()) if _logged(b)]
        self._queue.clear()
        self._filling.clear()
        groups: dict[tuple[int, int], list[_Block]] = {}
        for b in blocks:  # by hour since the epoch and model object (one version, one feature schema)
            groups.setdefault((b.hour, id(b.model)), []).append(b)
        for key, group in groups.items():
            rows = sum([_logged(b) for b in group])
            self._pending -= rows
            columns = _columns(group, rows)
            try:
                yield from self._file(key, group[0], columns).writer.write_steps(columns)
            except OSError as exc:
                log.warning("prediction log: could not write %d rows: %s", rows, exc)
                self._metrics.log_dropped += rows
                continue
            finally:
                self._free.extend(b for b in group if b.reusable)
                del self._free[FREE_BLOCKS:]
            self._metrics.log_rows += rows

    def _file(self, key: tuple[int, int], first: _Block, columns: list[Column]) -> _OpenFile:
        if key not in self._open:
            folder = _folder(self.root, key[0])
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{int(_first_time(first) * 1000)}-v{first.model.version}-{uuid.uuid4().hex[:8]}.parquet"
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


def _columns(group: list[_Block], rows: int) -> list[Column]:
    """The row group's columns (`rows` logged rows), of its blocks' slices: a block's slice is a page as it
    is (copied only where some rows were not sampled); several blocks are joined into pages of up to
    PAGE_ROWS (a page costs ~50 µs to frame and compress, and large calls make a block each)."""
    model = group[0].model

    def pages(per_block: list[np.ndarray]) -> Pages:
        joined: list[list[Values]] = [[]]
        size = 0
        for values, b in zip(per_block, group, strict=True):
            piece = _kept(b, values[:b.rows])
            if size and size + len(piece) > PAGE_ROWS:
                joined.append([])
                size = 0
            joined[-1].append(piece)
            size += len(piece)
        return Pages(joined)

    ids = {request_id for b in group for _, _, request_id in b.ids}
    every_row = all(sum([stop - start for start, stop, _ in b.ids]) == _logged(b) for b in group)
    # One id (or none) for all rows is the common case: stored once.
    request_ids: Any = (Constant(ids.pop() if ids else None, rows) if not ids or (len(ids) == 1 and every_row)
                        else pages([_ids(b) for b in group]))
    return [
        Column("ts", "timestamp_us", pages([(b.times[:b.rows] * 1_000_000).astype(np.int64) for b in group])),
        Column("model_name", "string", Constant(model.name, rows)),
        Column("model_version", "string", Constant(model.version, rows)),
        Column("request_id", "string", request_ids),
        *(Column(f"feature_{f.name}" if f.name in RESERVED else f.name,
                 "float32" if f.kind == "numeric" else "string", pages([b.columns[i] for b in group]))
          for i, f in enumerate(model.features)),
        Column("probability", "float32", pages([b.probs for b in group])),
        Column("label", "int64", Flags(pages([b.probs[:b.rows] >= model.threshold for b in group]))),
    ]


def _layout(model: OnnxModel) -> tuple[bool, ...]:
    """Which features are numeric: what a block's columns are made of."""
    return tuple(f.kind == "numeric" for f in model.features)


def _logged(b: _Block) -> int:
    return b.rows if b.keep is None else int(b.keep[:b.rows].sum())


def _kept(b: _Block, values: np.ndarray) -> np.ndarray:
    """A block's values of its logged rows (`values` has one per row of the block)."""
    return values if b.keep is None else values[b.keep[:b.rows]]


def _ids(b: _Block) -> np.ndarray:
    out = np.full(b.rows, None, object)
    for start, stop, request_id in b.ids:
        out[start:stop] = request_id
    return out


def _first_time(b: _Block) -> float:
    return float(_kept(b, b.times[:b.rows])[0])
