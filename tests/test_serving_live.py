"""The model server as a real process on a loopback port, following a real MLflow server's `champion` alias:
every endpoint with auth on and off, hot swaps under concurrent load with zero failed requests, broken
versions that keep the old one serving, a start from the disk cache with the registry down, the metrics
of all that, and the prediction log read back."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pyarrow.dataset as ds
import pytest
from serving_live import (
    CATEGORICAL,
    NUMERIC,
    RECORD,
    Load,
    Registry,
    call,
    free_port,
    listeners,
    metric,
    serving_process,
    tiny_onnx,
    wait_until,
)
from serving_live import version_of as _version_of

from serving.registry import ModelCache, ModelRef

pytestmark = pytest.mark.slow


@pytest.fixture()
def registry(live_registry) -> Registry:
    return live_registry  # tests/conftest.py: one MLflow server for all serving tests


def test_hot_swap_under_concurrent_load_fails_no_request_and_logs_predictions(registry, tmp_path):
    name = "swap_model"
    assert registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.001)) == "1"
    logs = tmp_path / "predictions"
    with serving_process(tmp_path, MODEL_NAME=name, MLFLOW_SERVER_URL=registry.url,
                         SERVING_PREDICTION_LOG_DIR=str(logs), SERVING_PREDICTION_LOG_FLUSH_SECONDS="0.5") as base:
        wait_until(lambda: _version_of(base) == "1", 30, "version 1")
        first = json.loads(call(base, "POST", "/predict", {"records": [RECORD]})[2])["predictions"][0]
        with Load(base) as load:
            time.sleep(1.0)
            assert registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.002)) == "2"
            wait_until(lambda: load.seen("2"), 30, "answers from version 2")
            time.sleep(1.0)
        second = json.loads(call(base, "POST", "/predict", {"records": [RECORD]})[2])["predictions"][0]
        swaps = metric(base, "serving_model_swaps_total")
        info = metric(base, 'serving_model_info{name="swap_model",version="2"')
        files = sorted(logs.rglob("*.parquet"))
    answers = [a for thread in load.answers for a in thread]
    assert len(answers) > 50
    assert [a for a in answers if a[0] != 200] == []  # zero failed requests across the swap
    assert all(header == body for _, header, body in answers)  # header and body name the same version
    for thread in load.answers:  # each caller moves from 1 to 2 once, never back
        versions = [v for _, v, _ in thread]
        assert versions == sorted(versions) and set(versions) <= {"1", "2"}
    assert {v for _, v, _ in answers} == {"1", "2"}
    assert first["probability"] != second["probability"]  # version 2 is a different model
    assert (swaps, info) == (1, 1)
    assert files and all(p.relative_to(logs).parts[0].startswith("dt=") for p in files)
    table = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(answers) + 2  # every request (sample 1.0), written at the latest on shutdown
    assert set(table.column("model_version").to_pylist()) == {"1", "2"}
    assert set(table.column("carrier").to_pylist()) == {"UA"} and table.column("probability").null_count == 0


def test_two_worker_processes_follow_the_registry_log_and_answer_one_set_of_metrics(registry, tmp_path):
    name = "workers_model"
    registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.001))
    logs = tmp_path / "predictions"
    predict = 'serving_requests_total{route="/predict",status="200"}'
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")  # a cache below a file cannot be written, not even by root
    with serving_process(tmp_path, MODEL_NAME=name, MLFLOW_SERVER_URL=registry.url, SERVING_WORKERS="2",
                         SERVING_PREDICTION_LOG_DIR=str(logs), SERVING_PREDICTION_LOG_FLUSH_SECONDS="0.5",
                         SERVING_CACHE_DIR=str(not_a_folder / "cache")) as base:
        wait_until(lambda: metric(base, "serving_processes") == 2, 30, "both processes in the metrics")
        wait_until(lambda: all(_version_of(base) == "1" for _ in range(8)), 30, "every process serving v1")
        wait_until(lambda: len(listeners(base)) == 2, 30, "both processes listening")
        spread = _keep_alive_connections_per_process(base, 32)
        first = [call(base, "POST", "/predict", {"records": [RECORD]}) for _ in range(40)]  # a connection each
        # Whichever process a scrape reaches adds up both (each shares its counters every second).
        wait_until(lambda: metric(base, predict) == 40, 5, "40 predictions counted across the processes")
        registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.002))
        wait_until(lambda: all(_version_of(base) == "2" for _ in range(8)), 30, "every process serving v2")
        second = [call(base, "POST", "/predict", {"records": [RECORD]}) for _ in range(20)]
        wait_until(lambda: metric(base, "serving_model_swaps_total") == 2, 5, "one swap per process")
        wait_until(lambda: metric(base, predict) == 60, 5, "60 predictions counted across the processes")
        assert metric(base, 'serving_model_info{name="workers_model",version="2"') == 1
        # One process polls the registry for both; the other follows what it hands over (not the disk
        # cache, which is unusable here).
        assert [metric(base, "serving_registry_pollers") for _ in range(6)] == [1] * 6
        # Completed log files hold every row before a process is killed (its open file would only be
        # completed later, by a sibling's scan).
        wait_until(lambda: _logged_rows(logs) == 60, 10, "60 rows in completed log files")
        polling = next(p for p in listeners(base) if _holds_registry_lock(p))
        os.kill(polling, signal.SIGKILL)  # the supervisor starts a new process; the other one takes over
        wait_until(lambda: len(listeners(base)) == 2 and polling not in listeners(base), 30, "a new process")
        registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.003))
        wait_until(lambda: all(_version_of(base) == "3" for _ in range(8)), 30, "every process serving v3")
        wait_until(lambda: metric(base, "serving_registry_pollers") == 1, 5, "one poller after the takeover")
    assert [status for status, _, _ in first + second] == [200] * 60
    # Each process listens on its own SO_REUSEPORT socket: connections are spread, not taken by one.
    assert len(spread) == 2 and min(spread) >= 6, spread
    assert {headers["x-model-version"] for _, headers, _ in first} == {"1"}
    assert {headers["x-model-version"] for _, headers, _ in second} == {"2"}
    table = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 60  # both processes' logs, closed on shutdown
    assert sorted(table.column("model_version").to_pylist()) == ["1"] * 40 + ["2"] * 20


def _logged_rows(logs: Path) -> int:
    """Rows in the complete prediction-log files (files being written have a dot name: not read)."""
    return ds.dataset(logs, format="parquet", partitioning="hive").count_rows() if logs.exists() else 0


def _holds_registry_lock(pid: int) -> bool:
    """Whether process `pid` holds the lock of the server's registry poller (an open registry.lock)."""
    return any(f.path.endswith("/registry.lock") for f in psutil.Process(pid).open_files())


