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


def reports_on_a_small_disk(args_file: str) -> None:
    """Inside a private mount namespace whose `store` is a small tmpfs: one drift report fits, then the disk is
    (nearly) full and the next run's report cannot be written. Prints what happened as one JSON line."""
    import json
    import os

    from plugins.drift_reports import list_reports
    from tasks.config import PipelineSpec
    from tasks.report import write_run_report

    args = json.loads(Path(args_file).read_text())
    spec = PipelineSpec.model_validate_json(args["spec"])
    store = Path(spec.reports_root)
    run = (args["snapshot"], args["run_id"], args["version"])
    write_run_report(spec, *run, "first_run", dag_id="train_and_deploy")
    disk = os.statvfs(store)
    with (store.parent / "ballast").open("wb") as ballast:  # leave 64 KiB free: less than a report needs
        ballast.write(b"\0" * (disk.f_bavail * disk.f_frsize - 64 * 1024))
    try:
        write_run_report(spec, *run, "disk_full_run", dag_id="train_and_deploy")
        error = None
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        import traceback

        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()  # to stderr: the test shows it when an assertion fails
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    listed = [e.report_id for e in list_reports(store)]
    sizes = {f: (store / f).stat().st_size for f in files}
    print(json.dumps({"error": error, "files": files, "listed": listed, "sizes": sizes}))
