"""monitor_production: requests through the real server's prediction log, drift against the champion's training
data, live metrics from the business DB, and the Asset event that starts train_and_deploy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from starlette.testclient import TestClient

from plugins import drift_reports as plugin
from serving.app import create_app
from serving.parquet import Column, write_table
from serving.registry import ModelCache, ModelRef
from serving.settings import Settings
from tasks import live_metrics, monitor, registry, retrain, tracking
from tasks.config import Monitoring, load_spec
from tasks.dataset import load_frame
from tasks.evaluate import download_onnx
from tasks.extract import extract_snapshot
from tasks.snapshot import Window
from tasks.train import train_model

REPO = Path(__file__).resolve().parent.parent
JUNE_WEEK = Window(datetime(2013, 6, 1), datetime(2013, 6, 8))
RETRAIN = "flights_delay_retrain"
LIVE_ROWS = 1200  # above 1000: Evidently's distance tests, steadier than p-values on a few hundred rows
# Six of fifteen features pushed far off (40 %, past the spec's 30 %): what a broken upstream feed looks like.
SHIFT = {"temp": 45.0, "humid": -40.0, "wind_speed": 25.0, "visib": -8.0, "distance": 2000.0, "seats": 250.0}


@pytest.fixture(scope="module")
def world(sqlite_url, tmp_path_factory, airflow_db):
    """A champion of its own (one epoch on June's first week) and the spec file the DAG will load."""
    root = tmp_path_factory.mktemp("monitor")
    raw = yaml.safe_load((REPO / "config" / "flights.yaml").read_text())
    raw.update(name="monitor_test", registered_model="monitor_test_model", data_root=str(root / "data"),
               reports_root=str(root / "reports"), contract=str(REPO / "config" / "flights.contract.yaml"))
    # A one-epoch champion scores ~0.63 live on clean traffic: keep its floor clear of that, so the DAG tests
    # are about drift (the live-metric rules have their own test below).
    raw["monitoring"]["min_roc_auc"] = 0.55
    (root / "spec.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(root / "spec.yaml")
    snapshot = Path(extract_snapshot(spec, JUNE_WEEK, sqlite_url)["path"])
    champion = train_model(spec, snapshot, {"passed": True}, {"epochs": 1})
    registry.promote(spec.registered_model, champion["model_version"])
    return {"spec": spec, "path": root / "spec.yaml", "root": root, "version": champion["model_version"],
            "flights": load_frame(spec, snapshot).sample(LIVE_ROWS, random_state=7)}


@pytest.fixture(scope="module")
def train_and_deploy_listens(world):
    """Every DAG in the metadata DB (as the DAG processor leaves it) and train_and_deploy unpaused: the
    scheduler queues asset runs only for unpaused DAGs."""
    import argparse

    from airflow.cli.commands.dag_command import dag_reserialize
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    dag_reserialize(argparse.Namespace(bundle_name=None))
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == "train_and_deploy").values(is_paused=False))


def _serve(world, log_dir: Path, requests: list[tuple[dict, str | None]]) -> tuple[datetime, datetime]:
    """Ask the served champion about each flight as the business app does: one request per flight, its id
    as the request id. Leaving the server completes the log files. Returns the span of the requests."""
    spec, version = world["spec"], world["version"]
    onnx = download_onnx(spec, version, world["root"] / f"onnx-{version}")
    cache = world["root"] / "serving-cache"
    ModelCache(cache, spec.registered_model).save(ModelRef(spec.registered_model, version, None), onnx.read_bytes())
    settings = Settings(model_name=spec.registered_model, registry_url=None, alias="champion", poll_seconds=3600,
                        cache_dir=cache, host="127.0.0.1", port=0, prediction_log_dir=log_dir,
                        prediction_log_flush_seconds=3600)
    began = datetime.now(UTC)
    with TestClient(create_app(settings)) as client:
        for record, request_id in requests:
            resp = client.post("/predict", json={"records": [record], "id": request_id})
            assert resp.status_code == 200, resp.text
    return began - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1)


