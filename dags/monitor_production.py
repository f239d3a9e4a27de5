"""monitor_production: report_drift + compute_live_metrics -> decide_retrain -> trigger_retrain (Asset event).

Wiring only: every task body calls `tasks.monitor`; heavy libraries are imported inside task bodies so
parsing this file stays fast. XCom carries small digests (counts, shares, reasons, a folder), never rows.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task

from dags import common

# train_and_deploy is scheduled on this asset besides its nightly cron: an event here starts a retrain.
RETRAIN = Asset("flights_delay_retrain")
# Each run looks at the predictions of its data interval: the hour before it runs, by default.
SCHEDULE = os.environ.get("MONITOR_SCHEDULE", "0 * * * *")
# The prediction log, MLflow and the business DB are I/O: a blip is retried, a deterministic failure is not.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                              "max_retry_delay": timedelta(minutes=5)}

DOC = """
### Watch the served model in production
Every hour this run takes the flights the serving model (the **champion**) was asked about during
the past hour and compares them with the flights it learned from: a drift report, listed under
**Drift reports** next to the training runs' reports. Once flights have landed, it also checks how
often the champion was right (live ROC AUC and accuracy over the last week of answers).

When too much has changed, or the answers got worse than the spec allows (`monitoring:` in
`config/flights.yaml`), it asks `train_and_deploy` for a new model (the `flights_delay_retrain`
asset event) and writes down why: `decision.json` next to the report, a run in the MLflow
experiment `flights_monitoring`, and `monitor.decision` on the champion's model version.
"""


def _param_time(params: dict[str, Any], name: str) -> datetime | None:
    try:
        return datetime.fromisoformat(params[name]) if params.get(name) else None
    except ValueError as exc:
        common.fail(ValueError(f"{name}={params[name]!r} is not an ISO 8601 time: {exc}"))


def _interval() -> Any:
    from tasks.monitor import Interval, MonitoringError

    ctx = get_current_context()
    params, run = ctx["params"], ctx["dag_run"]
    # A manual run without a logical date has no data interval: it looks at the hour before it was asked for.
    bounds = (run.data_interval_start, run.data_interval_end)
    length = bounds[1] - bounds[0] if bounds[0] and bounds[1] else timedelta(hours=1)
    end = _param_time(params, "interval_end") or run.data_interval_end or run.run_after
    start = _param_time(params, "interval_start") or end - length
    try:
        return Interval(start, end)
    except MonitoringError as exc:
        common.fail(exc)


def _monitor(call: Any) -> Any:
    from airflow.sdk.exceptions import AirflowSkipException

    from tasks.monitor import MonitoringError, NothingToMonitor

    try:
        return call()
    except NothingToMonitor as exc:
        raise AirflowSkipException(str(exc)) from exc
    except MonitoringError as exc:
        common.fail(exc)


@dag(
    schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["mlops", "flights", "monitoring"],
    default_args=common.default_args(),
    params={
        "interval_start": Param(None, type=["null", "string"], format="date-time", title="From (UTC)",
                                description="First moment of the predictions to check, e.g. "
                                            "2026-11-26T18:00:00+00:00; empty = the run's hour."),
        "interval_end": Param(None, type=["null", "string"], format="date-time", title="Until (UTC)",
                              description="End (exclusive) of the predictions to check; empty = the run's hour."),
        "metrics_hours": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=2160,
                               title="Live metrics over (hours)",
                               description="Answers this far back before 'Until' are scored against what actually "
                                           "happened; empty = the spec's monitoring.ground_truth_hours (a week)."),
    },
)
def monitor_production() -> None:
    @task(**IO_RETRIES, doc_md="Compare the flights the champion was asked about in this interval with the flights "
                               "it was trained on, its answers included. Open the report under *Drift reports*.")
    def report_drift() -> dict[str, Any]:
        from tasks import monitor

        ctx = get_current_context()
        return _monitor(lambda: monitor.report_drift(common.spec(), monitor.prediction_log_dir(), _interval(),
                                                     ctx["run_id"], dag_id=ctx["dag"].dag_id))

    @task(**IO_RETRIES, doc_md="Score the champion's answers against what actually happened, for the flights that "
                               "have landed since: live ROC AUC and accuracy.")
    def compute_live_metrics() -> dict[str, Any]:
        from tasks import live_metrics, monitor

        spec, params = common.spec(), get_current_context()["params"]
        url = common.connection_url(spec.monitoring.ground_truth.connection) if spec.monitoring.ground_truth else None
        return _monitor(lambda: live_metrics.compute_live_metrics(
            spec, monitor.prediction_log_dir(), _interval().end, url, hours=params.get("metrics_hours")))

    @task(**IO_RETRIES, doc_md="Apply the spec's monitoring rules and write down the decision and why: "
                               "decision.json next to the report, an MLflow run, a tag on the champion.")
    def decide_retrain(drift: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
        from tasks import retrain

        spec, ctx = common.spec(), get_current_context()
        decision = retrain.decide_retrain(spec.monitoring, drift, live)
        record = retrain.record_decision(spec, decision, drift, live, ctx["run_id"], dag_id=ctx["dag"].dag_id)
        for check in decision.checks:
            print(f"{'RETRAIN' if check.retrain else 'ok':<8} {check.rule:<16} {check.reason}")
        print(f"decision: {'retrain' if decision.retrain else 'keep the champion'} (recorded in {record})")
        return {**decision.to_dict(), "record": record, "champion_version": drift.get("champion_version")}

    @task(outlets=[RETRAIN], doc_md="When the decision says so, ask train_and_deploy for a new model (asset "
                                    "event `flights_delay_retrain`, carrying the reasons); skipped otherwise.")
    def trigger_retrain(decision: dict[str, Any]) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["retrain"]:
            raise AirflowSkipException("no retrain: " + "; ".join(c["reason"] for c in decision["checks"]))
        ctx = get_current_context()
        ctx["outlet_events"][RETRAIN].extra = {
            "reasons": decision["reasons"], "window_end": decision["window_end"],
            "champion_version": decision["champion_version"], "decision": decision["record"],
            "source_run_id": ctx["run_id"]}
        print(f"retrain asked for: {'; '.join(decision['reasons'])}")

    trigger_retrain(decide_retrain(report_drift(), compute_live_metrics()))


monitor_production()
