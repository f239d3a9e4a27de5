"""`python -m bench.serve` (make bench-serve): our model server vs `mlflow models serve` vs a raw-ASGI hello world.

One champion, registered the way training registers it (ONNX logged with mlflow.onnx, checksum tag, alias
`champion`) in a throwaway MLflow server, or the champion of --registry URL. On loopback, one server at a
time, each loaded from a separate load process; (a) and (c) run BENCH_SERVE_WORKERS (2) processes each:
    (a) ours      python -m serving, following the champion through the registry's REST API; validation,
                  metrics and the prediction log (every request) on, as in production
    (b) mlflow    mlflow models serve --env-manager local, the same model version
    (c) ceiling   a raw ASGI callable (no framework) on the same ASGI server with the same settings
1-row requests at concurrency 32 for BENCH_SERVE_SECONDS (15) each after a warm-up, with wrk when it is
installed, else a Python load client in its own process. Then 1000-row batches at concurrency 4 per server
process to (a) in three forms, against onnxruntime called in-process on the same 1000 rows (same session
options; measured for as long as a run, before each round's batch runs and at the end, the best counts).
With --rounds N, (a) and (c) alternate N times, each round of (a) with its batch runs, and the best of each
counts (a shared machine is noisy; the baseline gets one measurement more than the batch runs).
The last line is `RESULT mlflow_ratio=<x> ceiling_ratio=<y> p99_ms=<z> batch_ratio=<w>`; batch_ratio is for
the fastest of the three batch forms (the table shows each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("BENCH_SERVE_SECONDS", "15"))
WARMUP_SECONDS = 3.0
CONCURRENCY, BATCH_ROWS = 32, 1000
# Server processes for (a) and (c) alike: one per core of this 2-core machine (SERVING_WORKERS).
WORKERS = int(os.environ.get("BENCH_SERVE_WORKERS", "2"))
# Batch connections per server process: the kernel spreads connections over the processes by address
# hash, and a few spread unevenly (4 connections to 2 processes went 4+0, 3+1, 3+1, 2+2 in four tries).
BATCH_CONCURRENCY = 4 * WORKERS
FLIGHT = {"distance": 2475.0, "sched_dep_hour": 17.0, "temp": 80.1, "humid": 60.0, "wind_speed": 10.4,
          "precip": 0.0, "visib": 10.0, "plane_year": 2005.0, "seats": 180.0, "dest_lat": 33.94,
          "dest_lon": -118.41, "dest_alt": 126.0, "carrier": "AA", "origin": "JFK", "dest": "LAX"}
CARRIERS = ["9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(url: str, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> float | None:
    """Seconds until `url` answers 200, or None (also as soon as `proc` exits)."""
    import urllib.request

    began = time.perf_counter()
    while time.perf_counter() - began < seconds and (proc is None or proc.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return time.perf_counter() - began
        except OSError:
            pass
        time.sleep(0.05)
    return None


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        # The venv's bin first: `mlflow models serve` starts `uvicorn` from PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PATH": path, **(env or {})})
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


# --- the model, registered as training registers it ----------------------------------------------------

def export_model(path: Path) -> str:
    """The bench's model (the flights spec's features, fixed vocabularies and weights) as ONNX at `path`;
    its registered name."""
    import torch

    from tasks.config import load_spec
    from tasks.model import ModelConfig, TabularNet, export_onnx

    spec = load_spec()
    vocab = {"carrier": CARRIERS, "origin": ["EWR", "JFK", "LGA"], "dest": sorted({f"D{i:02d}" for i in range(104)}
                                                                               | {"LAX"})}
    torch.manual_seed(0)
    cfg = ModelConfig(spec.features.numeric, spec.features.categorical, {c: vocab.get(c, ["x"])
                                                                        for c in spec.features.categorical},
                      spec.training.hidden, spec.training.embedding_dim)
    net = TabularNet(cfg)
    net.fit_preprocessing(np.array([[r[c] for c in cfg.numeric] for r in batch_records(BATCH_ROWS)], np.float32))
    export_onnx(net, path, {"model_name": spec.registered_model, "threshold": "0.5"})
    return spec.registered_model


def register_champion(work: Path, mlflow_url: str) -> tuple[str, str, Path]:
    """Export the bench's model, log and register it like tasks.train, alias champion."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from serving.model import OnnxModel

    path = work / "model.onnx"
    name = export_model(path)
    mlflow.set_tracking_uri(mlflow_url)
    exp = mlflow.create_experiment("bench-serve")
    inputs = columns([FLIGHT] * 2)
    signature = infer_signature(inputs, OnnxModel.from_file(path).predict_columns(inputs))
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.onnx.log_model(onnx.load(str(path)), name="model", save_as_external_data=False,
                                     pip_requirements=["onnxruntime"], signature=signature, input_example=inputs)
    import hashlib

    mv = mlflow.register_model(info.model_uri, name, tags={
        "run_id": run.info.run_id, "onnx.sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", mv.version)
    return name, str(mv.version), path


def columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in records], dtype=object if isinstance(v, str) else np.float32)
            for k, v in records[0].items()}


