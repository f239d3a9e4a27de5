"""Contract rules judged on a snapshot's profile: one outcome per rule, one sentence per failure."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tasks.contract import ColumnContract, ColumnRule, Contract, Severity
from tasks.profile import ColumnProfile, Profile, duplicate_keys
from tasks.snapshot import MANIFEST, read_manifest

SLUG = re.compile(r"^(\d{8}T\d{4})_(\d{8}T\d{4})$")  # snapshot folder names: <start>_<end>
Make = Callable[..., "Outcome"]  # builds a column's outcome with that column's severity for the rule


@dataclass(frozen=True)
class Outcome:
    """One rule on one snapshot. `reason` is the sentence an analyst reads when it failed."""

    rule: str
    column: str | None
    observed: Any
    expected: str
    passed: bool
    severity: Severity
    reason: str = ""
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # Example rows may hold timestamps or decimals: the document stays plain JSON.
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self), default=str))
        return {**plain, "reason": "" if self.passed else self.reason}


def pct(share: float) -> str:
    """3.2%, 0.0%, or 0.014% for shares too small for one decimal."""
    value = share * 100
    return f"{value:.1f}%" if value == 0 or value >= 0.1 else f"{value:.2g}%"


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def column_rules(name: str, contract: ColumnContract, observed_type: str | None,
                 col: ColumnProfile | None) -> list[Outcome]:
    """present, type, nulls, range, categories; nothing more for a missing column."""
    def outcome(rule: ColumnRule, observed: Any, expected: str, passed: bool, reason: str,
                examples: list[dict[str, Any]] | None = None) -> Outcome:
        return Outcome(rule, name, observed, expected, passed, contract.severity_of(rule), reason, examples or [])

    if observed_type is None or col is None:
        return [outcome("present", "missing", "present", False, f"column `{name}` is missing from the snapshot")]
    # A column with no values at all has Arrow type `null`; its NULLs are the nulls rule's business.
    type_ok = observed_type in (contract.type, "null")
    found = [outcome("present", "present", "present", True, ""),
             outcome("type", observed_type, contract.type, type_ok,
                     f"column `{name}`: type {observed_type}, {contract.type} expected")]
    share = _share(col.nulls, col.rows)
    if contract.null_limit is not None:
        found.append(outcome("nulls", f"{pct(share)} ({col.nulls:,} rows)", f"<= {pct(contract.null_limit)}",
                             share <= contract.null_limit,
                             f"column `{name}`: {pct(share)} NULL ({col.nulls:,} of {col.rows:,} rows), "
                             f"at most {pct(contract.null_limit)} allowed", col.examples.get("nulls")))
    # Bounds are numbers: a column that is no longer numeric already fails `type`.
    numeric = isinstance(col.low, int | float | Decimal) or (type_ok and col.low is None)
    if (contract.min is not None or contract.max is not None) and numeric:
        found.append(_range(outcome, name, contract, col))
    if contract.categories is not None:
        found.append(_categories(outcome, name, contract, col))
    return found


def _range(outcome: Make, name: str, contract: ColumnContract, col: ColumnProfile) -> Outcome:
    bounds = f"[{_num(contract.min, '-inf')}, {_num(contract.max, 'inf')}]"
    seen = f"{_num(col.low)} .. {_num(col.high)}" if col.low is not None else "no values"
    share = _share(col.out_of_range, col.rows - col.nulls)
    return outcome("range", f"{seen}, {col.out_of_range:,} outside", f"within {bounds}", col.out_of_range == 0,
                   f"column `{name}`: {col.out_of_range:,} values ({pct(share)}) outside {bounds}, "
                   f"observed {seen}", col.examples.get("range"))


def _num(value: Any, unbounded: str = "") -> str:
    return unbounded if value is None else f"{value:g}"


def _categories(outcome: Make, name: str, contract: ColumnContract, col: ColumnProfile) -> Outcome:
    share = _share(col.unseen, col.rows - col.nulls)
    examples = col.examples.get("categories", [])
    seen = ", ".join(sorted({repr(str(e[name])) for e in examples}))
    assert contract.categories is not None
    return outcome("categories", f"{pct(share)} unseen ({col.unseen:,} rows)",
                   f"{len(contract.categories)} known values, <= {pct(contract.max_unseen_share)} unseen",
                   share <= contract.max_unseen_share,
                   f"column `{name}`: {pct(share)} unseen values (e.g. {seen}), "
                   f"at most {pct(contract.max_unseen_share)} allowed", examples)


def unexpected_columns(contract: Contract, names: list[str]) -> list[Outcome]:
    """Columns the contract does not describe: a renamed column shows as missing + unexpected."""
    if contract.unexpected_columns is None:
        return []
    extra = [n for n in names if n not in contract.columns]
    listed = ", ".join(f"`{n}`" for n in extra)
    return [Outcome("unexpected_columns", ", ".join(extra) or None, listed or "none", "only contract columns",
                    not extra, contract.unexpected_columns.severity,
                    f"column(s) {listed} not in the contract (renamed, or new and unchecked)")]


def row_count(contract: Contract, rows: int) -> list[Outcome]:
    rule = contract.row_count
    if rule is None:
        return []
    return [Outcome("row_count", None, rows, f">= {rule.min:,}", rows >= rule.min, rule.severity,
                    f"snapshot: {rows:,} rows, at least {rule.min:,} required")]


def unique(contract: Contract, profile: Profile, present: list[str]) -> list[Outcome]:
    rule = contract.unique
    if rule is None:
        return []
    named = ", ".join(f"`{c}`" for c in rule.columns)
    missing = [c for c in rule.columns if c not in present]
    if missing:  # reported by the `present` rule already; here only why uniqueness is unknown
        return [Outcome("unique", ", ".join(rule.columns), "key column missing", "unique", False, rule.severity,
                        f"key ({named}): cannot check uniqueness, column(s) {missing} missing")]
    extra, examples = duplicate_keys(profile.keys, rule.columns)
    shown = ", ".join(" ".join(f"{c}={e[c]}" for c in rule.columns) + f" ({e['rows']} rows)" for e in examples[:3])
    return [Outcome("unique", ", ".join(rule.columns), f"{extra:,} duplicate rows", "unique", extra == 0,
                    rule.severity, f"key ({named}): {extra:,} duplicate rows, e.g. {shown}", examples)]


def _window(manifest: dict[str, Any]) -> tuple[datetime, datetime] | None:
    window = manifest.get("window")
    if not window:
        return None
    return datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])


def freshness(contract: Contract, profile: Profile, manifest: dict[str, Any]) -> list[Outcome]:
    rule = contract.freshness
    if rule is None:
        return []
    expected = f"<= {rule.max_age_hours:g} h before the window end"
    newest = profile.columns[rule.column].high if rule.column in profile.columns else None
    window = _window(manifest)
    if newest is None or window is None or not isinstance(newest, datetime):
        why = "no window in the manifest" if window is None else "no event times"
        return [Outcome("freshness", rule.column, why, expected, False, rule.severity,
                        f"column `{rule.column}`: {why}, so the data's age is unknown")]
    age = (window[1] - newest.replace(tzinfo=None)).total_seconds() / 3600
    return [Outcome("freshness", rule.column, f"newest {newest:%Y-%m-%d %H:%M}, {age:.1f} h old", expected,
                    age <= rule.max_age_hours, rule.severity,
                    f"column `{rule.column}`: newest event {newest:%Y-%m-%d %H:%M} is {age:.1f} h before the "
                    f"window end {window[1]:%Y-%m-%d %H:%M}, at most {rule.max_age_hours:g} h allowed")]


def label_balance(contract: Contract, profile: Profile) -> list[Outcome]:
    rule = contract.label
    if rule is None:
        return []
    share = _share(profile.positives, profile.labelled)
    bounds = f"{pct(rule.min_positive_share)} .. {pct(rule.max_positive_share)} positive, both classes"
    observed = f"{pct(share)} positive ({profile.positives:,} of {profile.labelled:,})"
    label = f"`{rule.column}` >= {rule.threshold:g}"
    if profile.positives in (0, profile.labelled):
        reason = (f"column `{rule.column}`: only one class, {profile.positives:,} of {profile.labelled:,} "
                  f"labelled rows have {label}" if profile.labelled else f"column `{rule.column}`: no labelled rows")
        return [Outcome("label_balance", rule.column, observed, bounds, False, rule.severity, reason)]
    ok = rule.min_positive_share <= share <= rule.max_positive_share
    return [Outcome("label_balance", rule.column, observed, bounds, ok, rule.severity,
                    f"column `{rule.column}`: {pct(share)} of labelled rows have {label}, expected "
                    f"{pct(rule.min_positive_share)} to {pct(rule.max_positive_share)}")]


def previous_snapshot(snapshot: Path, end: datetime) -> Path | None:
    """The published sibling snapshot (same pipeline, same data root) with the latest end before `end`."""
    candidates = []
    for sibling in snapshot.parent.iterdir():
        match = SLUG.match(sibling.name)
        if match and sibling.name != snapshot.name:
            start_at, end_at = (datetime.strptime(g, "%Y%m%dT%H%M") for g in match.groups())
            if end_at < end:
                candidates.append((end_at, start_at, sibling))
    for _, _, path in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
        if (path / MANIFEST).exists():  # a folder without manifest was never published
            return path
    return None


def row_count_change(contract: Contract, snapshot: Path, manifest: dict[str, Any]) -> list[Outcome]:
    rule = contract.row_count_change
    if rule is None:
        return []
    expected = f"rows/day within ±{pct(rule.max_change)} of the previous"
    window = _window(manifest)
    previous = previous_snapshot(snapshot, window[1]) if window else None
    if window is None or previous is None:
        observed = "no previous snapshot" if window else "no window in the manifest"
        return [Outcome("row_count_change", None, observed, expected, True, rule.severity)]
    before = read_manifest(previous)
    now, then = _per_day(manifest["rows"], window), _per_day(before["rows"], _window(before) or window)
    change = now / then - 1 if then else float("inf")
    return [Outcome("row_count_change", None, f"{now:,.1f}/day vs {then:,.1f}/day ({change:+.1%})", expected,
                    abs(change) <= rule.max_change, rule.severity,
                    f"snapshot: {now:,.1f} rows per day, {change:+.1%} against {then:,.1f} in the previous "
                    f"snapshot {previous.name}, at most ±{pct(rule.max_change)} allowed")]


def _per_day(rows: int, window: tuple[datetime, datetime]) -> float:
    return rows / ((window[1] - window[0]).total_seconds() / 86400)
