"""Fault 10: the reports store runs out of space while a run writes its drift report.

A real ENOSPC, no fake: the store is a small tmpfs mounted in a private mount namespace of a child
process (`unshare --user --map-root-user --mount`, no root needed where user namespaces are allowed;
the mount is invisible to the rest of the machine and vanishes with the child). The child writes one
report that fits, fills the disk, writes the next run's report, and lists the store with the Airflow
plugin's own listing function.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import JUNE_WEEK

from tasks.extract import extract_snapshot
from tasks.train import train_model

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MOUNT = 'mount -t tmpfs -o size=8m tmpfs "$1" && shift && exec "$@"'


def _can_mount_tmpfs(tmp: Path) -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh", str(tmp),
                            "true"], capture_output=True)
    return probe.returncode == 0


def test_10_a_full_reports_disk_fails_the_run_clearly_and_lists_no_half_report(spec, sqlite_url, tmp_path):
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("this kernel refuses a user+mount namespace (unshare -rm): no tmpfs, no real ENOSPC")
    disk = tmp_path / "disk"
    disk.mkdir()
    own = spec.model_copy(update={"name": "disk_full_test", "registered_model": "disk_full_model",
                                  "reports_root": str(disk / "reports")})
    snapshot = extract_snapshot(own, JUNE_WEEK, sqlite_url, tmp_path / "data")["path"]
    candidate = train_model(own, Path(snapshot), {"passed": True}, {"epochs": 1})
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"spec": own.model_dump_json(), "snapshot": str(snapshot),
                                "run_id": candidate["run_id"], "version": candidate["model_version"]}))
    script = (f"import sys; sys.path[:0] = [{str(HERE)!r}]; import _workers; "
              "_workers.reports_on_a_small_disk(sys.argv[1])")

    child = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh", str(disk),
                            sys.executable, "-c", script, str(args)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)

    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    # The run fails with the system's own reason (in Airflow: drift_report fails, its alert line carries it).
    assert re.fullmatch(r"OSError: \[Errno 28\] No space left on device: cannot write /\S+/report\.html",
                        result["error"]), (result["error"], child.stderr[-3000:])
    assert "in publish" in child.stderr  # the traceback shows it was the copy into the reports store
    # No half report: nothing of the failed run is listed, nor left behind (its temp file is removed, its folder
    # holds nothing); the earlier report is intact.
    assert result["listed"] == ["first_run"]
    assert result["files"] == ["first_run/report.html", "first_run/summary.json"], result["files"]
    assert result["sizes"]["first_run/report.html"] > 1_000_000
    assert not any(disk.iterdir())  # the tmpfs lived only in the child's namespace
