"""Fault 2: the flights database is unreachable for the extract task's first attempts, or throughout.

Real Airflow retries (`dag.test()` re-runs an `up_for_retry` task once its backoff has passed), a real
PostgreSQL behind a loopback port where nothing listens until the test opens it: each attempt meets a
real `connection refused`. The message of a lasting outage is checked on its own, without Airflow, in
`tests/test_extract.py::test_unreachable_database_error_names_it_without_password`.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from _tcp import TcpGate
from conftest import POSTGRES_URL

from tasks import seed

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SECRET = "n0t-in-the-LOG"  # PostgreSQL here trusts local connections: the password travels, unchecked
CONF = {"window_end": "2013-06-22", "window_days": 7}


@pytest.fixture()
def extract_only(dag, tmp_path, monkeypatch):
    """train_and_deploy cut down to `extract`, its retries kept but their delay shortened (20 s -> 1 s, same
    exponential backoff), reading PostgreSQL through a gate that starts closed."""
    seed.seed_database(POSTGRES_URL, months={6})
    raw = yaml.safe_load((REPO / "config" / "flights.yaml").read_text())
    raw.update(name="retry_test", data_root=str(tmp_path / "data"), reports_root=str(tmp_path / "reports"))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "config" / "flights.contract.yaml", tmp_path)
    monkeypatch.setenv("PIPELINE_CONFIG", str(tmp_path / "spec.yaml"))
    gate = TcpGate("127.0.0.1", 5432)
    monkeypatch.setenv("AIRFLOW_CONN_FLIGHTS_DB", f"postgres://root:{SECRET}@127.0.0.1:{gate.port}/test")
    task = dag.get_task("extract")
    assert (task.retries, task.retry_exponential_backoff) == (2, 2.0)
    task.retry_delay = timedelta(seconds=1)
    only = dag.partial_subset(["extract"], include_upstream=False)
    outage = Outage(gate)
    only.get_task("extract").on_retry_callback = [outage.retried]  # a list, as Airflow keeps it after parsing
    with gate:
        yield only, outage


class Outage:
    """Counts the extract's retries (Airflow's on_retry_callback) and ends the outage after `lasts` of them."""

    def __init__(self, gate: TcpGate) -> None:
        self.gate = gate
        self.tries_failed: list[int] = []
        self.lasts: int | None = None

    def retried(self, context) -> None:  # noqa: ANN001 - Airflow's context
        self.tries_failed.append(context["ti"].try_number)
        if len(self.tries_failed) == self.lasts:
            self.gate.open()  # the database is back before the next attempt


def _attempts(out: str) -> list[tuple[str, str]]:
    """(state it ended in, its log) per attempt: dag.test() runs tasks in this process, their logs are our output."""
    parts = re.split(r"new_state=(\w+)", out)
    return list(zip(parts[1::2], parts[0::2], strict=False))


def test_2_database_unreachable_for_two_attempts_then_the_third_extracts(extract_only, tmp_path, capfd):
    dag, outage = extract_only
    gate, outage.lasts = outage.gate, 2
    run = dag.test(logical_date=datetime(2013, 6, 22, tzinfo=UTC), run_conf=CONF)

    [ti] = run.get_task_instances()
    assert (str(ti.state), ti.try_number, outage.tries_failed) == ("success", 3, [1, 2])
    assert str(run.state) == "success" and gate.connections >= 1
    [snapshot] = (tmp_path / "data" / "retry_test").iterdir()  # one whole snapshot, nothing left by the failures
    assert (snapshot / "manifest.json").exists()
    out = capfd.readouterr().out
    attempts = _attempts(out)
    assert [state for state, _ in attempts] == ["up_for_retry", "up_for_retry", "success"]
    reason = f"cannot connect to postgresql+psycopg2://root:***@127.0.0.1:{gate.port}/test"
    for _, log in attempts[:2]:  # each failed attempt names the database and why, never the password
        assert reason in log and "Connection refused" in log, log[-3000:]
    rows = json.loads((snapshot / "manifest.json").read_text())["rows"]
    assert rows > 0 and f"snapshot {snapshot}: {rows} rows" in attempts[2][1]
    assert SECRET not in out


def test_2_database_unreachable_throughout_fails_after_the_retries_naming_it(extract_only, tmp_path, capfd):
    dag, outage = extract_only
    gate = outage.gate
    run = dag.test(logical_date=datetime(2013, 6, 22, tzinfo=UTC), run_conf=CONF)

    [ti] = run.get_task_instances()
    assert (str(ti.state), ti.try_number, outage.tries_failed) == ("failed", 3, [1, 2])
    assert str(run.state) == "failed"
    assert not (tmp_path / "data" / "retry_test").exists() or not any((tmp_path / "data" / "retry_test").iterdir())
    out = capfd.readouterr().out
    attempts = _attempts(out)
    assert [state for state, _ in attempts] == ["up_for_retry", "up_for_retry", "failed"]
    reason = f"cannot connect to postgresql+psycopg2://root:***@127.0.0.1:{gate.port}/test"
    assert all(reason in log and "Connection refused" in log for _, log in attempts)
    # The one-line alert of the final failure, with the same reason, and no password anywhere.
    assert re.search(rf"FAILED train_and_deploy.extract \(run {re.escape(run.run_id)}, try 3\): .*{re.escape(reason)}",
                     out), out[-3000:]
    assert SECRET not in out
