"""Injected faults: each fails safe, says why, loses nothing, and leaves the champion as it was.

Numbers refer to the fault list in README ("Reliability"); faults covered elsewhere are listed there
with their test names.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import _workers
import pytest
from conftest import JUNE_WEEK
from live_airflow import free_port

from tasks import registry, tracking
from tasks.extract import extract_snapshot
from tasks.promotion import promote_verdict, read_log
from tasks.train import train_model

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(spec, sqlite_url, tmp_path_factory):
    """A model name and reports store of their own (the registry is shared with other tests)."""
    root = tmp_path_factory.mktemp("faults")
    own = spec.model_copy(update={"name": "faults_test", "registered_model": "faults_test_model",
                                  "reports_root": str(root / "reports")})
    snapshot = Path(extract_snapshot(own, JUNE_WEEK, sqlite_url, root / "data")["path"])
    return own, snapshot, root


def test_4_a_killed_training_leaves_no_run_running_forever(world):
    spec, snapshot, _ = world
    lineage = {"airflow.dag_id": "train_and_deploy", "airflow.run_id": "killed__1"}
    child = multiprocessing.get_context("spawn").Process(target=_workers.train_forever, args=(str(snapshot), lineage))
    child.start()
    experiment = tracking.use_experiment(spec.name)
    query = "tags.`airflow.run_id` = 'killed__1'"
    deadline = time.monotonic() + 120
    while not (runs := tracking.client().search_runs([experiment], query)):
        assert child.is_alive() and time.monotonic() < deadline, "the training never started its run"
        time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)  # the worker dies: no handler, no cleanup
    child.join()
    [orphan] = runs
    assert tracking.client().get_run(orphan.info.run_id).info.status == "RUNNING"

    # The task's retry trains again and first closes what the dead attempt left open.
    retried = train_model(spec, snapshot, {"passed": True}, {"epochs": 1}, lineage=lineage)
    assert tracking.client().get_run(orphan.info.run_id).info.status == "FAILED"
    assert tracking.client().get_run(retried["run_id"]).info.status == "FINISHED"


def test_11_two_extracts_of_one_window_at_once_publish_one_whole_snapshot(world, sqlite_url, tmp_path):
    spec = world[0]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        prints = pool.map(_workers.extract, [(spec, JUNE_WEEK, sqlite_url, tmp_path)] * 2)
    assert prints[0] == prints[1]
    folder = tmp_path / spec.name
    assert [p.name for p in folder.iterdir()] == [JUNE_WEEK.slug]  # no temp folder left, nothing half-written
    manifest = json.loads((folder / JUNE_WEEK.slug / "manifest.json").read_text())
    assert manifest["fingerprint"] == prints[0]
    assert sorted(f["path"] for f in manifest["files"]) == sorted(
        p.name for p in (folder / JUNE_WEEK.slug).glob("*.parquet"))


def test_5_mlflow_down_during_promote_moves_nothing_and_the_retry_promotes_once(world, state_dir, monkeypatch):
    from examples.procs import mlflow_server_cmd, wait_for

    spec, snapshot, _ = world
    candidate = train_model(spec, snapshot, {"passed": True}, {"epochs": 2, "batch_size": 256})
    before = registry.champion_version(spec.registered_model)
    verdict = {"promote": True, "candidate": candidate["model_version"], "mode": "enforce", "status": "passed"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = os.environ["MLFLOW_TRACKING_URI"]  # the server serves this same store
    server_cmd = mlflow_server_cmd(state_dir, port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, as a task attempt would
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import mlflow

    mlflow.set_tracking_uri(url)
    # MLflow is down: the promote attempt fails and nothing moved.
    with pytest.raises(Exception, match=r"(?i)connect|refused|max retries"):
        promote_verdict(spec, verdict, "promote__flaky")
    assert read_log(spec) == [] or all(e["dag_run_id"] != "promote__flaky" for e in read_log(spec))

    server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    try:
        assert wait_for(f"{url}/health", 90), "MLflow server did not start"
        assert registry.champion_version(spec.registered_model) == before
        # It is back: the retried task promotes, and a second retry changes nothing.
        promote_verdict(spec, verdict, "promote__flaky")
        promote_verdict(spec, verdict, "promote__flaky")
        assert registry.champion_version(spec.registered_model) == candidate["model_version"]
        assert [e["dag_run_id"] for e in read_log(spec)].count("promote__flaky") == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        mlflow.set_tracking_uri(store)

