"""The end of `make demo`: serve the champion, ask it about real flights, say where to look.

Starts an MLflow server (unless one answers already) and the serving process, sends a plain
JSON prediction request like any business application would, prints the answer, stops both.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.procs import http_json, mlflow_server_cmd, start, stop, wait_for  # noqa: E402
from tasks import settings  # noqa: E402
from tasks.config import load_spec  # noqa: E402
from tasks.snapshot import read_snapshot  # noqa: E402


def sample_records(n: int = 3) -> list[dict[str, object]]:
    """The newest flights of the newest snapshot, as the business app would send them."""
    spec = load_spec()
    newest = max((spec.data_root_path / spec.name).iterdir(), key=lambda p: p.name)
    frame = read_snapshot(newest, spec.features.all).to_pandas().tail(n)
    return json.loads(frame.to_json(orient="records"))


def main() -> int:
    state = settings.state_dir()
    mlflow_port = int(os.environ.get("MLFLOW_PORT", "5000"))
    serving_port = int(os.environ.get("SERVING_PORT", "8000"))
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    serving_url = f"http://127.0.0.1:{serving_port}"
    procs = []
    try:
        if not wait_for(f"{mlflow_url}/health", 1):
            procs.append(start("mlflow", mlflow_server_cmd(state, mlflow_port), state / "logs"))
            if not wait_for(f"{mlflow_url}/health", 90):
                print(f"MLflow server did not start; see {state / 'logs' / 'mlflow.log'}")
                return 1
        procs.append(start("serving", [sys.executable, "-m", "serving"], state / "logs",
                           {"MLFLOW_SERVER_URL": mlflow_url, "SERVING_PORT": str(serving_port)}))
        if not wait_for(f"{serving_url}/v2/health/ready", 60):
            print(f"serving is not ready; see {state / 'logs' / 'serving.log'}")
            return 1
        records = sample_records()
        status, body, headers = http_json(f"{serving_url}/predict", {"records": records})
        print(f"\nPOST {serving_url}/predict -> HTTP {status}, X-Model-Version: {headers.get('x-model-version')}")
        for rec, pred in zip(records, body.get("predictions", []), strict=False):
            print(f"  {rec['carrier']} {rec['origin']}->{rec['dest']} at {rec['sched_dep_hour']}h: "
                  f"P(arrives 15+ min late) = {pred['probability']:.3f}")
        print(f"  served by {body.get('model_name')} version {body.get('model_version')}")
        spec = load_spec()
        reports = sorted(spec.reports_root_path.glob("*/report.html"), key=lambda p: p.stat().st_mtime)
        print("\nWhere to look:")
        print(f"  MLflow (make up):         http://127.0.0.1:{mlflow_port}  store {settings.mlflow_tracking_uri()}")
        run_id = http_json(f"{serving_url}/v2/models/{body.get('model_name')}")[1].get("run_id")
        if run_id:
            run = http_json(f"{mlflow_url}/api/2.0/mlflow/runs/get?run_id={run_id}")[1]["run"]["info"]
            print(f"  Champion's training run:  http://127.0.0.1:{mlflow_port}/#/experiments/"
                  f"{run['experiment_id']}/runs/{run_id}")
        if reports:
            print(f"  Latest drift report:      {reports[-1]}")
        print(f"  Airflow UI:               make up, then http://127.0.0.1:{os.environ.get('AIRFLOW_PORT', '8080')} "
              "(DAG train_and_deploy; 'Drift reports' in the menu)")
        print(f"  Snapshots:                {spec.data_root_path / spec.name}")
        return 0 if status == 200 else 1
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
