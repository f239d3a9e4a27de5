"""The data contract check: fail closed, with one readable sentence per broken rule.

    python -m tasks.quality check --snapshot PATH [--contract FILE]   # the table; exit 1 on an error
    python -m tasks.quality infer --snapshot PATH --out contract.yaml # a draft to review and commit
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from tasks import rules
from tasks.config import PipelineSpec, SpecError, as_path, load_spec
from tasks.contract import Contract, ContractError, ensure_fits, load_contract
from tasks.contract_infer import write_draft
from tasks.profile import Probe, profile_snapshot
from tasks.snapshot import read_manifest


class QualityError(RuntimeError):
    """The snapshot breaks an error-severity rule; the message has one sentence per broken rule."""


def _judge(contract: Contract, snapshot: Path, manifest: dict[str, Any]) -> list[rules.Outcome]:
    types = {f["name"]: f["type"] for f in manifest["schema"]}
    probes = {name: Probe(low=c.min, high=c.max, allowed=frozenset(c.categories) if c.categories else None)
              for name, c in contract.columns.items() if name in types}
    key = contract.unique.columns if contract.unique else []
    label = (contract.label.column, contract.label.threshold) if contract.label else None
    profile = profile_snapshot(snapshot, probes, key, label, keep_keys=bool(key))
    outcomes = [*rules.row_count(contract, manifest["rows"]),
                *rules.row_count_change(contract, snapshot, manifest),
                *rules.freshness(contract, profile, manifest)]
    for name, column in contract.columns.items():
        outcomes += rules.column_rules(name, column, types.get(name), profile.columns.get(name))
    return [*outcomes, *rules.unexpected_columns(contract, list(types)),
            *rules.unique(contract, profile, list(types)), *rules.label_balance(contract, profile)]


def evaluate(contract: Contract, contract_path: Path, snapshot: Path) -> dict[str, Any]:
    """Judge a snapshot by a contract in one streaming pass; bad data is a result, not an exception.

    Returns:
        The result document: passed, snapshot, fingerprint, rows, window, contract {path, sha256},
        every rule (rule, column, observed, expected, passed, severity, reason, examples), and the
        failure sentences: error ones under `failures`, warn ones under `warnings`.
    """
    manifest = read_manifest(snapshot)
    outcomes = _judge(contract, snapshot, manifest)
    broken = [o for o in outcomes if not o.passed]
    return {
        "passed": not any(o.severity == "error" for o in broken),
        "snapshot": str(snapshot), "fingerprint": manifest["fingerprint"], "rows": manifest["rows"],
        "window": manifest.get("window"),
        "contract": {"path": str(contract_path), "sha256": hashlib.sha256(contract_path.read_bytes()).hexdigest()},
        "rules": [o.as_dict() for o in outcomes],
        "failures": [f"[{o.rule}] {o.reason}" for o in broken if o.severity == "error"],
        "warnings": [f"[{o.rule}] {o.reason}" for o in broken if o.severity == "warn"],
    }


def evaluate_contract(spec: PipelineSpec, snapshot: Path) -> dict[str, Any]:
    """Judge a snapshot by the spec's contract (see `evaluate`).

    Raises:
        ContractError: the contract file is invalid or does not describe what the spec uses.
    """
    contract = load_contract(spec.contract_path)
    ensure_fits(contract, spec)
    return evaluate(contract, spec.contract_path, snapshot)


def summary(result: dict[str, Any]) -> str:
    """The error sentences, one per line, under a headline naming the contract and the snapshot."""
    name = Path(result["contract"]["path"]).name
    lines = [f"data contract {name} failed on {Path(result['snapshot']).name} "
             f"({len(result['failures'])} error(s)):", *(f"- {s}" for s in result["failures"])]
    return "\n".join(lines)


def raise_for_failures(result: dict[str, Any]) -> dict[str, Any]:
    """Pass the result through, or raise when an error-severity rule failed.

    Raises:
        QualityError: `summary(result)`, e.g. "- [nulls] column `distance`: 3.2% NULL (...), at most 0.1% allowed".
    """
    if not result["passed"]:
        raise QualityError(summary(result))
    return result


def check_quality(spec: PipelineSpec, snapshot: Path) -> dict[str, Any]:
    """Check a snapshot against the spec's contract; raise when an error-severity rule fails.

    Raises:
        QualityError: one sentence per failed error rule, each naming the rule and the column.
        ContractError: the contract itself is invalid.
    """
    return raise_for_failures(evaluate_contract(spec, snapshot))


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(result: dict[str, Any]) -> str:
    """A headline, the failure and warning sentences, then every rule as a fixed-width table."""
    status = "PASSED" if result["passed"] else "FAILED"
    lines = [f"data contract {Path(result['contract']['path']).name} on {Path(result['snapshot']).name}: "
             f"{result['rows']:,} rows, {status} ({len(result['failures'])} error(s), "
             f"{len(result['warnings'])} warning(s))"]
    for title, sentences in (("errors", result["failures"]), ("warnings", result["warnings"])):
        if sentences:
            lines += [f"{title}:", *(f"  {s}" for s in sentences)]
    widths = (6, 5, 18, 20, 44, 40)
    rows = [("result", "sev", "rule", "column", "observed", "expected")]
    for r in result["rules"]:
        verdict = "ok" if r["passed"] else ("FAIL" if r["severity"] == "error" else "WARN")
        rows.append((verdict, r["severity"], r["rule"], r["column"], r["observed"], r["expected"]))
    lines += ["  ".join(_cell(v, w).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.quality", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a snapshot; exit 1 when an error rule fails")
    check.add_argument("--contract", type=Path, help="contract YAML (default: the pipeline spec's)")
    infer = commands.add_parser("infer", help="draft a contract from a known-good snapshot")
    infer.add_argument("--out", type=Path, required=True, help="where to write the draft contract")
    for sub in (check, infer):
        sub.add_argument("--snapshot", required=True, help="snapshot folder (or fsspec URL)")
        sub.add_argument("--spec", type=Path, help="pipeline spec (default: PIPELINE_CONFIG or config/flights.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the snapshot passes (or a draft was written), 1 on an error rule, 2 on bad input."""
    args = _parser().parse_args(argv)
    snapshot = as_path(args.snapshot)
    try:
        if args.command == "infer":
            write_draft(load_spec(args.spec), snapshot, args.out)
            print(f"draft contract written to {args.out}: review it, then point the spec's `contract:` at it")
            return 0
        if args.contract is not None:
            result = evaluate(load_contract(args.contract), args.contract, snapshot)
        else:
            result = evaluate_contract(load_spec(args.spec), snapshot)
    except (ContractError, SpecError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