def batch_records(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        r = dict(FLIGHT)
        r.update(distance=float(rng.integers(100, 5000)), sched_dep_hour=float(i % 24),
                 temp=round(float(rng.normal(60, 15)), 1), carrier=CARRIERS[i % len(CARRIERS)])
        out.append(r)
    return out


# --- request bodies -------------------------------------------------------------------------------------

def oip_json(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"inputs": [{"name": k, "shape": [len(records)],
                                   "datatype": "BYTES" if isinstance(v, str) else "FP32",
                                   "data": [r[k] for r in records]} for k, v in records[0].items()]}).encode()


def oip_binary(records: list[dict[str, Any]]) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for k, v in records[0].items():
        if isinstance(v, str):
            blob = b"".join(struct.pack("<I", len(r[k])) + r[k].encode() for r in records)
        else:
            blob = np.array([r[k] for r in records], dtype="<f4").tobytes()
        inputs.append({"name": k, "shape": [len(records)], "datatype": "BYTES" if isinstance(v, str) else "FP32",
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), len(head)


# --- load generation ------------------------------------------------------------------------------------

def load(url: str, body: bytes, seconds: float, concurrency: int, work: Path,
         headers: dict[str, str] | None = None) -> dict[str, float]:
    """Throughput and latency percentiles of POSTing `body` to `url` from a separate load process."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    body_file = work / f"body-{abs(hash(body))}.bin"
    body_file.write_bytes(body)
    if shutil.which("wrk"):
        return _wrk(url, body_file, headers, seconds, concurrency, work)
    out = subprocess.run([sys.executable, "-m", "bench.serve", "load-client", url, str(body_file), str(concurrency),
                          str(seconds), json.dumps(headers)], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _wrk(url: str, body_file: Path, headers: dict[str, str], seconds: float, concurrency: int,
         work: Path) -> dict[str, float]:
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\n' + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
                      + f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n')
    wrk = shutil.which("wrk") or "wrk"
    out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    pct = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$",
                                                                            out, re.M)}
    done = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": pct["50"], "p99_ms": pct["99"], "requests": float(done.group(1)) if done else 0.0,
            "errors": float((int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0))}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load_client(url: str, body_file: str, concurrency: int, seconds: float, headers_json: str) -> None:
    """The fallback load generator: keep-alive HTTP/1.1 connections on asyncio (uvloop when present)."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = Path(body_file).read_bytes()
    head = "".join(f"{k}: {v}\r\n" for k, v in json.loads(headers_json).items())
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    latencies: list[float] = []
    errors = 0

    async def connection(deadline: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            errors += not status.startswith(b"HTTP/1.1 2")
        writer.close()

    async def run() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(connection(began + seconds) for _ in range(concurrency)))
        return time.perf_counter() - began

    try:
        import uvloop

        elapsed = uvloop.run(run())
    except ImportError:
        elapsed = asyncio.run(run())
    lat = np.array(latencies) * 1000
    print(json.dumps({"rps": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
                      "p99_ms": float(np.percentile(lat, 99)), "requests": float(len(lat)), "errors": float(errors)}))


# --- the ceiling: a raw ASGI callable on the same server ----------------------------------------------

async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"17")]})
    await send({"type": "http.response.body", "body": b'{"hello":"world"}'})


def serve_hello(port: int, workers: int) -> None:
    from serving.__main__ import run
    from serving.settings import Settings

    run("bench.serve:hello", Settings.from_env({"SERVING_PORT": str(port), "SERVING_PREDICTION_LOG_DIR": "",
                                                "SERVING_WORKERS": str(workers)}), factory=False)


def inprocess_rows_per_s(path: Path, records: list[dict[str, Any]], seconds: float) -> float:
    """onnxruntime's rows/s on `records` in this process, for `seconds` (as long as a served run: on a shared
    machine a shorter window lands in a fast or slow spell more often, and the best of several would favour it)."""
    from serving.model import OnnxModel

    model = OnnxModel.from_file(path)
    feeds = columns(records)
    model.predict_columns(feeds)
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        model.predict_columns(feeds)
        calls += 1
    return calls * len(records) / (time.perf_counter() - began)


# --- the run ------------------------------------------------------------------------------------------

def _python() -> str:
    return sys.executable


