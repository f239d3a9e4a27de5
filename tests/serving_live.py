"""The model server as a real process on a loopback port, a real MLflow server as its registry, tiny ONNX models
with the exported models' interface, and callers that keep posting: shared by tests/test_serving_live.py and
the serving faults of tests/reliability."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import onnx
import psutil
from live_airflow import free_port
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parent.parent
NUMERIC, CATEGORICAL = ["distance", "hour"], ["carrier", "origin"]
RECORD = {"distance": 1000.0, "hour": 7.0, "carrier": "UA", "origin": "EWR"}


def tiny_onnx(numeric: list[str], categorical: list[str], weight: float = 0.001) -> bytes:
    """A small model with the exported models' interface: one raw input per feature (float32 or string),
    `probability` out, missing numbers imputed; `weight` makes versions answer differently."""
    vocab = ["AA", "UA", "DL", "JFK", "EWR", "LGA", "LAX"]
    nodes = [helper.make_node("Unsqueeze", [c, "axes"], [f"{c}_2d"]) for c in numeric]
    nodes += [helper.make_node("Concat", [f"{c}_2d" for c in numeric], ["num"], axis=1),
              helper.make_node("IsNaN", ["num"], ["missing"]),
              helper.make_node("Where", ["missing", "zero", "num"], ["filled"]),
              helper.make_node("MatMul", ["filled", "w"], ["linear"])]
    terms = ["linear", "bias"]
    for c in categorical:
        nodes += [helper.make_node("LabelEncoder", [c], [f"{c}_value"], domain="ai.onnx.ml", keys_strings=vocab,
                                   values_floats=[0.1 * (i + 1) for i in range(len(vocab))], default_float=0.0),
                  helper.make_node("Unsqueeze", [f"{c}_value", "axes"], [f"{c}_term"])]
        terms.append(f"{c}_term")
    nodes += [helper.make_node("Sum", terms, ["logit"]), helper.make_node("Sigmoid", ["logit"], ["p2d"]),
              helper.make_node("Squeeze", ["p2d", "axes"], ["probability"])]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("w", TensorProto.FLOAT, [len(numeric), 1],
                                [weight * (i + 1) for i in range(len(numeric))]),
             helper.make_tensor("bias", TensorProto.FLOAT, [1], [-1.0])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(c, TensorProto.FLOAT, ["N"]) for c in numeric]
        + [helper.make_tensor_value_info(c, TensorProto.STRING, ["N"]) for c in categorical],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 10
    model.metadata_props.append(onnx.StringStringEntryProto(key="threshold", value="0.5"))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def call(base: str, method: str, path: str, body: bytes | dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def wait_until(check, seconds: float, what: str) -> None:  # noqa: ANN001 - a predicate
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


def metric(base: str, line_start: str, headers: dict[str, str] | None = None) -> float | None:
    text = call(base, "GET", "/metrics", headers=headers)[2].decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextmanager
def serving_process(tmp: Path, **env: str) -> Iterator[str]:
    """`python -m serving` on a free loopback port; yields its base URL once it is live; stops it (SIGTERM)."""
    port = free_port()
    settings = {"MODEL_NAME": "flights_delay", "MLFLOW_SERVER_URL": "", "SERVING_PORT": str(port),
                "SERVING_CACHE_DIR": str(tmp / "cache"), "SERVING_PREDICTION_LOG_DIR": "", "STATE_DIR": str(tmp),
                "SERVING_POLL_SECONDS": "0.3", "PYTHONPATH": str(REPO), **env}
    log = (tmp / f"serving-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=REPO, env={**os.environ, **settings},
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base) or proc.poll() is not None, 60, "the server to listen")
        assert proc.poll() is None, (tmp / f"serving-{port}.log").read_text()
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _answers(base: str) -> bool:
    try:
        return call(base, "GET", "/v2/health/live")[0] == 200
    except OSError:
        return False


class Registry:
    """A real MLflow server; `publish` registers an ONNX payload as a new version and makes it champion."""

    def __init__(self, url: str, work: Path, pid: int) -> None:
        from mlflow import MlflowClient

        self.url, self.work, self.pid = url, work, pid  # pid: the `mlflow server` process
        self.client = MlflowClient(tracking_uri=url, registry_uri=url)
        self.experiment = self.client.create_experiment("serving-live")

    def publish(self, name: str, payload: bytes, sha256: str | None = None, champion: bool = True) -> str:
        run = self.client.create_run(self.experiment)
        path = self.work / run.info.run_id / "model.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(payload)
        self.client.log_artifact(run.info.run_id, str(path), artifact_path="model")
        self.client.set_terminated(run.info.run_id)
        if not self.client.search_registered_models(f"name='{name}'"):
            self.client.create_registered_model(name)
        mv = self.client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                              tags={"onnx.sha256": sha256 or hashlib.sha256(payload).hexdigest()})
        if champion:
            self.client.set_registered_model_alias(name, "champion", mv.version)
        return str(mv.version)

    def stored_file(self, name: str, version: str) -> Path:
        """Where the artifact store keeps the version's model.onnx (under the server's artifacts destination)."""
        run_id = self.client.get_model_version(name, version).run_id
        [path] = (self.work / "mlflow" / "artifacts").glob(f"*/{run_id}/artifacts/model/model.onnx")
        return path


@contextmanager
def mlflow_registry(work: Path) -> Iterator[Registry]:
    """A real MLflow server (SQLite store, proxied artifacts under `work`) on a free loopback port."""
    from examples.procs import mlflow_server_cmd

    port = free_port()
    cmd = mlflow_server_cmd(work, port, f"sqlite:///{work / 'mlflow.db'}")  # artifacts under work/mlflow
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _health(url), 120, "the MLflow server")
        yield Registry(url, work, proc.pid)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _health(url: str) -> bool:
    try:
        return call(url, "GET", "/health")[0] == 200
    except OSError:
        return False


def listeners(base: str) -> list[int]:
    """The pids of the processes listening on the server's port (one socket each)."""
    port = urlsplit(base).port
    return [c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
            and c.status == psutil.CONN_LISTEN]


def version_of(base: str) -> str | None:
    status, headers, _ = call(base, "GET", "/v2/health/ready")
    return headers.get("x-model-version") if status == 200 else None


class Load:
    """Threads posting /predict back to back on keep-alive connections, recording every answer."""

    def __init__(self, base: str, threads: int = 4) -> None:
        self.base, self.stop = base, threading.Event()
        self.answers: list[list[tuple[int, str | None, str | None]]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps({"records": [RECORD]})
        while not self.stop.is_set():
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = json.loads(resp.read())
                self.answers[i].append((resp.status, resp.getheader("x-model-version"), payload.get("model_version")))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.answers[i].append((0, None, repr(exc)))
                conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def seen(self, version: str) -> bool:
        return any(a[1] == version for answers in self.answers for a in answers[-20:])
