"""Through Airflow: a snapshot that breaks the contract stops the run at check_quality, fails closed."""

from __future__ import annotations

import json
import re
import socketserver
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class _SmtpSink(socketserver.StreamRequestHandler):
    """A real SMTP conversation that keeps each message it is sent (the on-call inbox)."""

    def handle(self) -> None:
        self.wfile.write(b"220 sink\r\n")
        lines: list[str] | None = None
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if lines is not None:  # inside DATA
                if line == ".":
                    self.server.messages.append("\n".join(lines))  # type: ignore[attr-defined]
                    lines = None
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line)
                continue
            verb = line[:4].upper()
            if verb == "DATA":
                lines = []
                self.wfile.write(b"354 end with .\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture()
def inbox(monkeypatch):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSink)
    server.messages = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SMTP", f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true")
    monkeypatch.setenv("ALERT_SMTP_CONN_ID", "alerts_smtp")
    monkeypatch.setenv("ALERT_EMAIL_TO", "oncall@example.com")
    yield server.messages  # type: ignore[attr-defined]
    server.shutdown()


def test_stale_data_stops_the_run_at_check_quality_and_the_champion_stays(dag, spec, capfd, inbox):
    from mlflow import MlflowClient

    from tasks import registry, tracking
    from tasks.quality_report import RESULT_FILE
    from tasks.report import report_dir

    experiment = tracking.use_experiment(spec.name)
    champion = registry.champion_version(spec.registered_model)
    versions = len(MlflowClient().search_model_versions(f"name='{spec.registered_model}'"))

    # given a database with June and July only, when a run asks for the week ending 4 August
    run = dag.test(logical_date=datetime(2013, 8, 4, tzinfo=UTC),
                   run_conf={"window_end": "2013-08-04", "window_days": 7})

    # then it stops at check_quality and nothing downstream runs
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed", states
    assert states.pop("extract") == "success" and states.pop("check_quality") == "failed", states
    assert set(states.values()) == {"upstream_failed"}, states
    # the task log shows the table, and the task fails with the summary as its message
    log = capfd.readouterr().out
    assert re.search(r"FAIL\s+error\s+freshness\s+scheduled_departure\s+newest 2013-07-31", log)
    assert "AirflowFailException: data contract flights.contract.yaml failed on 20130728T0000_20130804T0000" in log
    assert "\n- [freshness] column `scheduled_departure`: newest event 2013-07-31" in log
    # the failure callback left one summary line with a link to the log, and mailed it to on-call
    summary = re.search(r"FAILED train_and_deploy\.check_quality \(run [^)]+, try 1\): data contract .* -> http\S+",
                        log)
    assert summary, log[-3000:]
    assert len(inbox) == 1 and "oncall@example.com" in inbox[0]
    assert "FAILED train_and_deploy.check_quality" in inbox[0]
    # the result document is in the run's report folder, with freshness as the reason
    result = json.loads((report_dir(spec, run.run_id) / RESULT_FILE).read_text())
    assert not result["passed"]
    assert any(re.match(r"\[freshness\] column `scheduled_departure`: newest event 2013-07-31 .* h before the "
                        r"window end 2013-08-04 00:00, at most 24 h allowed", f) for f in result["failures"])
    # and on a FAILED MLflow run people can find by tag
    runs = MlflowClient().search_runs([experiment], f"tags.`airflow.dag_run_id` = '{run.run_id}'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "freshness" in runs[0].data.tags["quality.failed_rules"].split(",")
    assert runs[0].data.tags["quality.passed"] == "false"
    logged = MlflowClient().download_artifacts(runs[0].info.run_id, "quality/result.json")
    assert json.loads(Path(logged).read_text()) == result
    # no model was trained or registered; the champion (what serving follows) is unchanged
    assert registry.champion_version(spec.registered_model) == champion
    assert len(MlflowClient().search_model_versions(f"name='{spec.registered_model}'")) == versions


def test_a_misspelt_trigger_parameter_stops_the_run_before_any_work(dag, spec, capfd):
    from tasks import registry

    champion = registry.champion_version(spec.registered_model)
    # Airflow keeps conf keys the form does not declare; "epoch" would silently train with the spec's epochs.
    run = dag.test(logical_date=datetime(2013, 7, 2, tzinfo=UTC), run_conf={"window_end": "2013-07-01", "epoch": 8})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed" and states.pop("extract") == "failed", states
    assert set(states.values()) == {"upstream_failed"}, states
    log = capfd.readouterr().out
    assert "unknown trigger parameter(s) epoch; this DAG takes batch_size, epochs, gate," in log
    assert registry.champion_version(spec.registered_model) == champion
