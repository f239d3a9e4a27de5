"""The data contract check: fail closed, with one readable sentence per broken rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from tasks.config import PipelineSpec
from tasks.snapshot import read_manifest, read_snapshot


class QualityError(RuntimeError):
    """The snapshot breaks the contract; the message lists every broken rule."""


def _check(rule: str, column: str | None, observed: Any, expected: str, passed: bool,
           reason: str) -> dict[str, Any]:
    return {"rule": rule, "column": column, "observed": observed, "expected": expected,
            "passed": bool(passed), "severity": "error", "reason": "" if passed else reason}


def required_columns(spec: PipelineSpec) -> list[str]:
    return list(dict.fromkeys([spec.key, spec.event_time, spec.target.column, *spec.features.all]))


def evaluate_contract(spec: PipelineSpec, snapshot: Path) -> dict[str, Any]:
    """Evaluate every contract rule on a snapshot and return the result document."""
    manifest = read_manifest(snapshot)
    present = {f["name"] for f in manifest["schema"]}
    contract = spec.contract
    checks = [_check("min_rows", None, manifest["rows"], f">= {contract.min_rows}",
                     manifest["rows"] >= contract.min_rows,
                     f"{manifest['rows']} rows, at least {contract.min_rows} required")]
    for col in required_columns(spec):
        checks.append(_check("column_present", col, col in present, "present", col in present,
                             f"column `{col}` is missing from the snapshot"))
    table = read_snapshot(snapshot, [c for c in required_columns(spec) if c in present])
    rows = max(table.num_rows, 1)
    for col, limit in contract.max_null_share.items():
        if col not in present:
            continue
        # NaN became NULL when the batch went to Arrow, so null_count covers both.
        share = table.column(col).null_count / rows
        checks.append(_check("max_null_share", col, round(share, 6), f"<= {limit}", share <= limit,
                             f"column `{col}`: {share:.1%} NULL, at most {limit:.1%} allowed"))
    if spec.target.column in present and table.num_rows:
        labels = table.column(spec.target.column).drop_null()
        positive = pc.sum(pc.greater_equal(labels, spec.target.threshold)).as_py() or 0
        share = positive / max(len(labels), 1)
        low, high = contract.min_positive_share, contract.max_positive_share
        checks.append(_check("positive_share", spec.target.column, round(share, 6),
                             f"between {low} and {high}", low <= share <= high,
                             f"label `{spec.target.column} >= {spec.target.threshold}`: "
                             f"{share:.1%} positive, expected {low:.0%} to {high:.0%}"))
    failures = [c["reason"] for c in checks if not c["passed"]]
    return {"passed": not failures, "fingerprint": manifest["fingerprint"], "rows": manifest["rows"],
            "checks": checks, "failures": failures}


def check_quality(spec: PipelineSpec, snapshot: Path) -> dict[str, Any]:
    """Check the contract and raise when any error-severity rule fails.

    Raises:
        QualityError: one sentence per failed rule, e.g. "column `distance`: 3.2% NULL, ...".
    """
    result = evaluate_contract(spec, snapshot)
    if not result["passed"]:
        raise QualityError("data contract failed: " + "; ".join(result["failures"]))
    return result
