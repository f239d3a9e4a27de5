"""A real `airflow api-server` on a loopback port for tests, with the simple auth manager's admin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_server(tmp: Path, dags_folder: Path, extra_env: dict[str, str] | None = None,
               reserialize: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (base URL, admin JWT); the server and its metadata DB live under `tmp`."""
    port, home = free_port(), tmp / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "PYTHONPATH": str(REPO),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(32).hex(),
        **(extra_env or {}),
    })
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, timeout=180, capture_output=True)
    if reserialize:  # the API server triggers only DAGs whose serialized form is in the database
        subprocess.run([airflow, "dags", "reserialize"], env=env, check=True, timeout=180, capture_output=True)
    log_path = tmp / "api-server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([airflow, "api-server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if client.get("/api/v2/monitor/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "api-server did not start"
                time.sleep(0.5)
            token = client.post("/auth/token", json={"username": "admin", "password": PASSWORD}).json()["access_token"]
        yield base, token
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
