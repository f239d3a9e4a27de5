"""The end of `make up`: wait for Airflow, MLflow and serving, then print where they are and the login."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.procs import wait_for  # noqa: E402
from tasks import settings  # noqa: E402


def main() -> int:
    ports = {name: os.environ.get(f"{name.upper()}_PORT", default)
             for name, default in (("airflow", "8080"), ("mlflow", "5000"), ("serving", "8000"))}
    checks = {"airflow": f"http://127.0.0.1:{ports['airflow']}/api/v2/monitor/health",
              "mlflow": f"http://127.0.0.1:{ports['mlflow']}/health",
              "serving": f"http://127.0.0.1:{ports['serving']}/v2/health/live"}
    logs = settings.state_dir() / "logs"
    failed = [name for name, url in checks.items() if not wait_for(url, 180)]
    for name in failed:
        print(f"{name} did not come up; see {logs / (name + '.log')}")
    passwords = Path(os.environ.get("AIRFLOW_HOME", settings.state_dir() / "airflow")) / \
        "simple_auth_manager_passwords.json.generated"
    login = json.loads(passwords.read_text()) if passwords.exists() else {}
    print(f"Airflow UI  http://127.0.0.1:{ports['airflow']}  login: "
          + (", ".join(f"{u} / {p}" for u, p in login.items()) or f"see {passwords}"))
    print(f"MLflow UI   http://127.0.0.1:{ports['mlflow']}")
    print(f"Serving     http://127.0.0.1:{ports['serving']}/predict  (ready once a champion exists)")
    print("Stop everything with: make down")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
