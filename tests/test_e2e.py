"""The whole product on a small slice: two DAG runs through Airflow, then a served prediction."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from live_airflow import free_port
from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(dag, day: datetime, conf: dict) -> dict[str, str]:
    run = dag.test(logical_date=day.replace(tzinfo=UTC), run_conf=conf)
    return {"run": str(run.state), **{ti.task_id: str(ti.state) for ti in run.get_task_instances()}}


@pytest.fixture(scope="module")
def mlflow_server(state_dir):
    sys.path.insert(0, str(REPO))
    from examples.procs import mlflow_server_cmd, wait_for

    port = free_port()
    proc = subprocess.Popen(mlflow_server_cmd(state_dir, port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    try:
        assert wait_for(f"http://127.0.0.1:{port}/health", 90), "MLflow server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_pipeline_promotes_fails_closed_and_serves_the_champion(dag, spec, state_dir, mlflow_server, tmp_path,
                                                              monkeypatch):
    from mlflow import MlflowClient

    from serving.app import create_app
    from serving.settings import Settings
    from tasks import registry, tracking

    conf = {"window_days": 14, "epochs": 2}
    first = _run(dag, datetime(2013, 6, 22), conf)
    assert set(first.values()) == {"success"}, first
    tracking.use_experiment(spec.name)
    champion = registry.champion_version(spec.registered_model)
    assert champion == "1"
    from tasks.promotion import read_log

    [entry] = read_log(spec)  # the promotion is on the record
    assert [entry[k] for k in ("kind", "from_version", "to_version", "mode")] == ["promote", None, "1", "enforce"]

    # Rerunning an unchanged window registers nothing new; promotion has nothing to do.
    again = _run(dag, datetime(2013, 6, 22), conf)
    assert again.pop("promote") == "skipped", again
    assert set(again.values()) == {"success"}, again
    assert len(MlflowClient().search_model_versions(f"name='{spec.registered_model}'")) == 1

    # A candidate that fails a gate rule stops the run at `gate`: nothing is promoted.
    strict = (REPO / "config" / "flights.yaml").read_text().replace("min: {roc_auc: 0.6}", "min: {roc_auc: 0.99}")
    (tmp_path / "strict.yaml").write_text(strict)
    shutil.copy(REPO / "config" / "flights.contract.yaml", tmp_path)  # the spec names it relative to itself
    monkeypatch.setenv("PIPELINE_CONFIG", str(tmp_path / "strict.yaml"))
    rejected = _run(dag, datetime(2013, 7, 6), conf)
    monkeypatch.delenv("PIPELINE_CONFIG")
    assert rejected["run"] == "failed" and rejected["gate"] == "failed", rejected
    assert rejected["promote"] == "upstream_failed", rejected
    assert registry.champion_version(spec.registered_model) == champion
    challenger = str(MlflowClient().get_model_version_by_alias(spec.registered_model, "challenger").version)
    assert challenger == "2"

    reports = [p.parent.name for p in (state_dir / "reports").glob("*/report.html")]
    assert len(reports) == 3

    settings = Settings(model_name=spec.registered_model, registry_url=mlflow_server, alias="champion",
                        poll_seconds=3600, cache_dir=state_dir / "serving-cache", host="127.0.0.1", port=0)
    with TestClient(create_app(settings)) as client:
        record = {"distance": 2475, "sched_dep_hour": 17, "carrier": "AA", "origin": "JFK", "dest": "LAX",
                  "temp": 80.0, "humid": 60.0, "wind_speed": 10.0, "precip": 0.0, "visib": 10.0,
                  "plane_year": 2005, "seats": 180, "dest_lat": 33.94, "dest_lon": -118.4, "dest_alt": 126}
        resp = client.post("/predict", json={"records": [record]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model_version"] == champion
    assert resp.headers["x-model-version"] == champion
