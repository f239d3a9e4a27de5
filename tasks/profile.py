"""One streaming pass over a snapshot: per-column statistics and the first few offending rows.

Memory stays at one record batch plus running totals, whatever the snapshot's size; only the
unique-key check keeps something per row (the key columns).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.snapshot import read_manifest

BATCH_ROWS = 65_536
EXAMPLES = 5
MAX_CATEGORIES = 200  # more distinct values than this: an identifier or free text, not a category


@dataclass(frozen=True)
class Probe:
    """What to look for in one column besides NULLs."""

    low: float | None = None
    high: float | None = None
    allowed: frozenset[str] | None = None
    count_values: bool = False  # keep the distinct values (a draft contract lists them)


@dataclass
class ColumnProfile:
    rows: int = 0
    nulls: int = 0
    low: Any = None
    high: Any = None
    out_of_range: int = 0
    unseen: int = 0
    values: dict[str, int] | None = field(default_factory=dict)  # None once past MAX_CATEGORIES
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # rule -> offending rows


@dataclass
class Profile:
    rows: int = 0
    columns: dict[str, ColumnProfile] = field(default_factory=dict)
    keys: list[pa.RecordBatch] = field(default_factory=list)
    labelled: int = 0
    positives: int = 0


def iter_batches(snapshot: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The snapshot's rows in order, one record batch at a time, with those of `columns` it has."""
    for part in read_manifest(snapshot)["files"]:
        with (snapshot / part["path"]).open("rb") as fh:  # Path or UPath: local or object storage
            parquet = pq.ParquetFile(fh)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=present)


def is_numeric(type_: pa.DataType) -> bool:
    return bool(pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_))


def profile_snapshot(snapshot: Path, probes: dict[str, Probe], key: list[str],
                     label: tuple[str, float] | None = None, keep_keys: bool = False) -> Profile:
    """Scan a snapshot batch by batch.

    Args:
        snapshot: the snapshot folder.
        probes: the columns to profile and what to look for in each.
        key: columns that identify a row in the examples (and for `keep_keys`).
        label: (column, threshold): count labelled rows and those >= threshold.
        keep_keys: keep the key columns of every row, for the unique-key check.
    """
    profile = Profile(columns={name: ColumnProfile() for name in probes})
    allowed = {name: pa.array(sorted(p.allowed), pa.string()) for name, p in probes.items() if p.allowed is not None}
    for batch in iter_batches(snapshot, list(dict.fromkeys([*key, *probes]))):
        profile.rows += batch.num_rows
        ids = [k for k in key if k in batch.schema.names]
        for name in probes:
            if name in batch.schema.names:
                _update(profile.columns[name], probes[name], allowed.get(name), batch, name, ids)
        if label is not None and label[0] in batch.schema.names:
            _count_labels(profile, batch.column(label[0]), label[1])
        if keep_keys and len(ids) == len(key):
            profile.keys.append(batch.select(key))
    return profile


def _update(col: ColumnProfile, probe: Probe, allowed: pa.Array | None, batch: pa.RecordBatch, name: str,
            ids: list[str]) -> None:
    values, shown = batch.column(name), [*ids, name]  # examples show the row's key and the value
    col.rows += len(values)
    col.nulls += values.null_count
    if values.null_count:
        _keep_examples(col, "nulls", batch, pc.is_null(values), shown)
    if pa.types.is_null(values.type):
        return
    if is_numeric(values.type) or pa.types.is_temporal(values.type):
        low, high = pc.min_max(values).values()
        col.low = _extreme(min, col.low, low.as_py())
        col.high = _extreme(max, col.high, high.as_py())
    if is_numeric(values.type) and (probe.low is not None or probe.high is not None):
        col.out_of_range += _count_and_keep(col, "range", batch, _outside(values, probe), shown)
    if allowed is not None:
        text = values if pa.types.is_string(values.type) else values.cast(pa.string())
        unseen = pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=allowed)))
        col.unseen += _count_and_keep(col, "categories", batch, unseen, shown)
    if probe.count_values and pa.types.is_string(values.type):
        _count_values(col, values)


def _outside(values: pa.Array, probe: Probe) -> pa.Array:
    low = probe.low if probe.low is not None else float("-inf")
    high = probe.high if probe.high is not None else float("inf")
    return pc.fill_null(pc.or_(pc.less(values, low), pc.greater(values, high)), False)


def _count_values(col: ColumnProfile, values: pa.Array) -> None:
    if col.values is None:
        return
    for item in pc.value_counts(values.drop_null()).to_pylist():
        col.values[item["values"]] = col.values.get(item["values"], 0) + item["counts"]
    if len(col.values) > MAX_CATEGORIES:
        col.values = None


def _extreme(pick: Any, current: Any, new: Any) -> Any:
    return new if current is None else current if new is None else pick(current, new)


def _count_and_keep(col: ColumnProfile, rule: str, batch: pa.RecordBatch, mask: pa.Array,
                    columns: list[str]) -> int:
    hits: int = pc.sum(mask).as_py() or 0
    if hits:
        _keep_examples(col, rule, batch, mask, columns)
    return hits


def _keep_examples(col: ColumnProfile, rule: str, batch: pa.RecordBatch, mask: pa.Array,
                   columns: list[str]) -> None:
    kept = col.examples.setdefault(rule, [])
    if len(kept) < EXAMPLES:
        kept.extend(batch.select(columns).filter(mask).slice(0, EXAMPLES - len(kept)).to_pylist())


def _count_labels(profile: Profile, labels: pa.Array, threshold: float) -> None:
    profile.labelled += len(labels) - labels.null_count
    if is_numeric(labels.type):
        profile.positives += pc.sum(pc.greater_equal(labels, threshold)).as_py() or 0


def duplicate_keys(keys: list[pa.RecordBatch], columns: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """Rows beyond the first per key value, and up to EXAMPLES duplicated keys with their row counts."""
    if not keys:
        return 0, []
    table = pa.Table.from_batches(keys) if len({b.schema for b in keys}) == 1 else pa.concat_tables(
        [pa.Table.from_batches([b]) for b in keys], promote_options="default")
    counts = table.group_by(columns).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    extra = (pc.sum(repeated["count_all"]).as_py() or 0) - repeated.num_rows
    # Group order follows threads; the smallest keys make the examples the same on every run.
    repeated = repeated.sort_by([(c, "ascending") for c in columns])
    examples = [{**{c: row[c] for c in columns}, "rows": row["count_all"]}
                for row in repeated.slice(0, EXAMPLES).to_pylist()]
    return extra, examples