def _metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    m = re.search(rf"^{re.escape(name)} ([\d.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="MLflow server URL whose champion to use (default: a throwaway one)")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_SERVE_ROUNDS", "1")))
    args = parser.parse_args()
    from examples.procs import mlflow_server_cmd
    from tasks import settings

    log = settings.state_dir() / "logs" / "bench-serve.log"  # kept after the run
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        print(f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs ({platform.processor() or '?'}),"
              f" load average {os.getloadavg()[0]:.2f}; load generator: "
              f"{'wrk -t1' if shutil.which('wrk') else 'Python client (no wrk on PATH)'}; {SECONDS:g} s per run; "
              f"{WORKERS} server process(es) for (a) and (c) (BENCH_SERVE_WORKERS)")
        registry = args.registry
        if registry is None:
            port = free_port()
            # A throwaway store: never the project's (make exports MLFLOW_TRACKING_URI for the demo's).
            store = f"sqlite:///{work / 'mlflow.db'}"
            mlflow_server = stack.enter_context(process(mlflow_server_cmd(work / "state", port, store), log,
                                                        {"MLFLOW_TRACKING_URI": store}))
            registry = f"http://127.0.0.1:{port}"
            if wait_ok(f"{registry}/health", 120, mlflow_server) is None:
                raise SystemExit(f"MLflow server did not start; see {log}")
            name, version, onnx_path = register_champion(work, registry)
        else:
            name, version, onnx_path = _champion(registry, work)
        print(f"model {name} v{version} (champion of {registry}); server logs in {log}")
        one = {"ours": json.dumps({"records": [FLIGHT]}).encode(),
               "mlflow": json.dumps({"inputs": {k: [v] for k, v in FLIGHT.items()}}).encode()}
        records = batch_records(BATCH_ROWS)
        results: dict[str, dict[str, float]] = {}
        baselines: list[float] = []  # onnxruntime in-process rows/s, measured before the batch runs and at the end
        ours_port, hello_port = free_port(), free_port()
        ours_env = {"MODEL_NAME": name, "MLFLOW_SERVER_URL": registry, "SERVING_PORT": str(ours_port),
                    "SERVING_CACHE_DIR": str(work / "cache"), "SERVING_PREDICTION_LOG_DIR": str(work / "predictions"),
                    "SERVING_WORKERS": str(WORKERS)}
        ours_url = f"http://127.0.0.1:{ours_port}"
        for _ in range(max(args.rounds, 1)):
            with process([_python(), "-m", "serving"], log, ours_env) as proc:
                if wait_ok(f"{ours_url}/v2/health/ready", 60, proc) is None:
                    raise SystemExit(f"our server did not become ready; see {log}")
                load(f"{ours_url}/predict", one["ours"], WARMUP_SECONDS, CONCURRENCY, work)
                _best(results, "ours", load(f"{ours_url}/predict", one["ours"], SECONDS, CONCURRENCY, work))
                if "per_call" not in results["ours"]:
                    merged = _metric(f"{ours_url}/metrics", "serving_batch_requests_sum") / _metric(
                        f"{ours_url}/metrics", "serving_batch_requests_count")
                    results["ours"]["per_call"] = merged
                # Every round runs the batches too, next to a measurement of the baseline: the best of each
                # counts, so a round on a slow minute of a shared machine moves neither side alone.
                baselines.append(inprocess_rows_per_s(onnx_path, records, SECONDS))
                _batches(results, ours_url, name, records, work)
            with process([_python(), "-m", "bench.serve", "hello", str(hello_port), str(WORKERS)], log) as proc:
                hello_url = f"http://127.0.0.1:{hello_port}/"
                if wait_ok(hello_url, 60, proc) is None:
                    raise SystemExit(f"hello-world server did not start; see {log}")
                load(hello_url, one["ours"], WARMUP_SECONDS, CONCURRENCY, work)
                _best(results, "ceiling", load(hello_url, one["ours"], SECONDS, CONCURRENCY, work))
        mlflow_port = free_port()
        with process([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                      f"models:/{name}/{version}", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
                     log, {"MLFLOW_TRACKING_URI": registry}) as proc:
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            if wait_ok(f"{mlflow_url}/ping", 180, proc) is None:
                raise SystemExit(f"mlflow models serve did not start; see {log}")
            load(f"{mlflow_url}/invocations", one["mlflow"], WARMUP_SECONDS, CONCURRENCY, work)
            results["mlflow"] = load(f"{mlflow_url}/invocations", one["mlflow"], SECONDS, CONCURRENCY, work)
        baselines.append(inprocess_rows_per_s(onnx_path, records, SECONDS))
        results["inprocess"] = {"rows_per_s": max(baselines), "measurements": float(len(baselines))}
        ready = _ready_from_cache(ours_env, work, log)
        _report(results, ready)


def _best(results: dict[str, dict[str, float]], key: str, run: dict[str, float]) -> None:
    if key not in results or run["rps"] > results[key]["rps"]:
        results[key] = {**results.get(key, {}), **run}


def _batches(results: dict[str, dict[str, float]], url: str, name: str, records: list[dict[str, Any]],
             work: Path) -> None:
    infer = f"{url}/v2/models/{name}/infer"
    binary, head = oip_binary(records)
    forms = {"batch_json": (infer, oip_json(records), {}),
             "batch_binary": (infer, binary, {"Inference-Header-Content-Length": str(head),
                                               "Content-Type": "application/octet-stream"}),
             "batch_records": (f"{url}/predict", json.dumps({"records": records}).encode(), {})}
    for key, (target, body, headers) in forms.items():
        load(target, body, WARMUP_SECONDS, BATCH_CONCURRENCY, work, headers)
        run = load(target, body, SECONDS, BATCH_CONCURRENCY, work, headers)
        if key not in results or run["rps"] > results[key]["rps"]:  # the best of the rounds
            results[key] = {**run, "rows_per_s": run["rps"] * len(records), "bytes": float(len(body))}


def _ready_from_cache(env: dict[str, str], work: Path, log: Path) -> float | None:
    """Seconds from process start to ready, with the model in the disk cache and the registry unreachable."""
    dead = f"http://127.0.0.1:{free_port()}"
    began = time.perf_counter()
    with process([_python(), "-m", "serving"], log, {**env, "MLFLOW_SERVER_URL": dead}) as proc:
        waited = wait_ok(f"http://127.0.0.1:{env['SERVING_PORT']}/v2/health/ready", 30, proc)
    return None if waited is None else time.perf_counter() - began


def _champion(registry: str, work: Path) -> tuple[str, str, Path]:
    from serving.registry import RegistryClient
    from tasks.config import load_spec

    name = load_spec().registered_model
    client = RegistryClient(registry)
    ref = client.resolve(name, "champion")
    path = work / "model.onnx"
    path.write_bytes(client.download(ref))
    return name, ref.version, path


FORMS = {"batch_json": "OIP infer, JSON tensors", "batch_binary": "OIP infer, binary tensors",
         "batch_records": "/predict, JSON records"}


def _report(r: dict[str, dict[str, float]], ready_s: float | None) -> None:
    ours, mlflow, ceiling = r["ours"], r["mlflow"], r["ceiling"]
    print(f"\n1-row requests, concurrency {CONCURRENCY}, {SECONDS:g} s each (best of the rounds for (a) and (c)):")
    print("| server | req/s | p50 ms | p99 ms | errors | vs (b) mlflow serve | vs (c) hello world |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, run in (("(a) ours: python -m serving", ours), ("(b) mlflow models serve --env-manager local", mlflow),
                       ("(c) raw ASGI hello world, same server", ceiling)):
        print(f"| {label} | {run['rps']:,.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']:.0f} "
              f"| {run['rps'] / mlflow['rps']:.2f}x | {run['rps'] / ceiling['rps']:.2f}x |")
    print(f"(a) merged {ours.get('per_call', float('nan')):.1f} requests per onnxruntime call on average")
    base = r["inprocess"]["rows_per_s"]
    print(f"\n{BATCH_ROWS}-row batches to (a), concurrency {BATCH_CONCURRENCY}, vs onnxruntime in-process "
          "(best of the rounds):")
    print("| form | body KB | req/s | rows/s | p99 ms | vs in-process |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, label in FORMS.items():
        run = r[key]
        print(f"| {label} | {run['bytes'] / 1024:.0f} | {run['rps']:,.0f} | {run['rows_per_s']:,.0f} "
              f"| {run['p99_ms']:.1f} | {run['rows_per_s'] / base:.2f}x |")
    print(f"| onnxruntime in-process (1 intra-op thread, as served; best of {r['inprocess']['measurements']:.0f} "
          f"measurements) | | | {base:,.0f} | | 1.00x |")
    print(f"\nready after start with a cached model and the registry down: "
          f"{'did not become ready' if ready_s is None else f'{ready_s:.2f} s'}")
    best = max(FORMS, key=lambda key: r[key]["rows_per_s"])
    print(f"batch_ratio: the fastest form ({FORMS[best]}); every form is a standard OIP v2 or plain-JSON request")
    print(f"RESULT mlflow_ratio={ours['rps'] / mlflow['rps']:.1f} ceiling_ratio={ours['rps'] / ceiling['rps']:.2f} "
          f"p99_ms={ours['p99_ms']:.2f} batch_ratio={r[best]['rows_per_s'] / base:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "hello":
        serve_hello(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "load-client":
        load_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    else:
        main()
