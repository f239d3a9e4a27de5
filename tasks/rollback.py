"""Roll the champion back to an earlier version, after checking that version still loads and answers."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from serving.model import OnnxModel
from tasks import registry, tracking
from tasks.config import PipelineSpec
from tasks.evaluate import download_onnx
from tasks.promotion import move_champion, read_log


class RollbackError(RuntimeError):
    """The rollback target does not exist, already serves, or its artifact is broken."""


def resolve_target(spec: PipelineSpec, target: str) -> str:
    """`previous` (the alias the last promotion left) or a version number, checked to exist."""
    model = spec.registered_model
    if target == registry.PREVIOUS:
        version = registry.alias_version(model, registry.PREVIOUS)
        if version is None:
            raise RollbackError(f"{model} has no `previous` version to roll back to; name a version number")
        return version
    if not target.isdigit():
        raise RollbackError(f"target {target!r} is neither `previous` nor a version number")
    versions = {str(v.version) for v in tracking.client().search_model_versions(f"name='{model}'")}
    if target not in versions:
        raise RollbackError(f"{model} has no version {target} (versions: {', '.join(sorted(versions, key=int))})")
    return target


def check_target(spec: PipelineSpec, version: str) -> dict[str, Any]:
    """Download the version's ONNX file, verify its recorded checksum, load it with the serving code
    and have it answer a row of missing values (every model must; unknown categories included).

    Raises:
        RollbackError: the artifact is missing, altered, unloadable or answers nonsense.
    """
    expected = registry.version_tags(spec.registered_model, version).get("onnx.sha256")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_onnx(spec, version, Path(tmp))
            actual = tracking.file_sha256(path)
            model = OnnxModel.from_file(path, spec.registered_model, version)
            record = {f.name: None for f in model.features}
            probability = float(model.predict_columns(model.columns_from_records([record]))[0])
    except Exception as exc:  # noqa: BLE001 - whatever broke, this version cannot serve
        raise RollbackError(f"version {version} cannot serve: {exc}") from exc
    if actual != expected:
        raise RollbackError(f"version {version}'s artifact was altered after registration "
                            f"(sha256 {actual[:12]}..., recorded {str(expected)[:12]}...)")
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise RollbackError(f"version {version} answered {probability}, not a probability")
    return {"version": version, "sha256": actual, "probability_of_empty_row": probability}


def rollback(spec: PipelineSpec, target: str, justification: str, user: str | None,
             dag_run_id: str) -> dict[str, Any]:
    """Check the target, then move `champion` to it (the current one becomes `previous`) and log it.

    Raises:
        RollbackError: no justification, the target is unknown or already the champion, or it cannot serve.
    """
    if len((justification or "").strip()) < 10:
        raise RollbackError("a rollback needs a justification of at least 10 characters")
    version = resolve_target(spec, target)
    current = registry.champion_version(spec.registered_model)
    if version == current:
        done = [e for e in read_log(spec) if e["dag_run_id"] == dag_run_id and e["to_version"] == version]
        if done:  # a retried task whose move already happened
            return done[-1]
        raise RollbackError(f"version {version} is already the champion")
    check_target(spec, version)
    return move_champion(spec, version, "rollback", dag_run_id, "rollback", f"rollback from v{current}",
                         justification.strip(), user)

