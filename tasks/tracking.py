"""MLflow as a service with a clear scope: tracking URI, experiment, artifact location."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from tasks import settings


def use_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Point MLflow at the tracking store and return the experiment id, creating it if needed.

    On a local store the experiment gets an explicit artifact location under STATE_DIR, so
    artifacts never land in the working directory.
    """
    uri = tracking_uri or settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        location = (settings.mlflow_artifact_root() / name).as_uri()
        Path(settings.mlflow_artifact_root()).mkdir(parents=True, exist_ok=True)
    return str(mlflow.create_experiment(name, artifact_location=location))


def client() -> MlflowClient:
    return MlflowClient()


def config_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_version() -> str:
    """The git commit of the code that ran (`+dirty` with uncommitted changes); outside a git checkout
    (an image, a wheel), a hash of the pipeline's own sources."""
    root = settings.REPO_ROOT
    git = shutil.which("git")
    if git and (root / ".git").exists():
        def run(*args: str) -> str:
            return subprocess.run([git, *args], cwd=root, capture_output=True, text=True, check=False).stdout.strip()
        commit = run("rev-parse", "HEAD")
        if commit:
            dirty = run("status", "--porcelain", "--untracked-files=no", "--", "tasks", "dags", "serving", "config")
            return commit + ("+dirty" if dirty else "")
    digest = hashlib.sha256()
    for path in sorted((root / "tasks").glob("*.py")):
        digest.update(path.read_bytes())
    return f"src-{digest.hexdigest()[:12]}"