def _requests(world, shift: dict[str, float] | None = None) -> list[tuple[dict, str | None]]:
    spec, flights = world["spec"], world["flights"].copy()
    for column, delta in (shift or {}).items():
        flights[column] = flights[column] + delta
    records = json.loads(flights[spec.features.all].to_json(orient="records"))
    return list(zip(records, flights[spec.key].astype(str), strict=True))


def _run_monitor(world, monkeypatch, log_dir: Path, span: tuple[datetime, datetime]):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PIPELINE_CONFIG", str(world["path"]))
    monkeypatch.setenv("SERVING_PREDICTION_LOG_DIR", str(log_dir))
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["monitor_production"]
    run = dag.test(run_conf={"interval_start": span[0].isoformat(), "interval_end": span[1].isoformat()})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return run, states


def _events(run_id: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                 .where(AssetModel.name == RETRAIN, AssetEvent.source_run_id == run_id))
        return [(e.source_dag_id, e.source_task_id, dict(e.extra), e.timestamp) for e in session.scalars(query)]


def _queued_for(dag_id: str) -> int:
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(AssetDagRunQueue)
                              .join(AssetModel, AssetDagRunQueue.asset_id == AssetModel.id)
                              .where(AssetModel.name == RETRAIN, AssetDagRunQueue.target_dag_id == dag_id))


@pytest.mark.slow
def test_injected_drift_reports_and_asks_train_and_deploy_for_a_retrain(world, train_and_deploy_listens,
                                                                     tmp_path, monkeypatch):
    # Given: the champion served flights whose weather, distance and seats arrive broken
    spec = world["spec"]
    span = _serve(world, tmp_path / "log", _requests(world, SHIFT))

    # When: the monitoring DAG looks at that interval
    run, states = _run_monitor(world, monkeypatch, tmp_path / "log", span)

    # Then: a drift report in the store, listed on the Drift reports page under this DAG
    assert str(run.state) == "success" and set(states.values()) == {"success"}, states
    folder = monitor.monitor_report_dir(spec, "monitor_production", run.run_id)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["dag_id"] == "monitor_production" and summary["status"] == "drift"
    assert set(SHIFT) <= {c["column"] for c in summary["columns"] if c["drifted"]}
    assert summary["current"]["rows"] == LIVE_ROWS and summary["prediction"]["drifted"]
    assert summary["reference"]["description"].startswith(f"the data champion v{world['version']} was trained on")
    [listed] = [e for e in plugin.list_reports(spec.reports_root_path) if e.report_id == folder.name]
    assert listed.summary["headline"].startswith("The data has drifted")

    # ... the decision and why, next to it, in MLflow and on the champion
    decision = json.loads((folder / retrain.DECISION_FILE).read_text())
    assert decision["retrain"] and len(decision["reasons"]) == 1, decision["checks"]
    assert decision["reasons"][0].startswith("6 of 15 features drifted (40% >= 30%): ")
    tags = registry.version_tags(spec.registered_model, world["version"])
    assert tags["monitor.decision"].startswith("retrain: ") and tags["monitor.run"] == run.run_id
    [mlflow_run] = tracking.client().search_runs(
        [tracking.use_experiment(f"{spec.name}_monitoring")], f"tags.`airflow.run_id` = '{run.run_id}'")
    assert mlflow_run.data.tags["monitor.retrain"] == "true" and mlflow_run.data.metrics["drifted_share"] >= 0.4

    # ... and the Asset event that train_and_deploy is scheduled on, with the reasons: a run is queued
    [(dag_id, task_id, extra, _)] = _events(run.run_id)
    assert (dag_id, task_id) == ("monitor_production", "trigger_retrain")
    assert extra["reasons"] == decision["reasons"] and extra["window_end"] == "2013-06-08"
    assert _queued_for("train_and_deploy") == 1


