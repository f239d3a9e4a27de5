"""Extract a training window from the spec's sources into a fingerprinted Parquet snapshot."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from tasks.config import FileSource, PipelineSpec, expand
from tasks.snapshot import SnapshotWriter, Window, snapshot_dir
from tasks.sources import SourceError, redact

# Rows per batch and per Parquet file: bounds peak memory (see make bench).
CHUNK_ROWS = 20_000


def _sql_chunks(url: str, query: str, window: Window) -> Iterator[pd.DataFrame]:
    """Rows of the window in chunks from a server-side cursor; the window is bound, not formatted."""
    statement = sa.text(query).bindparams(
        sa.bindparam("start", type_=sa.DateTime()), sa.bindparam("end", type_=sa.DateTime())
    )
    engine = sa.create_engine(url)
    try:
        with engine.connect().execution_options(stream_results=True, yield_per=CHUNK_ROWS) as conn:
            result = conn.execute(statement, {"start": window.start, "end": window.end})
            columns = list(result.keys())
            empty = True
            for rows in result.partitions(CHUNK_ROWS):
                empty = False
                yield pd.DataFrame(rows, columns=columns)
            if empty:
                yield pd.DataFrame(columns=columns)
    except sa.exc.OperationalError as exc:
        raise SourceError(f"cannot query {redact(url)}: {exc.orig}") from exc
    finally:
        engine.dispose()


def _read_lookup(source: FileSource) -> pd.DataFrame:
    """A file source reduced to its join key and renamed columns (small dimension tables)."""
    path = expand(source.path)
    try:
        frame = pd.read_csv(path) if source.format == "csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read file source {source.name!r} at {path}: {exc}") from exc
    wanted = [source.join.right_on, *source.join.columns]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise SourceError(f"file source {source.name!r} ({path}) lacks column(s) {missing}")
    frame = frame[wanted].drop_duplicates(source.join.right_on)
    return frame.rename(columns=source.join.columns)


def _join(chunk: pd.DataFrame, source: FileSource, lookup: pd.DataFrame) -> pd.DataFrame:
    joined = chunk.merge(
        lookup, how="left", left_on=source.join.left_on, right_on=source.join.right_on,
        validate="many_to_one",
    )
    if source.join.right_on != source.join.left_on:
        joined = joined.drop(columns=[source.join.right_on])
    return joined


def extract_snapshot(
    spec: PipelineSpec, window: Window, db_url: str, data_root: Path | None = None
) -> dict[str, Any]:
    """Write the window's rows (SQL source joined with file sources) as a snapshot.

    A rerun of the same window on unchanged data yields the same fingerprint and leaves the
    existing snapshot untouched; a failed run leaves no visible partial snapshot.

    Args:
        spec: the pipeline spec.
        window: the training window, bound as :start and :end into the SQL query.
        db_url: SQLAlchemy URL of the SQL source's database.
        data_root: where snapshots live (default: the spec's data_root).

    Returns:
        The snapshot manifest, with `path` added.
    """
    target = snapshot_dir(data_root or spec.data_root_path, spec.name, window)
    lookups = [(s, _read_lookup(s)) for s in spec.file_sources]
    writer = SnapshotWriter(target)
    try:
        for chunk in _sql_chunks(db_url, spec.sql_source.query, window):
            # Drivers disagree on timestamps (SQLite returns text): normalise the event time.
            if spec.event_time in chunk:
                chunk[spec.event_time] = pd.to_datetime(chunk[spec.event_time])
            for source, lookup in lookups:
                chunk = _join(chunk, source, lookup)
            writer.write(chunk)
        manifest = writer.publish({
            "pipeline": spec.name,
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "sources": [
                {"name": spec.sql_source.name, "kind": "sql",
                 "query_sha256": hashlib.sha256(spec.sql_source.query.encode()).hexdigest()},
                *({"name": s.name, "kind": "file", "path": expand(s.path)} for s, _ in lookups),
            ],
        })
    except BaseException:
        writer.discard()
        raise
    return {**manifest, "path": str(target)}
