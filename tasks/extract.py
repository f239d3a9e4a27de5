"""Extract a training window from the spec's sources into a fingerprinted Parquet snapshot."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import FileSource, PipelineSpec, SqlSource, expand
from tasks.files import file_batches, read_file_source
from tasks.snapshot import SnapshotWriter, Window, snapshot_dir
from tasks.sources import SourceError
from tasks.sql_reader import read_batches


class EmptyExtractError(SourceError):
    """The window selected no rows and the spec does not allow an empty snapshot."""


def _lookup(source: FileSource) -> pa.Table:
    """The join key and the renamed columns of a (small, dimension-like) file source."""
    assert source.join is not None
    table = read_file_source(source)
    wanted = [source.join.right_on, *source.join.columns]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise SourceError(f"file source {source.name!r} ({expand(source.path)}) lacks column(s) {missing}")
    # One contiguous chunk per column, so every batch's join takes from it without copying.
    table = table.select(wanted).combine_chunks()
    return table.rename_columns([source.join.right_on, *source.join.columns.values()])


def _join(batch: pa.RecordBatch, source: FileSource, lookup: pa.Table) -> pa.RecordBatch:
    """Left join that keeps the batch's row order: look each key up, take the matching row.

    `index_in` answers the first position of a key, so a duplicated key in the file resolves to
    its first row, as a many-to-one join must.
    """
    assert source.join is not None
    left = batch.column(batch.schema.get_field_index(source.join.left_on))
    right = lookup.column(0).chunk(0)
    positions = pc.index_in(left.cast(right.type) if left.type != right.type else left, value_set=right)
    arrays, names = list(batch.columns), list(batch.schema.names)
    for name in lookup.column_names[1:]:
        arrays.append(lookup.column(name).chunk(0).take(positions))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _canonical(batch: pa.RecordBatch, event_time: str) -> pa.RecordBatch:
    """One representation whatever the driver: microsecond timestamps, plain strings."""
    arrays = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if field.name == event_time and not pa.types.is_timestamp(field.type) and not pa.types.is_null(field.type):
            column = column.cast(pa.timestamp("us"))  # SQLite hands timestamps back as text
        elif pa.types.is_timestamp(field.type) and field.type.unit != "us":
            column = column.cast(pa.timestamp("us", field.type.tz))
        elif pa.types.is_large_string(field.type):
            column = column.cast(pa.string())
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _primary_batches(spec: PipelineSpec, window: Window, db_url: str | None) -> Iterator[pa.RecordBatch]:
    source = spec.primary
    if isinstance(source, SqlSource):
        if db_url is None:
            raise SourceError(f"source {source.name!r} needs a database URL (connection {source.connection!r})")
        yield from read_batches(db_url, source.query, {"start": window.start, "end": window.end}, source.name)
    else:
        yield from file_batches(source, spec.event_time, window)


def prefetch(batches: Iterator[pa.RecordBatch], depth: int = 4) -> Iterator[pa.RecordBatch]:
    """Pull batches on a thread of their own, so the source keeps streaming while we convert."""
    buffer: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pull() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        buffer.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer below
            buffer.put(exc)

    worker = threading.Thread(target=pull, name="source-reader", daemon=True)
    worker.start()
    try:
        while (item := buffer.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _batches(spec: PipelineSpec, window: Window, db_url: str | None) -> Iterator[pa.RecordBatch]:
    lookups = [(s, _lookup(s)) for s in spec.lookups]
    for batch in prefetch(_primary_batches(spec, window, db_url)):
        batch = _canonical(batch, spec.event_time)
        for source, lookup in lookups:
            batch = _join(batch, source, lookup)
        yield batch


def _describe(source: SqlSource | FileSource) -> dict[str, Any]:
    if isinstance(source, SqlSource):
        return {"name": source.name, "kind": "sql", "connection": source.connection,
                "query_sha256": hashlib.sha256(source.query.encode()).hexdigest()}
    return {"name": source.name, "kind": "file", "path": expand(source.path), "format": source.format}


def extract_snapshot(
    spec: PipelineSpec, window: Window, db_url: str | None, data_root: Path | None = None
) -> dict[str, Any]:
    """Write the window's rows (SQL source joined with file sources) as a snapshot.

    A rerun of the same window on unchanged data yields the same fingerprint and leaves the
    existing snapshot untouched; a failed run leaves no visible partial snapshot.

    Args:
        spec: the pipeline spec.
        window: the training window, bound as :start and :end into the SQL query.
        db_url: SQLAlchemy URL of the database when the first source is SQL (else None).
        data_root: where snapshots live (default: the spec's data_root).

    Returns:
        The snapshot manifest, with `path` added.

    Raises:
        SourceError: a source is unreachable or unreadable (named, password redacted).
        EmptyExtractError: no rows, unless the SQL source sets `allow_empty`.
        SchemaError: a column changed type between batches.
    """
    target = snapshot_dir(data_root or spec.data_root_path, spec.name, window)
    batches = _batches(spec, window, db_url)
    # File sources and the database are checked before anything is written.
    first = next(batches, None)
    primary = spec.primary
    if first is None:
        raise EmptyExtractError(f"source {primary.name!r} returned no batches")
    writer = SnapshotWriter(target)
    try:
        writer.write(first)
        for batch in batches:
            writer.write(batch)
        if writer.rows == 0 and not primary.allow_empty:
            raise EmptyExtractError(f"source {primary.name!r} returned no rows for "
                                    f"[{window.start}, {window.end}); set allow_empty to accept that")
        manifest = writer.publish({
            "pipeline": spec.name,
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "sources": [_describe(s) for s in spec.sources],
        })
    except BaseException:
        writer.discard()
        raise
    return {**manifest, "path": str(target)}
