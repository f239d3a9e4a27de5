"""`python -m bench.sqlite`: the snapshot extract against the pandas baseline on SQLite."""

from __future__ import annotations

import os
import platform
import statistics
import time

from bench import run_child
from tasks import seed, settings

REPEATS = 3
WORKLOADS = {  # name -> half-open window [start, end) in 2013 local time
    "3 months (Apr-Jun)": ("2013-04-01T00:00", "2013-07-01T00:00"),
    "whole year 2013": ("2013-01-01T00:00", "2014-01-01T00:00"),
}
VARIANTS = ("baseline", "ours")


def main() -> None:
    began = time.perf_counter()
    # Its own database under STATE_DIR: the demo's may hold only a few months.
    work = settings.state_dir() / "bench"
    db_url = f"sqlite:///{work / 'flights.db'}"
    seed.seed_database(db_url)  # a no-op when the tables already hold the whole year
    seed.write_landing_files(settings.state_dir())

    print(f"machine: {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}, "
          f"{platform.platform()}; SQLite at {work / 'flights.db'}")
    print(f"time: best of {REPEATS} runs; peak: median extra max RSS of {REPEATS} fresh processes "
          "over the same process just after its imports\n")
    print("| workload | rows | baseline s | ours s | speed ratio | baseline peak MB | ours peak MB "
          "| memory ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    cpu_notes = []
    for name, (start, end) in WORKLOADS.items():
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for _ in range(REPEATS):  # interleaved, so drift in the machine hits both variants alike
            for variant in VARIANTS:
                runs[variant].append(run_child(variant, start, end, db_url, work / "out" / variant))
        rows = {v: {int(r["rows"]) for r in rs} for v, rs in runs.items()}
        if rows["baseline"] != rows["ours"] or len(rows["ours"]) != 1:
            raise SystemExit(f"{name}: row counts disagree: {rows}")
        secs = {v: min(r["seconds"] for r in rs) for v, rs in runs.items()}
        cpu = {v: min(r["cpu"] for r in rs) for v, rs in runs.items()}
        cpu_notes.append(f"{name} {cpu['baseline']:.2f} vs {cpu['ours']:.2f}")
        peak = {v: statistics.median(r["peak_mb"] for r in rs) for v, rs in runs.items()}
        print(f"| {name} | {rows['ours'].pop():,} | {secs['baseline']:.2f} | {secs['ours']:.2f} "
              f"| {secs['baseline'] / secs['ours']:.2f}x | {peak['baseline']:.0f} | {peak['ours']:.0f} "
              f"| {peak['baseline'] / max(peak['ours'], 1e-9):.2f}x |")
    # CPU time barely moves when other jobs share the cores; wall time does.
    print(f"\nCPU s, baseline vs ours (best of {REPEATS}): " + "; ".join(cpu_notes))
    print(f"ratios > 1 favour ours; total bench time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
