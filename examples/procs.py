"""Start and wait for the local services (MLflow server, serving) the demo and `make up` use."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def http_json(url: str, body: Any = None, timeout: float = 5) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def wait_for(url: str, seconds: float) -> bool:
    """True once `url` answers 200 within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def start(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / f"{name}.log").open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop what `start` started, newest first (each with its process group)."""
    for proc in reversed(procs):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# MLflow 3's server also starts its job execution (a job runner and 7 huey consumers, for GenAI scorers and
# trace rollups, none of which this project uses): measured here, 10 processes and 2.45 GB RSS instead of
# 2 and 0.5 GB, ~20 CPU-seconds more at start, and consumers that poll on every core for good.
NO_MLFLOW_JOBS = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"


def mlflow_server_cmd(state_dir: Path, port: int, backend: str | None = None) -> list[str]:
    """`mlflow server` on `port`, without its job execution (set in the command, so no caller can miss it);
    its store is `backend`, else MLFLOW_TRACKING_URI, else one under `state_dir`."""
    backend = backend or os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{state_dir}/mlflow/mlflow.db")
    return [shutil.which("env") or "/usr/bin/env", NO_MLFLOW_JOBS,
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend,
            "--artifacts-destination", str(state_dir / "mlflow" / "artifacts")]
