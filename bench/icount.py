"""`python -m bench.icount [--base REV]` (make bench-icount): the model server's CPU work per 1-row request,
counted in instructions by valgrind's cachegrind instead of timed, for this tree against `--base`
(`--batch`: per 1000-row binary OIP request, bench.serve's fastest batch form, 4 at a time).

This VM's timings drift by ±20 % between runs of a few seconds, which hides changes of a few per cent;
instruction counts do not drift. The app is driven in-process through ASGI (no sockets, no uvicorn: only
what differs between two versions of `serving/`): 16 concurrent `/predict` requests at a time, served
from a cached model, with validation, metrics and (unless `--log off`) the prediction log on. Each tree
runs twice, with two request counts, and the difference is divided by the extra requests, so start-up
cancels out. The log writer's slices go by request count (SLICE_REQUESTS), not by the clock, so the
count does not depend on how fast valgrind runs. onnxruntime under valgrind may take another code
path than on the bare CPU: compare its share between trees, not against seconds.
The last line is `RESULT instructions_ratio=<this/base> d1_misses_ratio=<this/base>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import MutableMapping
from io import BytesIO
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 16
# The log writer writes a slice every tenth of a second; under load a server process takes ~18 k
# requests a second. Here the slices go by request count: under valgrind's ~30x slowdown a timer
# would write slices of a few rows, and how many would depend on the machine's speed.
SLICE_REQUESTS = 1792
# --batch: bench.serve's fastest batch form (1000-row binary OIP requests, 4 connections per server
# process), ~1 k of them a second per process, so a tenth of a second's slice is 100 requests (100 k rows).
BATCH_CONCURRENCY, BATCH_SLICE_REQUESTS = 4, 100


def _model_cache(folder: Path) -> None:
    """bench.serve's model, in `folder`/cache as the server caches it."""
    from bench.serve import export_model
    from serving.registry import ModelCache, ModelRef

    path = folder / "model.onnx"
    name = export_model(path)
    ModelCache(folder / "cache", name).save(ModelRef(name, "1", None), path.read_bytes())


