"""Draft a data contract from a known-good snapshot: observed values with margins, as commented YAML.

The margins are deliberate guesses for a person to review before committing, never the last word.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tasks.config import PipelineSpec
from tasks.contract import ColumnContract, Contract, ContractError, Freshness, Label, RowCount, RowCountChange, Unique
from tasks.profile import ColumnProfile, Probe, Profile, duplicate_keys, profile_snapshot
from tasks.rules import pct
from tasks.snapshot import read_manifest

RANGE_MARGIN = 0.25    # of the observed span, on each side
NULL_HEADROOM = 0.05   # a NULL limit sits at least this far above the observed share (and at twice it)
UNSEEN_SHARE = 0.01    # tolerated share of category values not seen in the draft's snapshot
MAX_CHANGE = 0.5       # rows per day may move this much between consecutive snapshots
MIN_AGE_HOURS = 24.0   # freshness never tighter than a day
CLASS_FACTOR = 3       # each class keeps at least a third of its observed share

HEADER = """\
# Data contract for `{dataset}`, drafted by `python -m tasks.quality infer` from the snapshot
#   {snapshot}
#   ({rows:,} rows, window {start} .. {end}, fingerprint {fingerprint:.16}).
# Review every line before committing it: the margins are generous guesses, not knowledge.
#   ranges:      the observed min .. max widened by {margin:.0%} of the span on each side (never below 0 when
#                no negative value was seen)
#   NULL shares: twice the observed share, at least {headroom} points above it; none seen -> nullable: false
#   categories:  the values seen; {unseen} unseen values tolerated
# Every rule takes `severity: error` (stops the run; the default) or `severity: warn` (reported only);
# a column takes one severity for all its rules or a map, e.g. `severity: {{range: warn}}`.
"""


def infer_contract(spec: PipelineSpec, snapshot: Path) -> tuple[Contract, dict[str, str]]:
    """A contract the snapshot passes, with margins, and a note per rule saying what was observed.

    Returns:
        (contract, notes): notes are keyed by column name or rule name.

    Raises:
        ContractError: the snapshot is empty or has no window: nothing to learn from.
    """
    manifest = read_manifest(snapshot)
    if not manifest["rows"] or not manifest.get("window"):
        raise ContractError(f"snapshot {snapshot} is empty or has no window: draft from a known-good one")
    types = {f["name"]: f["type"] for f in manifest["schema"]}
    probes = {name: Probe(count_values=kind == "string") for name, kind in types.items()}
    label = (spec.target.column, spec.target.threshold)
    profile = profile_snapshot(snapshot, probes, [spec.key], label, keep_keys=spec.key in types)
    notes: dict[str, str] = {}
    columns = {}
    for name, kind in types.items():
        columns[name], notes[name] = _column(kind, profile.columns[name], ranged=name != spec.key)
    window = tuple(datetime.fromisoformat(manifest["window"][k]) for k in ("start", "end"))
    rules = {**_volume(manifest["rows"], window, notes), **_freshness(spec, profile, window[1], notes),
             **_label(spec, profile, notes)}
    if spec.key in types and duplicate_keys(profile.keys, [spec.key])[0] == 0:
        rules["unique"] = Unique(columns=[spec.key])
    return Contract(dataset=spec.name, columns=columns, **rules), notes


def _volume(rows: int, window: tuple[datetime, ...], notes: dict[str, str]) -> dict[str, Any]:
    per_day = rows / max((window[1] - window[0]).total_seconds() / 86400, 1e-9)
    notes["row_count"] = f"one day of rows at the observed {per_day:,.1f} per day"
    notes["row_count_change"] = "rows per day against the previous snapshot (windows may differ in length)"
    return {"row_count": RowCount(min=_two_digits(per_day)), "row_count_change": RowCountChange(max_change=MAX_CHANGE)}


def _freshness(spec: PipelineSpec, profile: Profile, end: datetime, notes: dict[str, str]) -> dict[str, Any]:
    newest = profile.columns[spec.event_time].high if spec.event_time in profile.columns else None
    if not isinstance(newest, datetime):
        return {}
    age = (end - newest.replace(tzinfo=None)).total_seconds() / 3600
    notes["freshness"] = f"observed: newest event {age:.1f} h before the window end"
    return {"freshness": Freshness(column=spec.event_time, max_age_hours=max(MIN_AGE_HOURS, math.ceil(2 * age)))}


def _label(spec: PipelineSpec, profile: Profile, notes: dict[str, str]) -> dict[str, Any]:
    share = profile.positives / max(profile.labelled, 1)
    notes["label"] = f"observed {pct(share)} positive"
    return {"label": Label(column=spec.target.column, threshold=spec.target.threshold,
                           min_positive_share=_floor2(share / CLASS_FACTOR),
                           max_positive_share=_ceil2(1 - (1 - share) / CLASS_FACTOR))}


def _column(kind: str, col: ColumnProfile, ranged: bool) -> tuple[ColumnContract, str]:
    share = col.nulls / col.rows if col.rows else 0.0
    fields: dict[str, Any] = {"type": kind}
    if share == 0:
        fields["nullable"] = False
    else:
        fields["max_null_share"] = min(1.0, _ceil2(max(2 * share, share + NULL_HEADROOM)))
    note = f"observed {pct(share)} NULL" + (": no values, so no type; set the real one" if kind == "null" else "")
    if ranged and isinstance(col.low, int | float) and isinstance(col.high, int | float):
        fields["min"], fields["max"] = _widen(float(col.low), float(col.high))
        note += f", {col.low:g} .. {col.high:g}"
    if kind == "string" and col.values:
        fields["categories"] = sorted(col.values)
        fields["max_unseen_share"] = UNSEEN_SHARE
        note += f", {len(col.values)} distinct values"
    elif kind == "string":
        note += ", too many distinct values for a category list"
    return ColumnContract(**fields), note


def _widen(low: float, high: float) -> tuple[float, float]:
    span = high - low or abs(high) or 1.0
    step = 10 ** math.floor(math.log10(span)) / 10  # two significant digits of the span
    lo, hi = low - RANGE_MARGIN * span, high + RANGE_MARGIN * span
    if low >= 0:
        lo = max(0.0, lo)
    digits = max(0, -math.floor(math.log10(step)))
    return round(math.floor(lo / step) * step, digits), round(math.ceil(hi / step) * step, digits)


def _floor2(share: float) -> float:
    return math.floor(share * 100) / 100


def _ceil2(share: float) -> float:
    return min(1.0, math.ceil(share * 100 - 1e-9) / 100)


def _two_digits(value: float) -> int:
    if value < 10:
        return max(1, int(value))
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return int(value // scale * scale)


def _scalar(value: Any, in_list: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        # PyYAML reads 1e-05 as a string; a plain decimal is always a float.
        return f"{value:.10f}".rstrip("0")
    if isinstance(value, int):
        return str(value)
    plain = re.fullmatch(r"[A-Za-z_][\w.\-]*" if in_list else r"[A-Za-z_][\w.\-\[\]]*", value)
    # Quoted when YAML would read it as something else: NO and on are booleans, null is None.
    return value if plain and yaml.safe_load(value) == value else json.dumps(value)


def _flow_list(items: list[Any], indent: int, width: int = 100) -> str:
    lines, line, room = [], "[", width - indent
    for i, item in enumerate(items):
        text = _scalar(item, in_list=True) + (", " if i < len(items) - 1 else "]")
        if len(line) + len(text) > room and line.strip() != "[":
            lines.append(line.rstrip())
            line, room = " " * (indent + 1), width
        line += text
    return "\n".join([*lines, line if items else "[]"])


def _block(name: str, fields: dict[str, Any], note: str | None, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}{name}:" + (f"  # {note}" if note else "")]
    for key, value in fields.items():
        text = _flow_list(value, indent + 2 + len(key) + 2) if isinstance(value, list) else _scalar(value)
        lines.append(f"{pad}  {key}: {text}")
    return lines


def render_contract(contract: Contract, notes: dict[str, str], manifest: dict[str, Any], snapshot: Path) -> str:
    """The contract as YAML with a header on how it was drafted and a comment per rule."""
    window = manifest.get("window") or {"start": "?", "end": "?"}
    lines = [HEADER.format(dataset=contract.dataset, snapshot=snapshot, rows=manifest["rows"],
                           start=window["start"], end=window["end"], fingerprint=manifest["fingerprint"],
                           margin=RANGE_MARGIN, headroom=round(NULL_HEADROOM * 100),
                           unseen=pct(UNSEEN_SHARE)).rstrip(), f"dataset: {_scalar(contract.dataset)}", ""]
    for rule in ("row_count", "row_count_change", "freshness", "label", "unique", "unexpected_columns"):
        value = getattr(contract, rule)
        if value is not None:
            lines += _block(rule, value.model_dump(exclude_defaults=True) or value.model_dump(), notes.get(rule))
    lines += ["", "columns:"]
    for name, column in contract.columns.items():
        lines += _block(name, column.model_dump(exclude_defaults=True), notes.get(name), indent=2)
    return "\n".join(lines) + "\n"


def write_draft(spec: PipelineSpec, snapshot: Path, out: Path) -> Contract:
    """Infer a contract from `snapshot` and write it, commented, to `out`."""
    contract, notes = infer_contract(spec, snapshot)
    out.write_text(render_contract(contract, notes, read_manifest(snapshot), snapshot))
    return contract
