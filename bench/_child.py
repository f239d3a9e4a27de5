"""One timed extract in this (fresh) process; prints rows, wall/CPU seconds and peak RSS as JSON.

`python -m bench._child VARIANT START END DB_URL OUT`, started by bench/sqlite.py and
bench/extract.py (never by hand). BENCH_QUERY picks the query: `spec` (default: the flights spec's
join query plus its airports file) or `table` (the flights table alone, the issue's benchmark).
Variants:
    ours      tasks.extract.extract_snapshot (what the pipeline runs)
    baseline  pandas.read_sql + merge with the file sources + to_parquet (what users write today)
    copy      PostgreSQL only: `COPY (query) TO STDOUT` through psycopg 3 into a null sink, the
              window inlined as timestamp literals (the ceiling: no conversion, no Parquet)
    copy-binary  the same with (FORMAT binary), the wire format the extractor reads (context only)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

# Every variant imports the same modules before the RSS baseline, so the delta is the work alone.
import pandas as pd
import pyarrow.parquet  # noqa: F401 - to_parquet's engine, loaded before the baseline RSS
import sqlalchemy as sa

from tasks.config import PipelineSpec, SqlSource, expand, load_spec
from tasks.extract import extract_snapshot
from tasks.snapshot import Window

with contextlib.suppress(ImportError):  # PostgreSQL drivers: absent is fine for the SQLite bench
    import psycopg
    import psycopg2  # noqa: F401 - SQLAlchemy's postgresql+psycopg2 driver
with contextlib.suppress(ImportError):  # the extractor loads it lazily
    import duckdb  # noqa: F401

# `:start` / `:end` bind parameters, not `::type` casts.
_PARAM = re.compile(r"(?<![:\w]):(start|end)\b")


# The flights table over the window, in a deterministic order (the fingerprint depends on row order):
# the index on scheduled_departure gives that order, an incremental sort breaks ties by id.
TABLE_QUERY = ("SELECT * FROM flights WHERE scheduled_departure >= :start AND scheduled_departure < :end "
               "ORDER BY scheduled_departure, flight_id")


def bench_spec(query: str) -> PipelineSpec:
    """The flights spec, or (`table`) the same spec reading the flights table alone."""
    spec = load_spec()
    if query == "spec":
        return spec
    if query != "table":
        raise SystemExit(f"BENCH_QUERY={query!r}: expected `spec` or `table`")
    assert isinstance(spec.primary, SqlSource)
    return spec.model_copy(update={"sources": [spec.primary.model_copy(update={"query": TABLE_QUERY})]})


def sql_query(spec: PipelineSpec) -> str:
    """The spec's SQL query (the benchmarks run the flights spec, whose first source is SQL)."""
    assert isinstance(spec.primary, SqlSource)
    return spec.primary.query


def baseline(spec: PipelineSpec, window: Window, db_url: str, out: Path) -> int:
    """What a typical reference repo does: the whole window in one DataFrame, merge, to_parquet."""
    engine = sa.create_engine(db_url)
    try:
        df = pd.read_sql(sa.text(sql_query(spec)), engine,
                         params={"start": window.start, "end": window.end},
                         parse_dates=[spec.event_time])
    finally:
        engine.dispose()
    for source in spec.lookups:
        assert source.join is not None  # lookups always join (the spec validates it)
        lookup = pd.read_csv(expand(source.path))[[source.join.right_on, *source.join.columns]]
        df = df.merge(lookup.rename(columns=source.join.columns), how="left",
                      left_on=source.join.left_on, right_on=source.join.right_on)
        df = df.drop(columns=[source.join.right_on])
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "snapshot.parquet", index=False)
    return len(df)


def ours(spec: PipelineSpec, window: Window, db_url: str, out: Path) -> int:
    return int(extract_snapshot(spec, window, db_url, data_root=out)["rows"])


def copy_statement(query: str, window: Window, binary: bool = False) -> str:
    """`COPY (query) TO STDOUT` with the window as literals: only ever our own bench's bounds."""
    literals = {"start": f"TIMESTAMP '{window.start.isoformat(sep=' ')}'",
                "end": f"TIMESTAMP '{window.end.isoformat(sep=' ')}'"}
    inner = _PARAM.sub(lambda m: literals[m.group(1)], query.strip().rstrip(";"))
    return f"COPY ({inner}) TO STDOUT" + (" (FORMAT binary)" if binary else "")


def libpq_url(db_url: str) -> str:
    """The SQLAlchemy URL as a libpq URI (query options such as search_path are kept)."""
    return sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


def copy_to_null(spec: PipelineSpec, window: Window, db_url: str, binary: bool = False) -> int:
    with psycopg.connect(libpq_url(db_url)) as conn, conn.cursor() as cur:
        with cur.copy(copy_statement(sql_query(spec), window, binary)) as copy:
            for _block in copy:  # the null sink: every block is read from the socket and dropped
                pass
        return int(cur.rowcount)  # from the server's `COPY n` tag


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
    spec = bench_spec(os.environ.get("BENCH_QUERY", "spec"))
    window = Window(datetime.fromisoformat(start), datetime.fromisoformat(end))
    runs = {
        "baseline": lambda: baseline(spec, window, db_url, Path(out)),
        "ours": lambda: ours(spec, window, db_url, Path(out)),
        "copy": lambda: copy_to_null(spec, window, db_url),
        "copy-binary": lambda: copy_to_null(spec, window, db_url, binary=True),
    }
    # A leftover snapshot would let ours skip its publish: every run starts from an empty folder.
    shutil.rmtree(out, ignore_errors=True)
    before = maxrss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    rows = runs[variant]()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = maxrss_mb()
    shutil.rmtree(out, ignore_errors=True)  # snapshots of millions of rows: do not leave them around
    print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "peak_mb": peak - before,
                      "hwm_mb": peak, "base_mb": before}))


if __name__ == "__main__":
    main(sys.argv[1:])
