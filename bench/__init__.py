"""Benchmarks of the snapshot extract: against pandas on SQLite (bench.sqlite) and against pandas
and the COPY ceiling on PostgreSQL (bench.extract). Every timed run is a fresh child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tasks import settings


def run_child(variant: str, start: str, end: str, db_url: str, out: Path, query: str = "spec") -> dict[str, float]:
    """One run of bench._child in a fresh interpreter, so its peak RSS is its own.

    `query`: `spec` (the flights spec's join query and airports file) or `table` (flights alone).
    """
    env = {**os.environ, "BENCH_QUERY": query, "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.REPO_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench._child", variant, start, end, db_url, str(out)],
        capture_output=True, text=True, env=env, cwd=settings.REPO_ROOT, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench child {variant} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
