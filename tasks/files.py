"""File sources: a path, glob or fsspec URL of CSV or Parquet files, read whole or by window."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.config import FileSource, expand
from tasks.snapshot import Window
from tasks.sources import SourceError
from tasks.sql_reader import CHUNK_ROWS


def _open_files(source: FileSource) -> list[Any]:
    pattern = expand(source.path)
    try:
        files = sorted(fsspec.open_files(pattern, mode="rb"), key=lambda f: f.path)
    except (OSError, ValueError) as exc:
        raise SourceError(f"file source {source.name!r}: cannot list {pattern}: {exc}") from exc
    if not files:
        raise SourceError(f"file source {source.name!r}: no file matches {pattern}")
    return files


def file_batches(source: FileSource, event_time: str, window: Window) -> Iterator[pa.RecordBatch]:
    """Rows of a file source whose event time falls in the window, streamed file by file.

    With `partitioning: hive`, folder names like `day=2013-06-01/` become columns too.
    """
    import pyarrow.dataset as pads

    files = _open_files(source)
    fs = files[0].fs
    pattern = fs._strip_protocol(expand(source.path))
    base = re.split(r"[*?\[]", pattern, maxsplit=1)[0].rsplit("/", 1)[0]
    try:
        dataset = pads.dataset([f.path for f in files], filesystem=fs, format=source.format,
                               partitioning="hive" if source.partitioning else None,
                               partition_base_dir=base if source.partitioning else None)
        if event_time not in dataset.schema.names:
            raise SourceError(f"file source {source.name!r}: no column `{event_time}` to select the window by")
        kind = dataset.schema.field(event_time).type
        column = pads.field(event_time)
        window_filter = ((column >= pa.scalar(window.start).cast(kind))
                         & (column < pa.scalar(window.end).cast(kind)))
        empty = True
        for batch in dataset.scanner(filter=window_filter, batch_size=CHUNK_ROWS).to_batches():
            empty = False
            yield batch
        if empty:
            yield pa.RecordBatch.from_pylist([], schema=dataset.schema)
    except (OSError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SourceError(f"file source {source.name!r} ({expand(source.path)}): {exc}") from exc


def read_file_source(source: FileSource) -> pa.Table:
    """All files matching the source's path or glob (local or any fsspec URL), as one table.

    Raises:
        SourceError: no file matches, a file cannot be parsed (the message names file and row),
            or the files disagree on their schema.
    """
    pattern = expand(source.path)
    files = _open_files(source)
    tables = []
    for f in files:
        try:
            with f as fh:
                tables.append(pacsv.read_csv(fh) if source.format == "csv" else pq.read_table(fh))
        except (OSError, pa.ArrowInvalid) as exc:
            where = _bad_csv_line(f) if source.format == "csv" else None
            at = f", line {where}" if where else ""
            raise SourceError(f"file source {source.name!r}: cannot read {f.full_name}{at}: {exc}") from exc
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SourceError(f"file source {source.name!r}: files under {pattern} disagree on their "
                          f"schema: {exc}") from exc


def _bad_csv_line(file: Any) -> int | None:
    """The first line whose field count differs from the header's (Arrow's message has no line)."""
    try:
        with file as fh:
            rows = csv.reader(io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline=""))
            width = len(next(rows, []))
            for row in rows:
                if len(row) != width:
                    return rows.line_num
    except (OSError, csv.Error):
        return None
    return None
