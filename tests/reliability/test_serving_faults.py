"""Serving faults 7-9 and 13: the model server as a real process following a real MLflow server's `champion` alias.

Numbers refer to the fault list in README ("Reliability"). A checksum mismatch and a version that is not a
model are in tests/test_serving_live.py::test_broken_versions_are_reported_and_the_old_one_keeps_serving.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pyarrow.dataset as ds
import pytest
from _tcp import TcpGate
from serving_live import (
    CATEGORICAL,
    NUMERIC,
    RECORD,
    Load,
    Registry,
    call,
    listeners,
    metric,
    serving_process,
    tiny_onnx,
    version_of,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.fixture()
def registry(live_registry) -> Registry:
    return live_registry  # tests/conftest.py: one MLflow server for all serving tests


def _probability(base: str) -> float:
    status, _, body = call(base, "POST", "/predict", {"records": [RECORD]})
    assert status == 200, body
    return float(json.loads(body)["predictions"][0]["probability"])


def _failed(load: Load) -> list[tuple[int, str | None, str | None]]:
    return [a for answers in load.answers for a in answers if a[0] != 200]


def test_7_alias_on_a_version_without_its_artifact_keeps_the_old_model_and_reports_it(registry, tmp_path):
    name = "missing_artifact_model"
    registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL))
    with serving_process(tmp_path, MODEL_NAME=name, MLFLOW_SERVER_URL=registry.url) as base:
        wait_until(lambda: version_of(base) == "1", 30, "version 1")
        with Load(base, threads=2) as load:
            # Version 2 is registered, then its file vanishes from the artifact store before the alias moves.
            v2 = registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.002), champion=False)
            registry.stored_file(name, v2).unlink()
            registry.client.set_registered_model_alias(name, "champion", v2)
            wait_until(lambda: metric(base, "serving_model_load_failures_total") == 1
                       or (metric(base, "serving_registry_poll_errors_total") or 0) >= 3, 30, "v2 to be tried")
            time.sleep(1.0)  # a few more polls
            failures, stale = metric(base, "serving_model_load_failures_total"), metric(base, "serving_model_stale")
            status, headers, body = call(base, "GET", "/v2/health/ready")
        info = metric(base, f'serving_model_info{{name="{name}",version="1"')
    # Safe: version 1 keeps answering every caller, readiness and metrics say so.
    assert status == 200 and headers["x-model-version"] == "1" and json.loads(body)["model_version"] == "1"
    assert info == 1 and _failed(load) == [] and {a[1] for answers in load.answers for a in answers} == {"1"}
    log = next(tmp_path.glob("serving-*.log")).read_text()
    assert "not in the artifact store (HTTP 404)" in log and "keeping v1" in log  # what is missing, what serves
    # Reported as what it is: a version that cannot be loaded, counted once, the server marked stale,
    # not a registry outage (the registry answers).
    assert (failures, stale) == (1, 1)
    assert "registry poll failed" not in log
    assert log.count(f"version 2 of {name} failed to load, keeping v1") == 1, log[-3000:]


def test_8_restarted_while_the_registry_is_down_it_serves_the_cached_champion(registry, tmp_path):
    """The registry is reached through a loopback gate: closed, its port refuses connections, as when the MLflow
    server is down (the server itself serves the other tests of this module meanwhile)."""
    name = "restart_model"
    registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.001))
    registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.002))
    host, port = registry.url.removeprefix("http://").split(":")
    with TcpGate(host, int(port)) as gate:
        gate.open()
        env = {"MODEL_NAME": name, "MLFLOW_SERVER_URL": f"http://127.0.0.1:{gate.port}"}
        with serving_process(tmp_path, **env) as base:
            wait_until(lambda: version_of(base) == "2", 30, "version 2 from the registry")
            before = _probability(base)
        gate.close()  # the registry goes down, then serving restarts
        began = time.perf_counter()
        with serving_process(tmp_path, **env) as base:
            wait_until(lambda: version_of(base) == "2", 30, "version 2 from the disk cache")
            ready_after = time.perf_counter() - began
            after = _probability(base)
            wait_until(lambda: (metric(base, "serving_registry_poll_errors_total") or 0) >= 2, 10, "poll errors")
            never = metric(base, "serving_registry_last_success_timestamp_seconds")
            gate.open()  # back: it follows the alias again
            registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.003))
            wait_until(lambda: version_of(base) == "3", 30, "version 3 once the registry is back")
    assert after == before and never == 0
    assert ready_after < 15, ready_after  # ~1 s from the cache (README); generous for a busy CI machine


def test_9_twenty_hot_swaps_under_concurrent_load_fail_no_request(registry, tmp_path):
    name = "swaps_model"
    for v in range(1, 22):  # registered up front; the swaps below are alias moves, as a promotion is
        assert registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL, 0.001 * v), champion=v == 1) == str(v)
    with serving_process(tmp_path, MODEL_NAME=name, MLFLOW_SERVER_URL=registry.url,
                         SERVING_POLL_SECONDS="0.1") as base:
        wait_until(lambda: version_of(base) == "1", 30, "version 1")
        with Load(base, threads=4) as load:
            for v in range(2, 22):  # each version is served before the alias moves on: 20 real swaps
                registry.client.set_registered_model_alias(name, "champion", str(v))
                wait_until(lambda v=v: load.seen(str(v)), 20, f"answers from version {v}")
        swaps, failures = metric(base, "serving_model_swaps_total"), metric(base, "serving_model_load_failures_total")
    answers = [a for thread in load.answers for a in thread]
    assert (swaps, failures) == (20, 0)
    assert _failed(load) == []  # zero failed requests
    assert all(header == body for _, header, body in answers)  # header and body name the same version
    for thread in load.answers:  # no caller ever goes back to an older version
        versions = [int(v) for _, v, _ in thread]
        assert versions == sorted(versions)
    assert {int(v) for _, v, _ in answers} == set(range(1, 22))
    print(f"{len(answers)} requests across 20 swaps, none failed")


def test_13_killed_with_a_prediction_log_file_open_the_next_start_completes_it(registry, tmp_path):
    name = "killed_model"
    registry.publish(name, tiny_onnx(NUMERIC, CATEGORICAL))
    logs = tmp_path / "predictions"
    env = {"MODEL_NAME": name, "MLFLOW_SERVER_URL": registry.url, "SERVING_PREDICTION_LOG_DIR": str(logs),
           "SERVING_PREDICTION_LOG_FLUSH_SECONDS": "3600"}  # the file stays open until the process is killed
    with serving_process(tmp_path, **env) as base:
        wait_until(lambda: version_of(base) == "1", 30, "version 1")
        answers = [call(base, "POST", "/predict", {"records": [RECORD], "id": f"r{i}"})[0] for i in range(50)]
        wait_until(lambda: metric(base, "serving_prediction_log_rows_total") == 50, 10, "50 rows written")
        [pid] = listeners(base)
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would: no shutdown, no footer written
        psutil.Process(pid).wait(10)
    [orphan] = logs.glob("dt=*/hr=*/.part-*.parquet.tmp")
    assert not list(logs.glob("dt=*/hr=*/part-*.parquet"))  # nothing readable was left, nothing half-written
    hours_ago = time.time() - 3 * 3600  # long enough untouched for any writer to be gone
    for path in orphan.parent.iterdir():
        os.utime(path, (hours_ago, hours_ago))
    with serving_process(tmp_path, **env) as base:  # the next start completes it before it listens
        recovered = metric(base, "serving_prediction_log_recovered_rows_total")
    table = ds.dataset(logs, format="parquet", partitioning="hive").to_table()
    assert answers == [200] * 50 and recovered == 50
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(50))
    assert [p.name for p in orphan.parent.iterdir()] == [orphan.name[1:].removesuffix(".tmp")]  # no journal left