def _tree(rev: str, into: Path) -> Path:
    """`serving/` as of git revision `rev`, unpacked under `into` (importable from there)."""
    git = shutil.which("git") or "git"
    archive = subprocess.run([git, "archive", rev, "serving"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _count(tree: Path, cache: Path, requests: int, log: bool, work: Path, batch: bool = False) -> tuple[int, int]:
    """(instructions, D1 misses) of one driver run under cachegrind."""
    # Fixed hashing; and no OpenBLAS thread pool: under valgrind its idle threads spin in turn with the
    # main one, a count that depends on scheduling (the server's threads idle at ~0 % CPU outside it).
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)])}
    cmd = [shutil.which("valgrind") or "valgrind", "--tool=cachegrind", "--cache-sim=yes",
           "--cachegrind-out-file=/dev/null", sys.executable, "-m", "bench.icount", "drive", str(tree), str(cache),
           str(requests), str(work / "predictions") if log else "", "batch" if batch else "1-row"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, check=False)
    if out.returncode != 0 or "served" not in out.stdout:
        raise SystemExit(f"the driver failed under valgrind:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    refs = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    d1 = re.search(r"D1\s+misses:\s+([\d,]+)", out.stderr)
    if refs is None or d1 is None:
        raise SystemExit(f"no cachegrind summary in:\n{out.stderr[-2000:]}")
    return int(refs.group(1).replace(",", "")), int(d1.group(1).replace(",", ""))


def per_request(tree: Path, cache: Path, requests: int, log: bool, work: Path,
                batch: bool = False) -> tuple[float, float]:
    """(instructions, D1 misses) per request: two runs, `requests` (whole log slices) apart, differenced,
    so start-up and shutdown cancel out."""
    first = BATCH_SLICE_REQUESTS if batch else SLICE_REQUESTS
    small = _count(tree, cache, first, log, work, batch)
    large = _count(tree, cache, first + requests, log, work, batch)
    return (large[0] - small[0]) / requests, (large[1] - small[1]) / requests


def drive(tree: str, cache: str, requests: int, log_dir: str, batch: bool = False) -> None:
    """In the valgrind child: serve `requests` 1-row /predict requests through the ASGI app, 16 at a time
    (`batch`: 1000-row binary OIP requests, 4 at a time)."""
    sys.path.insert(0, tree)
    model = "flights_delay"  # _model_cache's
    os.environ.update(MODEL_NAME=model, MLFLOW_SERVER_URL="http://127.0.0.1:9", SERVING_CACHE_DIR=cache,
                      SERVING_PREDICTION_LOG_DIR=log_dir, SERVING_POLL_SECONDS="100000")
    import msgspec

    from bench.serve import BATCH_ROWS, FLIGHT, batch_records, oip_binary
    from serving.app import create_app

    headers = [(b"host", b"bench")]
    if batch:
        body, head = oip_binary(batch_records(BATCH_ROWS))
        path, concurrency, slice_requests = f"/v2/models/{model}/infer", BATCH_CONCURRENCY, BATCH_SLICE_REQUESTS
        headers += [(b"content-type", b"application/octet-stream"), (b"inference-header-content-length", b"%d" % head)]
    else:
        body = msgspec.json.encode({"records": [FLIGHT]})
        path, concurrency, slice_requests = "/predict", CONCURRENCY, SLICE_REQUESTS
        headers.append((b"content-type", b"application/json"))
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [*headers, (b"content-length", b"%d" % len(body))]}
    message: MutableMapping[str, Any] = {"type": "http.request", "body": body, "more_body": False}
    answers: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return message

    async def send(m: MutableMapping[str, Any]) -> None:
        answers.append(m)

    async def run() -> None:
        app = create_app()
        await app.startup()
        log = app.predlog
        if log is not None and log._writer is not None:  # noqa: SLF001 - the writer goes by request count here
            log._writer.cancel()  # noqa: SLF001
            with contextlib.suppress(asyncio.CancelledError):
                await log._writer  # noqa: SLF001
            log._writer = None  # noqa: SLF001
        served = 0
        while served < requests:
            answers.clear()
            await asyncio.gather(*[app(scope, receive, send) for _ in range(concurrency)])
            served += concurrency
            if log is not None and served % slice_requests == 0:
                for _ in log._append():  # noqa: SLF001 - one slice, as the writer task writes it
                    pass
        assert answers and answers[0]["status"] == 200 and b"probability" in answers[-1]["body"], answers[-2:]
        await app.shutdown()
        print(f"served {served}")

    import uvloop

    uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="git revision to compare with (default HEAD: the "
                        "working tree's uncommitted change)")
    parser.add_argument("--slices", type=int, default=7, help=f"log slices of {SLICE_REQUESTS:,} requests counted "
                        "per tree (default 7)")
    parser.add_argument("--log", choices=("on", "off"), default="on", help="the prediction log (default on)")
    parser.add_argument("--batch", action="store_true", help="count 1000-row binary OIP requests, 4 at a time "
                        f"(log slices of {BATCH_SLICE_REQUESTS}), instead of 1-row /predict requests")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="bench-icount-") as tmp:
        work = Path(tmp)
        _model_cache(work)
        base = _tree(args.base, work / "base")
        requests = args.slices * (BATCH_SLICE_REQUESTS if args.batch else SLICE_REQUESTS)
        what = (f"1000-row binary OIP requests per tree, {BATCH_CONCURRENCY}" if args.batch else
                f"1-row /predict requests per tree, {CONCURRENCY}")
        print(f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}; {requests:,} {what} at a time, in-process under "
              f"cachegrind; prediction log {args.log}")
        rows = {}
        for label, tree in ((f"base ({args.base})", base), ("this tree", REPO)):
            rows[label] = per_request(tree, work / "cache", requests, args.log == "on", work, args.batch)
        print("| serving/ | instructions per request | D1 misses per request |")
        print("|---|---:|---:|")
        for label, (instructions, misses) in rows.items():
            print(f"| {label} | {instructions:,.0f} | {misses:,.1f} |")
        (b_i, b_d), (t_i, t_d) = rows.values()
        print(f"RESULT instructions_ratio={t_i / b_i:.3f} d1_misses_ratio={t_d / b_d:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "drive":
        drive(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], len(sys.argv) > 6 and sys.argv[6] == "batch")
    else:
        main()
