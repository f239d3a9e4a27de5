"""Targets for child processes of the fault tests (a module without conftest's side effects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train_forever(snapshot: str, lineage: dict[str, str]) -> None:
    """Trains for far longer than the test waits: it is killed mid-epoch."""
    from tasks.config import load_spec
    from tasks.train import train_model

    spec = load_spec().model_copy(update={"name": "faults_test", "registered_model": "faults_test_model"})
    train_model(spec, Path(snapshot), {"passed": True}, {"epochs": 200}, lineage=lineage)


def extract(args: tuple[Any, ...]) -> str:
    from tasks.extract import extract_snapshot

    spec, window, url, root = args
    return str(extract_snapshot(spec, window, url, root)["fingerprint"])
