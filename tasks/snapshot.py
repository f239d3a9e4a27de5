"""Immutable, fingerprinted Parquet snapshots: a folder of part files plus `manifest.json`."""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.fingerprint import ContentHash

MANIFEST = "manifest.json"
ROWS_PER_FILE = 1_000_000
ROW_GROUP_ROWS = 128_000
# Dictionary-encode a column only when it repeats: on near-unique columns (ids, times, measurements)
# the dictionary costs a third of the write time and saves nothing (see make bench-extract).
DICTIONARY_MAX_DISTINCT_SHARE = 0.1
STALE_TEMP_S = 3600


class SchemaError(ValueError):
    """A column's type changed between batches or files; the message names the column."""


@dataclass(frozen=True)
class Window:
    """A half-open training window [start, end) in the source data's (naive, local) time."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(f"window start {self.start} is not before its end {self.end}")

    @property
    def slug(self) -> str:
        return f"{self.start:%Y%m%dT%H%M}_{self.end:%Y%m%dT%H%M}"


def snapshot_dir(data_root: Path, pipeline: str, window: Window) -> Path:
    """The deterministic home of a (pipeline, window) snapshot: reruns land in the same place.

    `data_root` is a local Path or a UPath on object storage (s3://, gs://, ... through fsspec).
    """
    return data_root / pipeline / window.slug


def is_local(path: Path) -> bool:
    return isinstance(path, Path) and not getattr(path, "protocol", "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unify(schema: pa.Schema, batch: pa.RecordBatch) -> tuple[pa.Schema, pa.RecordBatch]:
    """Reconcile a batch with the snapshot's schema: NULL-only columns adopt the other side's type.

    Raises:
        SchemaError: a column is missing, extra, or of another (non-null) type.
    """
    if batch.schema.names != schema.names:
        raise SchemaError(f"columns changed between batches: {schema.names} -> {batch.schema.names}")
    fields, arrays = [], []
    for field, column in zip(schema, batch.columns, strict=True):
        if column.type == field.type or pa.types.is_null(field.type):
            fields.append(pa.field(field.name, column.type))
            arrays.append(column)
        elif pa.types.is_null(column.type):
            fields.append(field)
            arrays.append(column.cast(field.type))
        else:
            raise SchemaError(f"column `{field.name}` changed type from {field.type} to {column.type}")
    unified = pa.schema(fields)
    return unified, pa.RecordBatch.from_arrays(arrays, schema=unified)


def _encodings(table: pa.Table) -> tuple[list[str], dict[str, str]]:
    """(columns to dictionary-encode, {column: encoding} for the rest), judged on `table`.

    Integers are delta-encoded: cheaper to write than a dictionary and smaller (ids, counts and
    codes are close to their neighbours). Other columns get a dictionary only where values repeat.
    """
    names, encodings = [], {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_integer(column.type):
            encodings[name] = "DELTA_BINARY_PACKED"
            continue
        if pa.types.is_nested(column.type) or pa.types.is_null(column.type):
            continue
        if pc.count_distinct(column).as_py() <= DICTIONARY_MAX_DISTINCT_SHARE * max(len(column), 1):
            names.append(name)
    return names, encodings


class SnapshotWriter:
    """Streams batches into a hidden temp folder, then publishes it under its final name.

    Parquet encoding and hashing run on a worker thread (both release the GIL), so they overlap
    with fetching the next batches; the bounded queue keeps memory flat.
    """

    def __init__(self, target: Path, rows_per_file: int | None = None) -> None:
        self.target = target
        self.run = uuid.uuid4().hex[:8]
        self.local = is_local(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.local:
            # Local: a hidden temp folder renamed into place at the end.
            _remove_stale_temps(target)
            self.tmp = target.parent / f".{target.name}.tmp-{self.run}"
            self.tmp.mkdir()
        else:
            # Object storage has no atomic folder rename: parts get run-unique names next to the
            # manifest, and the manifest (one object, written last) is what makes them visible.
            self.tmp = target
            target.mkdir(parents=True, exist_ok=True)
        self.rows_per_file = rows_per_file or ROWS_PER_FILE
        self.schema: pa.Schema | None = None
        self.rows = 0
        self.files: list[dict[str, Any]] = []
        self._content: ContentHash | None = None
        # Decided on the first row group and kept for every file.
        self._encodings: tuple[list[str], dict[str, str]] | None = None
        self._queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="snapshot-writer", daemon=True)
        self._thread.start()

    def write(self, batch: pa.RecordBatch) -> None:
        if self._error is not None:
            raise self._error
        if self.schema is None:
            self.schema = batch.schema
            self._content = ContentHash(len(batch.schema))
        else:
            self.schema, batch = unify(self.schema, batch)
        self.rows += batch.num_rows
        self._queue.put(batch)

    def _drain(self) -> None:
        writer: pq.ParquetWriter | None = None
        pending: list[pa.RecordBatch] = []
        in_file = pending_rows = 0
        try:
            while True:
                batch = self._queue.get()
                if batch is not None:
                    assert self._content is not None
                    self._content.update(batch)
                    pending.append(batch)
                    pending_rows += batch.num_rows
                if pending and (batch is None or pending_rows >= ROW_GROUP_ROWS
                                or in_file + pending_rows >= self.rows_per_file
                                or (writer is not None and pending[-1].schema != writer.schema)):
                    # Earlier NULL-only columns take the type that arrived later (see unify).
                    last = pending[-1].schema
                    table = pa.Table.from_batches([b if b.schema == last else b.cast(last) for b in pending])
                    if writer is not None and (in_file + table.num_rows > self.rows_per_file
                                               or table.schema != writer.schema):
                        self._close(writer)
                        writer, in_file = None, 0
                    if writer is None:
                        name = self._part_name(len(self.files))
                        sink = self.tmp / name if self.local else (self.tmp / name).open("wb")
                        if self._encodings is None:
                            self._encodings = _encodings(table)
                        dictionary, encodings = self._encodings
                        writer = pq.ParquetWriter(sink, table.schema, use_dictionary=dictionary,
                                                  column_encoding=encodings)
                        self.files.append({"path": name, "rows": 0, "_sink": sink})
                    writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                    self.files[-1]["rows"] += table.num_rows
                    in_file += table.num_rows
                    pending, pending_rows = [], 0
                if batch is None:
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            self._error = exc
            while self._queue.get() is not None:  # unblock the producer until it stops
                pass
        finally:
            if writer is not None:
                self._close(writer)

    def _part_name(self, index: int) -> str:
        return f"part-{index:05d}.parquet" if self.local else f"part-{self.run}-{index:05d}.parquet"

    def _close(self, writer: pq.ParquetWriter) -> None:
        writer.close()
        sink = self.files[-1].pop("_sink")
        if not isinstance(sink, Path):
            sink.close()

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def publish(self, details: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest and make the snapshot visible; an identical one is kept as it is."""
        self._finish()
        schema = self.schema or pa.schema([])
        fields = [{"name": f.name, "type": str(f.type)} for f in schema]
        fingerprint = (self._content or ContentHash(0)).hexdigest(json.dumps(fields))
        for f in self.files:
            f.pop("_sink", None)
            f["sha256"] = _sha256(self.tmp / f["path"])
        manifest = {**details, "rows": self.rows, "schema": fields, "files": self.files,
                    "fingerprint": fingerprint}
        existing = read_manifest(self.target) if (self.target / MANIFEST).exists() else None
        if existing and existing["fingerprint"] == manifest["fingerprint"]:
            self.discard()
            return existing
        text = json.dumps(manifest, indent=2, default=str)
        if not self.local:
            (self.target / MANIFEST).write_text(text)
            keep = {f["path"] for f in self.files} | {MANIFEST}
            for stale in self.target.iterdir():  # parts of the snapshot this one replaced
                if stale.name not in keep:
                    stale.unlink()
            return manifest
        (self.tmp / MANIFEST).write_text(text)
        if self.target.exists():
            # Move the old one aside first: the target name never shows a half-written folder.
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            self.target.rename(old)
            self.tmp.rename(self.target)
            shutil.rmtree(old)
        else:
            self.tmp.rename(self.target)
        return manifest

    def discard(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("discarded")
            self._queue.put(None)
            self._thread.join()
        if self.local:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        for f in self.files:
            (self.target / f["path"]).unlink(missing_ok=True)


def _remove_stale_temps(target: Path) -> None:
    """Temp folders of killed runs (hidden, so never read) are removed once clearly abandoned."""
    for tmp in target.parent.glob(f".{target.name}.*-*"):
        if time.time() - tmp.stat().st_mtime > STALE_TEMP_S:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_part(path: Path, columns: list[str] | None) -> pa.Table:
    if is_local(path):
        return pq.read_table(path, columns=columns)
    with path.open("rb") as fh:
        return pq.read_table(fh, columns=columns)


def read_manifest(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    return manifest


def read_snapshot(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    """All rows of a snapshot, in order, as one Arrow table (NULL-only parts adopt the real type)."""
    manifest = read_manifest(path)
    cols = list(columns) if columns is not None else None
    tables = [_read_part(path / f["path"], cols) for f in manifest["files"]]
    if not tables:
        names = cols if cols is not None else [f["name"] for f in manifest["schema"]]
        return pa.table({c: pa.array([], pa.null()) for c in names})
    return pa.concat_tables(tables, promote_options="default")