@pytest.mark.slow
def test_clean_traffic_keeps_the_champion_and_scores_it_on_arrived_outcomes(world, train_and_deploy_listens,
                                                                           tmp_path, monkeypatch):
    # Given: the champion served flights like those it learned from, plus flights whose outcome is not in
    # the business DB yet and one request without an id
    flights, spec = world["flights"], world["spec"]
    unknown = [(record, str(90_000_000 + i)) for i, (record, _) in enumerate(_requests(world)[:5])]
    span = _serve(world, tmp_path / "log", [*_requests(world), *unknown, (_requests(world)[0][0], None)])

    # When
    run, states = _run_monitor(world, monkeypatch, tmp_path / "log", span)

    # Then: the run succeeds, no retrain is asked for and no Asset event emitted
    assert str(run.state) == "success", states
    assert states["trigger_retrain"] == "skipped" and _events(run.run_id) == []
    decision = json.loads((monitor.monitor_report_dir(spec, "monitor_production", run.run_id)
                           / retrain.DECISION_FILE).read_text())
    assert not decision["retrain"] and decision["drift"]["status"] in ("ok", "warning")

    # ... and the champion's live metrics come from the outcomes that arrived (cancelled flights have none)
    live = decision["live"]
    landed = int(flights[spec.target.column].notna().sum())
    assert (live["rows"], live["keyed"], live["labelled"]) == (LIVE_ROWS + 6, LIVE_ROWS + 5, landed)
    assert live["pending"] == LIVE_ROWS + 5 - landed
    actual = (flights[spec.target.column] >= spec.target.threshold).mean()
    assert live["metrics"]["positive_rate"] == pytest.approx(actual)
    assert 0.55 < live["metrics"]["roc_auc"] < 1 and 0 < live["metrics"]["accuracy"] < 1
    assert live["newest_event"] < "2013-06-08" and decision["window_end"] == "2013-06-08"
    assert [c["rule"] for c in decision["checks"]] == ["drifted_share", "roc_auc"]


def test_the_prediction_log_is_read_for_the_interval_from_complete_files_only(spec, tmp_path):
    hour = datetime(2026, 11, 26, 19, tzinfo=UTC)

    def part(name: str, times: list[datetime], dest: str) -> None:
        folder = tmp_path / f"dt={times[0]:%Y-%m-%d}" / f"hr={times[0]:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        n = len(times)
        columns = [Column("ts", "timestamp_us", np.array([t.timestamp() * 1e6 for t in times], dtype=np.int64)),
                   Column("model_name", "string", [spec.registered_model] * n),
                   Column("model_version", "string", ["1"] * n), Column("request_id", "string", ["42"] * n),
                   *[Column(c, "float32", np.full(n, 1.5, dtype=np.float32)) for c in spec.features.numeric],
                   *[Column(c, "string", [dest if c == "dest" else "JFK"] * n) for c in spec.features.categorical],
                   Column("probability", "float32", np.full(n, 0.25, dtype=np.float32)),
                   Column("label", "int64", np.zeros(n, dtype=np.int64))]
        write_table(folder / name, columns, {})

    part("part-1.parquet", [hour - timedelta(minutes=1), hour, hour + timedelta(minutes=59)], "LAX")
    part("part-2.parquet", [hour + timedelta(hours=1)], "LAX")  # the next hour: outside
    part(".part-3.parquet.tmp", [hour + timedelta(minutes=5)], "LAX")  # still being written
    part("part-4.parquet", [hour + timedelta(minutes=30)], "")  # a category the model saw as unknown

    got = monitor.read_predictions(spec, tmp_path, monitor.Interval(hour, hour + timedelta(hours=1)))
    assert [t.minute for t in got["ts"]] == [0, 30, 59]
    assert got["dest"].tolist() == ["LAX", None, "LAX"] and got["temp"].tolist() == [1.5] * 3
    assert monitor.read_predictions(spec, tmp_path / "nothing", monitor.Interval(hour, hour + timedelta(hours=1))).empty


