"""train_and_deploy: extract -> check_quality -> train -> evaluate -> drift_report -> gate -> promote.

Wiring only: every task body calls `tasks.*`; heavy libraries are imported inside task bodies
so parsing this file stays fast. XCom carries references (paths, run ids, versions), not data.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from dags import common

# monitor_production emits this (same name there) when the champion drifted or got worse live: a retrain.
RETRAIN = Asset("flights_delay_retrain")

DOC = """
### Train and deploy the flight-delay model
Every night, when `monitor_production` asks for a retrain (the served model drifted or got worse
live), or when you click **Trigger**, this run takes the training window that ends at the run's
date (a retrain: after the newest landed flights the monitor saw; or at *window_end*), snapshots
it from the flights database, checks the data contract, trains a model, evaluates it on the newest
flights, writes a drift report, and promotes the model to **champion** only when it passes the
gate. A failed step never changes what is served.
"""


def _window(params: dict[str, Any], spec: Any) -> Any:
    from datetime import datetime

    from tasks.snapshot import Window

    ctx = get_current_context()
    if params.get("window_end"):
        end = datetime.fromisoformat(params["window_end"])
    else:
        # A manual or asset-triggered run has no data interval: a retrain ends after the newest flights whose
        # outcome monitor_production saw; a manual run ends when it was asked for.
        run = ctx["dag_run"]
        end_at = run.data_interval_end or _retrain_window_end(ctx) or run.run_after
        # Source timestamps are naive local times; the interval end is compared as a wall clock.
        end = end_at.replace(tzinfo=None)
    if params.get("window_start"):
        start = datetime.fromisoformat(params["window_start"])
        if start >= end:
            common.fail(ValueError(f"window_start {start:%Y-%m-%d} is not before the window end {end:%Y-%m-%d}"))
        return Window(start, end)
    days = params.get("window_days") or spec.window_days
    return Window(end - timedelta(days=days), end)


def _retrain_window_end(ctx: Any) -> Any:
    from datetime import datetime

    events = ctx["triggering_asset_events"].get(RETRAIN, [])
    ends = [datetime.fromisoformat(e.extra["window_end"]) for e in events if (e.extra or {}).get("window_end")]
    return max(ends, default=None)


def _check_conf(ctx: Any) -> None:
    """A trigger's conf keys must be the form's params: a misspelt `epoch` would otherwise be ignored."""
    # Against the declared form, not ctx["params"]: Airflow adds a conf's extra keys to the params.
    unknown = sorted(set(ctx["dag_run"].conf or {}) - set(PARAMS))
    if unknown:
        common.fail(ValueError(f"unknown trigger parameter(s) {', '.join(unknown)}; this DAG takes "
                         f"{', '.join(sorted(PARAMS))}"))


# The trigger form (Params with JSON schema): the UI renders it, the REST API validates against it.
PARAMS = {
    "window_end": Param(None, type=["null", "string"], format="date", title="Window end",
                        description="Last day (exclusive) of the training window; empty = the run's date."),
    "window_start": Param(None, type=["null", "string"], format="date", title="Window start",
                          description="First day of the training window; empty = window end minus the window "
                                      "length."),
    "window_days": Param(None, type=["null", "integer"], minimum=1, maximum=366, title="Window length (days)",
                         description="Days of flights to train on; empty = the pipeline spec's value."),
    "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=200, title="Epochs"),
    "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                           title="Learning rate"),
    "batch_size": Param(None, type=["null", "integer"], minimum=16, maximum=65536, title="Batch size"),
    # One object, so the form itself refuses an override without a justification (JSON schema if/then).
    "gate": Param(
        {"mode": "enforce", "justification": None}, type="object", title="Promotion gate",
        description='mode: "enforce" (promote only on pass), "dry_run" (evaluate and record, never '
                    'promote) or "override" (promote despite failed rules; needs "justification", '
                    "10+ characters, recorded with your user name).",
        properties={"mode": {"type": "string", "enum": ["enforce", "dry_run", "override"]},
                    "justification": {"type": ["null", "string"]}},
        required=["mode"], additionalProperties=False,
        **{"if": {"properties": {"mode": {"const": "override"}}},
           "then": {"properties": {"justification": {"type": "string", "minLength": 10, "pattern": r"\S"}},
                    "required": ["justification"]}},
    ),
}


@dag(
    # Nightly, and whenever monitor_production asks for a retrain (data-aware scheduling).
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(os.environ.get("TRAIN_SCHEDULE", "0 3 * * *"),
                                                                timezone="UTC"), assets=[RETRAIN]),
    # Off by default: a new deployment does not train once per missed night; TRAIN_CATCHUP=1 backfills them.
    catchup=os.environ.get("TRAIN_CATCHUP", "0") == "1",
    max_active_runs=1,
    doc_md=DOC,
    tags=["mlops", "flights"],
    default_args=common.default_args(),
    params=PARAMS,
)
def train_and_deploy() -> None:
    @task(retries=2, retry_delay=timedelta(seconds=20), retry_exponential_backoff=2.0,
          doc_md="Snapshot the training window from the flights database and the airports file.")
    def extract() -> str:
        from tasks.config import SqlSource
        from tasks.extract import EmptyExtractError, extract_snapshot
        from tasks.snapshot import SchemaError

        _check_conf(get_current_context())
        spec = common.spec()
        url = common.connection_url(spec.primary.connection) if isinstance(spec.primary, SqlSource) else None
        try:
            manifest = extract_snapshot(spec, _window(get_current_context()["params"], spec), url)
        except (EmptyExtractError, SchemaError) as exc:
            common.fail(exc)  # the data says so: retrying gives the same answer; an unreachable source retries
            raise
        print(f"snapshot {manifest['path']}: {manifest['rows']} rows, fingerprint {manifest['fingerprint']}")
        return str(manifest["path"])

    @task(doc_md="Check the snapshot against the data contract (config/flights.contract.yaml); stop here if "
                 "an error rule breaks. The table of rules is in the log, the result in the run's report folder.")
    def check_quality(snapshot: str) -> dict[str, Any]:
        from tasks.config import as_path
        from tasks.quality import QualityError, evaluate_contract, format_table, raise_for_failures
        from tasks.quality_report import log_failed_run, write_result

        spec, run_id = common.spec(), get_current_context()["run_id"]
        result = evaluate_contract(spec, as_path(snapshot))
        print(format_table(result))
        print(f"result document: {write_result(spec, result, run_id)}")
        try:
            return raise_for_failures(result)  # a passing result travels on to train's MLflow run
        except QualityError as exc:
            print(f"logged on the FAILED MLflow run {log_failed_run(spec, result, run_id)}")
            common.fail(exc)
            raise

    # TRAIN_QUEUE=gpu routes training to a GPU worker (docker compose --profile gpu); without one it stays
    # on the default queue (LocalExecutor ignores queues). The pool (one slot per GPU) keeps trainings
    # from sharing a card; `make` and compose create it.
    @task(queue=os.environ.get("TRAIN_QUEUE", "default"), pool=os.environ.get("TRAIN_POOL", "gpu"),
          doc_md="Train the model (GPU when present) and register it in MLflow as a candidate.")
    def train(snapshot: str, quality: dict[str, Any]) -> dict[str, Any]:
        from tasks.config import as_path
        from tasks.train import train_model

        context = get_current_context()
        params = context["params"]
        overrides = {k: params.get(k) for k in ("epochs", "learning_rate", "batch_size")}
        lineage = {"airflow.dag_id": context["dag"].dag_id, "airflow.run_id": context["run_id"]}
        return train_model(common.spec(), as_path(snapshot), quality, overrides, lineage=lineage)

    @task(doc_md="Score the newest flights with the exported model; check ONNX matches torch.")
    def evaluate(snapshot: str, candidate: dict[str, Any]) -> dict[str, Any]:
        from tasks.config import as_path
        from tasks.evaluate import ParityError, evaluate_model

        try:
            return evaluate_model(common.spec(), as_path(snapshot), candidate["run_id"], candidate["model_version"])
        except ParityError as exc:
            common.fail(exc)
            raise

    @task(doc_md="Write the Evidently drift report (data, candidate's scores, target): this window against the "
                 "data the champion was trained on. Open it from the run's *Drift report* tab or *Drift reports*.")
    def drift_report(snapshot: str, candidate: dict[str, Any]) -> str:
        from tasks.report import write_run_report

        context = get_current_context()
        return write_run_report(common.spec(), snapshot, candidate["run_id"], candidate["model_version"],
                                context["run_id"], dag_id=context["dag"].dag_id,
                                run_date=context["dag_run"].run_after.isoformat())

    @task(doc_md="Apply the spec's promotion rules (champion re-scored on the same holdout, slices, the "
                 "artifact loaded by the serving code) in the chosen mode; the verdict table is in the log.")
    def gate(snapshot: str, quality: dict[str, Any], candidate: dict[str, Any], evaluation: dict[str, Any],
             report: str) -> dict[str, Any]:
        from tasks.config import as_path
        from tasks.gate import GateRejected, decide_promotion

        context = get_current_context()
        choice = context["params"].get("gate") or {"mode": "enforce"}
        try:
            return decide_promotion(common.spec(), as_path(snapshot), candidate["run_id"], candidate["model_version"],
                                    evaluation, quality, mode=choice["mode"],
                                    justification=choice.get("justification"),
                                    user=context["dag_run"].triggering_user_name, dag_run_id=context["run_id"],
                                    drift_dir=report)
        except GateRejected as exc:
            common.fail(exc)
            raise

    @task(retries=2, retry_delay=timedelta(seconds=20), retry_exponential_backoff=2.0,
          doc_md="Move the registry alias `champion` to the candidate (serving follows it) and log the move.")
    def promote(verdict: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks import tracking
        from tasks.promotion import promote_verdict

        if not verdict["promote"]:
            raise AirflowSkipException(f"nothing to promote: {verdict['reason']}")
        spec = common.spec()
        tracking.use_experiment(spec.name)
        return promote_verdict(spec, verdict, get_current_context()["run_id"])

    snapshot = extract()
    quality = check_quality(snapshot)
    candidate = train(snapshot, quality)
    evaluation = evaluate(snapshot, candidate)
    report = drift_report(snapshot, candidate)
    evaluation >> report  # one heavy task at a time on small workers
    verdict = gate(snapshot, quality, candidate, evaluation, report)
    promote(verdict)


train_and_deploy()