def _keep_alive_connections_per_process(base: str, n: int) -> list[int]:
    """Open `n` keep-alive connections in a burst, as a load generator does (all connected before the
    first request), send a request on each, and count how many connections each server process holds."""
    url = urlsplit(base)
    conns = [http.client.HTTPConnection(url.hostname, url.port, timeout=10) for _ in range(n)]
    try:
        for c in conns:
            c.connect()
        for c in conns:
            c.request("GET", "/v2/health/live")
            c.getresponse().read()
        owners = Counter(c.pid for c in psutil.net_connections("tcp")
                         if c.laddr and c.laddr.port == url.port and c.status == psutil.CONN_ESTABLISHED)
        return sorted(owners.values())
    finally:
        for c in conns:
            c.close()


def test_broken_versions_are_reported_and_the_old_one_keeps_serving(registry, tmp_path):
    name = "broken_model"
    good = tiny_onnx(NUMERIC, CATEGORICAL)
    registry.publish(name, good)
    with serving_process(tmp_path, MODEL_NAME=name, MLFLOW_SERVER_URL=registry.url) as base:
        wait_until(lambda: _version_of(base) == "1", 30, "version 1")
        with Load(base, threads=2) as load:
            registry.publish(name, good, sha256="0" * 64)  # v2: not the artifact that was registered
            wait_until(lambda: metric(base, "serving_model_load_failures_total") == 1, 30, "the checksum failure")
            registry.publish(name, b"not an onnx model")  # v3: the registered bytes, but not a model
            wait_until(lambda: metric(base, "serving_model_load_failures_total") == 2, 30, "the load failure")
            stale = metric(base, "serving_model_stale")
            assert _version_of(base) == "1"
            registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.003))  # v4: good again
            wait_until(lambda: _version_of(base) == "4", 30, "version 4")
        assert (stale, metric(base, "serving_model_stale"), metric(base, "serving_model_swaps_total")) == (1, 0, 1)
        assert metric(base, "serving_registry_last_success_timestamp_seconds") > time.time() - 60
    answers = [a for thread in load.answers for a in thread]
    assert answers and all(status == 200 for status, _, _ in answers)
    assert {v for _, v, _ in answers} <= {"1", "4"}
    log = next(tmp_path.glob("serving-*.log")).read_text()
    assert "version 2 of broken_model failed to load" in log and "version 3 of broken_model failed to load" in log