def test_ground_truth_arrives_by_key_in_chunks(spec, sqlite_url):
    import sqlalchemy as sa

    with sa.create_engine(sqlite_url).connect() as conn:  # cancelled flights included: no arr_delay yet
        flights = pd.read_sql("SELECT flight_id, arr_delay FROM flights ORDER BY flight_id LIMIT 1200 OFFSET 3000",
                              conn)
    ids = [str(i) for i in flights["flight_id"]] + ["999999999"]
    truth = live_metrics.fetch_ground_truth(spec, sqlite_url, ids)  # 1201 keys: three queries
    assert len(truth) == 1200 and list(truth.columns) == [spec.key, spec.event_time, spec.target.column]
    got = truth.set_index(spec.key)[spec.target.column].astype(float).sort_index()
    assert got.equals(flights.set_index(flights["flight_id"].astype(str))["arr_delay"].astype(float).sort_index())


def test_the_decision_names_its_reasons_and_what_it_could_not_judge():
    policy = Monitoring(max_drifted_share=0.3, min_rows=200, min_labelled_rows=100, min_roc_auc=0.62,
                        min_accuracy=0.7)
    drift = {"report": "r", "rows": 900, "champion_version": "3", "interval": "x", "drifted_share": 0.4,
             "features": 15, "drifted": ["temp", "humid", "wind_speed", "visib", "dest", "seats"]}
    live = {"labelled": 1500, "metrics": {"roc_auc": 0.58, "accuracy": 0.81}, "newest_event": "2013-12-31T23:59:00"}

    decision = retrain.decide_retrain(policy, drift, live)
    assert decision.retrain and decision.window_end == "2014-01-01"
    assert decision.reasons == [
        "6 of 15 features drifted (40% >= 30%): temp, humid, wind_speed, visib, dest, seats",
        "live ROC AUC 0.580 on 1,500 predictions with an arrived outcome is below 0.62"]
    assert [c.retrain for c in decision.checks] == [True, True, False]

    quiet = retrain.decide_retrain(policy, {"report": None, "rows": 12, "champion_version": "3", "interval": "x"},
                                   {"labelled": 40, "metrics": {"roc_auc": 0.5, "accuracy": 0.5}})
    assert not quiet.retrain and quiet.window_end is None
    assert [c.reason for c in quiet.checks] == [
        "drift not judged: 12 predictions by champion v3 in x, 200 needed",
        "live ROC AUC not judged: 40 predictions with an arrived outcome, 100 needed",
        "live accuracy not judged: 40 predictions with an arrived outcome, 100 needed"]


def test_train_and_deploy_runs_nightly_or_on_the_retrain_event_ending_where_the_monitor_saw_outcomes():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    import dags.train_and_deploy as train_dag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    train, watch = bag.dags["train_and_deploy"], bag.dags["monitor_production"]
    assert type(train.timetable).__name__ == "AssetOrTimeSchedule"
    assert train.timetable.timetable.expression == "0 3 * * *"
    assert [a.name for a in train.timetable.asset_condition.objects] == [RETRAIN]
    assert [o.name for o in watch.get_task("trigger_retrain").outlets] == [RETRAIN]
    assert train.max_active_runs == 1 and not train.catchup and not watch.catchup and watch.max_active_runs == 1
    assert watch.timetable.expression == "0 * * * *" and watch.doc_md and "monitoring" in watch.tags
    for task_id in ("report_drift", "compute_live_metrics", "decide_retrain"):
        assert watch.get_task(task_id).retries == 2 and watch.get_task(task_id).doc_md
    assert watch.get_task("trigger_retrain").retries == 0

    def event(window_end: str | None) -> AssetEventDagRunReferenceResult:
        return AssetEventDagRunReferenceResult(
            asset={"name": RETRAIN, "uri": RETRAIN, "extra": {}}, extra={"window_end": window_end},
            source_task_id="trigger_retrain", source_dag_id="monitor_production", source_run_id="r",
            source_map_index=-1, source_aliases=[], timestamp=datetime.now(UTC))

    events = TriggeringAssetEventsAccessor.build([event("2013-11-01"), event("2014-01-01"), event(None)])
    assert train_dag._retrain_window_end({"triggering_asset_events": events}) == datetime(2014, 1, 1)
    assert train_dag._retrain_window_end({"triggering_asset_events": TriggeringAssetEventsAccessor.build([])}) is None
