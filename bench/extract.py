"""One timed extract in this (fresh) process; prints rows, wall/CPU seconds and extra peak RSS as JSON."""

from __future__ import annotations

import json
import re
import resource
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

# Both variants import the same modules before the RSS baseline, so the delta is the work alone.
import pandas as pd
import pyarrow.parquet  # noqa: F401 - to_parquet's engine, loaded before the baseline RSS
import sqlalchemy as sa

from tasks.config import PipelineSpec, expand, load_spec
from tasks.extract import extract_snapshot
from tasks.snapshot import Window


def baseline(spec: PipelineSpec, window: Window, db_url: str, out: Path) -> int:
    """What a typical reference repo does: the whole window in one DataFrame, merge, to_parquet."""
    engine = sa.create_engine(db_url)
    try:
        df = pd.read_sql(sa.text(spec.sql_source.query), engine,
                         params={"start": window.start, "end": window.end},
                         parse_dates=[spec.event_time])
    finally:
        engine.dispose()
    for source in spec.file_sources:
        lookup = pd.read_csv(expand(source.path))[[source.join.right_on, *source.join.columns]]
        df = df.merge(lookup.rename(columns=source.join.columns), how="left",
                      left_on=source.join.left_on, right_on=source.join.right_on)
        df = df.drop(columns=[source.join.right_on])
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "snapshot.parquet", index=False)
    return len(df)


def ours(spec: PipelineSpec, window: Window, db_url: str, out: Path) -> int:
    return int(extract_snapshot(spec, window, db_url, data_root=out)["rows"])


def maxrss_mb() -> float:
    """This process's peak RSS in MB.

    VmHWM, not ru_maxrss: after fork+exec ru_maxrss keeps the parent's peak (the seeding parent
    holds hundreds of MB), which would hide any child that peaks below it.
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    except OSError:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def main(argv: list[str]) -> None:
    variant, start, end, db_url, out = argv
    spec = load_spec()
    window = Window(datetime.fromisoformat(start), datetime.fromisoformat(end))
    run = {"baseline": baseline, "ours": ours}[variant]
    # A leftover snapshot would let ours skip its publish: every run starts from an empty folder.
    shutil.rmtree(out, ignore_errors=True)
    before = maxrss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    rows = run(spec, window, db_url, Path(out))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "peak_mb": maxrss_mb() - before}))


if __name__ == "__main__":
    main(sys.argv[1:])