def test_the_projects_mlflow_server_runs_without_mlflow_job_processes(registry):
    """Every MLflow server the project starts (examples.procs.mlflow_server_cmd: make up, the demo, the
    bench, these tests) runs without MLflow 3's job execution, which would add a job runner and 7 huey
    consumers (~2 GB) that poll on every core."""
    children = [" ".join(p.cmdline()) for p in psutil.Process(registry.pid).children(recursive=True)]
    assert children and not [c for c in children if "huey" in c or "mlflow.server.jobs" in c], children
    assert call(registry.url, "GET", "/health")[0] == 200  # and it serves


def test_starts_from_the_cache_with_the_registry_down_and_is_ready_fast(tmp_path):
    ModelCache(tmp_path / "cache", "flights_delay").save(ModelRef("flights_delay", "5", None),
                                                         tiny_onnx(NUMERIC, CATEGORICAL))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    began = time.perf_counter()
    with serving_process(tmp_path, MLFLOW_SERVER_URL=dead) as base:
        wait_until(lambda: _version_of(base) == "5", 30, "readiness")
        ready_after = time.perf_counter() - began
        status, headers, body = call(base, "POST", "/predict", {"records": [RECORD]})
        wait_until(lambda: (metric(base, "serving_registry_poll_errors_total") or 0) >= 2, 10, "poll errors")
        assert metric(base, "serving_registry_last_success_timestamp_seconds") == 0
    assert status == 200 and headers["x-model-version"] == "5" and json.loads(body)["model_version"] == "5"
    assert ready_after < 10, ready_after  # typically ~1 s (README); generous for a busy CI machine
    print(f"ready {ready_after:.2f} s after start, from the cache, registry down")


