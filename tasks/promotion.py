"""Moving alias `champion` (promotion or rollback) and the append-only promotion log.

The alias move is the last step and one registry call, so any failure before it leaves the champion
as it was; a retried move is idempotent and is logged once. The log is a JSON-lines file in the
reports store plus one tag per entry on the registered model, so either survives losing the other.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tasks import registry, tracking
from tasks.config import PipelineSpec

log = logging.getLogger(__name__)
LOG_FILE = "promotions.jsonl"
TAG_PREFIX = "promotion."


def log_path(spec: PipelineSpec) -> Path:
    return spec.reports_root_path / LOG_FILE


def read_log(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Every alias move, oldest first."""
    path = log_path(spec)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(spec: PipelineSpec, entry: dict[str, Any]) -> None:
    path = log_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:  # append-only: earlier lines are never rewritten
        out.write(json.dumps(entry, sort_keys=True) + "\n")
    key = TAG_PREFIX + re.sub(r"[^0-9T]", "", entry["time"].split("+")[0])  # promotion.20131106T030000123456
    tracking.client().set_registered_model_tag(spec.registered_model, key, json.dumps(entry, sort_keys=True))


def _training_tags(spec: PipelineSpec, version: str) -> dict[str, str]:
    run_id = tracking.client().get_model_version(spec.registered_model, version).run_id
    return dict(tracking.client().get_run(run_id).data.tags) if run_id else {}


def move_champion(spec: PipelineSpec, version: str, kind: Literal["promote", "rollback"], dag_run_id: str,
                  mode: str, verdict_status: str, justification: str | None = None,
                  user: str | None = None) -> dict[str, Any]:
    """Point `champion` at `version` (the former champion keeps `previous`) and log the move.

    Returns:
        The log entry (an existing one when a retry finds the move already done and logged).
    """
    model = spec.registered_model
    done = [e for e in read_log(spec) if e["dag_run_id"] == dag_run_id and e["to_version"] == version
            and e["kind"] == kind]
    current = registry.champion_version(model)
    if current == version and done:
        log.info("%s of %s to version %s was already done and logged by %s", kind, model, version, dag_run_id)
        return done[-1]
    moved = registry.promote(model, version)  # the single call that changes what is served
    # A retry after a crash between the move and the log: the move happened, `previous` says from where.
    source = moved["previous"] if moved["changed"] == "yes" else registry.alias_version(model, registry.PREVIOUS)
    tags = _training_tags(spec, version)
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="microseconds"), "kind": kind, "model": model,
        "from_version": source, "to_version": version, "verdict": verdict_status, "mode": mode,
        "justification": justification, "user": user, "dag_run_id": dag_run_id,
        "data_fingerprint": tags.get("data.fingerprint"), "code_version": tags.get("code.version"),
    }
    _append(spec, entry)
    log.info("%s: %s champion v%s -> v%s (%s)", kind, model, source, version, verdict_status)
    return entry


def promote_verdict(spec: PipelineSpec, verdict: dict[str, Any], dag_run_id: str) -> dict[str, Any]:
    """Carry out a gate verdict whose `promote` is true."""
    return move_champion(spec, verdict["candidate"], "promote", dag_run_id, verdict["mode"], verdict["status"],
                         verdict.get("justification"), verdict.get("user"))