def test_without_cache_or_registry_it_lives_but_is_not_ready(tmp_path):
    with serving_process(tmp_path, MLFLOW_SERVER_URL=f"http://127.0.0.1:{free_port()}",
                         SERVING_STARTUP_WAIT_SECONDS="0.5") as base:
        assert call(base, "GET", "/v2/health/live")[0] == 200
        assert call(base, "GET", "/v2/health/ready")[0] == 503
        status, _, body = call(base, "POST", "/predict", {"records": [RECORD]})
        assert status == 503 and json.loads(body) == {"error": "no model loaded yet"}


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_every_endpoint_over_http_with_auth_off_and_on(tmp_path, token):
    ModelCache(tmp_path / "cache", "flights_delay").save(ModelRef("flights_delay", "3", None),
                                                         tiny_onnx(NUMERIC, CATEGORICAL))
    env = {"SERVING_AUTH_TOKEN": token} if token else {}
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    tensors = [{"name": f, "shape": [1], "datatype": "BYTES" if f in CATEGORICAL else "FP32", "data": [v]}
               for f, v in RECORD.items()]
    row_major = [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [list(RECORD.values())]}]
    with serving_process(tmp_path, SERVING_MAX_BODY_BYTES="4096", **env) as base:
        requests = [("GET", "/v2/health/ready", None), ("GET", "/v2", None),
                    ("GET", "/v2/models/flights_delay", None), ("GET", "/v2/models/flights_delay/ready", None),
                    ("GET", "/v2/models/flights_delay/versions/3", None),
                    ("GET", "/v2/models/flights_delay/versions/3/ready", None),
                    ("POST", "/v2/models/flights_delay/infer", {"inputs": tensors}),
                    ("POST", "/v2/models/flights_delay/versions/3/infer", {"inputs": row_major}),
                    ("POST", "/predict", {"records": [RECORD]}), ("GET", "/openapi.json", None),
                    ("GET", "/metrics", None)]
        for method, path, body in requests:
            status, headers, payload = call(base, method, path, body, auth)
            assert status == 200, (path, payload)
            assert headers["x-model-version"] == "3", path
            if token:
                assert call(base, method, path, body)[0] == 401, path
        assert call(base, "GET", "/v2/health/live")[0] == 200  # liveness never needs the token
        assert _head_then_get(base, auth) == (200, 200, b'{"live":true}')
        infer = json.loads(call(base, "POST", "/v2/models/flights_delay/infer", {"inputs": tensors}, auth)[2])
        plain = json.loads(call(base, "POST", "/predict", {"records": [RECORD]}, auth)[2])
        assert infer["outputs"][0]["data"][0] == pytest.approx(plain["predictions"][0]["probability"])
        for body, field in ((b'{"records": [{"distance": NaN}]}', "records[0].distance"),
                            ({"records": [{**RECORD, "hour": "seven"}]}, "records[0].hour"),
                            ({"records": [{**RECORD, "gate": 4}]}, "unknown feature `gate`"),
                            ({"records": []}, "records"), (b"{", "not valid JSON")):
            status, _, payload = call(base, "POST", "/predict", body, auth)
            assert status == 400 and field in json.loads(payload)["error"]
        status, _, payload = call(base, "POST", "/predict", {"records": [RECORD] * 100}, auth)
        assert status == 413 and "4096" in json.loads(payload)["error"]
        assert _chunked_status(base, auth, json.dumps({"records": [RECORD] * 100}).encode()) == 413  # no length
        assert _h2c_offer_keeps_the_body(base, auth) == 200
        text = call(base, "GET", "/metrics", headers=auth)[2].decode()
        assert 'serving_requests_total{route="/predict",status="400"} 5' in text
        assert 'serving_requests_total{route="/predict",status="413"} 2' in text


def _head_then_get(base: str, auth: dict[str, str]) -> tuple[int, int, bytes]:
    """HEAD /v2/health/ready (headers only: its Content-Length, no body), then GET /v2/health/live on the same
    connection: a body sent after the HEAD answer would be read as the second answer."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("HEAD", "/v2/health/ready", headers=auth)
        head = conn.getresponse()
        assert head.read() == b"" and int(head.getheader("content-length")) > 0
        assert head.getheader("x-model-version") == "3"
        conn.request("GET", "/v2/health/live")
        live = conn.getresponse()
        return head.status, live.status, live.read()
    finally:
        conn.close()


def _chunked_status(base: str, auth: dict[str, str], body: bytes) -> int:
    """POST /predict with Transfer-Encoding: chunked (no Content-Length), the body in one chunk."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/predict", body=iter([body]), encode_chunked=True,
                     headers={"Content-Type": "application/json", **auth})
        return conn.getresponse().status
    finally:
        conn.close()


def _h2c_offer_keeps_the_body(base: str, auth: dict[str, str]) -> int:
    """Java's HttpClient offers an HTTP/2 upgrade on every cleartext request; the body must still arrive."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"records": [RECORD]}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                  f"HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n{head}"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        time.sleep(0.1)  # the body in a second packet, as the JDK sends it
        s.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(4096)
    return int(reply.split(b" ", 2)[1])
