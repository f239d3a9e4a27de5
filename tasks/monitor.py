"""Production monitoring: what the champion answered live, against its training data and the arrived outcomes."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import sqlalchemy as sa

from serving.predlog import RESERVED
from tasks import registry, settings, tracking
from tasks.config import Monitoring, PipelineSpec
from tasks.report import find_snapshot, publish, put_json, report_dir
from tasks.snapshot import read_manifest
from tasks.sources import SourceError, redact

log = logging.getLogger(__name__)
DECISION_FILE = "decision.json"
KEY_CHUNK = 500  # keys per ground-truth query: far below every driver's bind-parameter limit
PARTITIONS = pa.schema([("dt", pa.string()), ("hr", pa.string())])  # strings: "05" stays "05", dates compare


class NothingToMonitor(RuntimeError):
    """No champion serves yet, so there is nothing to judge."""


class MonitoringError(RuntimeError):
    """This interval cannot be judged and a retry would not change that; the message says what is missing."""


@dataclass(frozen=True)
class Interval:
    """[start, end) in UTC; a naive time is read as UTC (the prediction log's clock)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            object.__setattr__(self, name, value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC))
        if self.start >= self.end:
            raise MonitoringError(f"interval start {self.start:%Y-%m-%d %H:%M} is not before its end "
                                  f"{self.end:%Y-%m-%d %H:%M}")

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"


def prediction_log_dir() -> Path:
    """Where the serving container writes its log: the same variable and default as serving/settings.py."""
    return Path(os.environ.get("SERVING_PREDICTION_LOG_DIR") or settings.state_dir() / "serving" / "predictions")


def _logged(feature: str) -> str:
    return f"feature_{feature}" if feature in RESERVED else feature  # how serving/predlog.py names it


def log_schema(spec: PipelineSpec) -> pa.Schema:
    """The prediction log's columns for this spec's features (serving/predlog.py writes them)."""
    return pa.schema([("ts", pa.timestamp("us", tz="UTC")), ("model_name", pa.string()),
                      ("model_version", pa.string()), ("request_id", pa.string()),
                      *[(_logged(c), pa.float32()) for c in spec.features.numeric],
                      *[(_logged(c), pa.string()) for c in spec.features.categorical],
                      ("probability", pa.float32()), ("label", pa.int64())])


def read_predictions(spec: PipelineSpec, log_dir: Path, interval: Interval) -> pd.DataFrame:
    """The predictions logged in `interval`, oldest first, features under their own names.

    Only complete files are read: a file being written has a dot name, which pyarrow's discovery skips.
    A category the model saw as unknown (logged as "") becomes None, as in the training data.

    Raises:
        MonitoringError: a log file is not the prediction log of this spec's features.
    """
    schema = log_schema(spec)
    empty = schema.empty_table().to_pandas()
    if not log_dir.is_dir():
        log.warning("no prediction log at %s: nothing was served or logged", log_dir)
        return empty
    stamp, last = pa.timestamp("us", tz="UTC"), interval.end - timedelta(microseconds=1)
    # The day partitions prune whole folders; the time filter then cuts the first and last hour exactly.
    wanted = ((ds.field("dt") >= interval.start.date().isoformat()) & (ds.field("dt") <= last.date().isoformat())
              & (ds.field("ts") >= pa.scalar(interval.start, stamp))
              & (ds.field("ts") < pa.scalar(interval.end, stamp)))
    try:
        dataset = ds.dataset(log_dir, format="parquet", schema=pa.unify_schemas([schema, PARTITIONS]),
                             partitioning=ds.partitioning(PARTITIONS, flavor="hive"))
        table = dataset.to_table(columns=schema.names, filter=wanted).sort_by("ts")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise MonitoringError(f"prediction log {log_dir}: {exc}") from exc
    frame = table.to_pandas().rename(columns={_logged(c): c for c in spec.features.all})
    for column in spec.features.categorical:
        frame[column] = frame[column].replace("", None)
    return frame


def _champion(spec: PipelineSpec, tracking_uri: str | None) -> str:
    tracking.use_experiment(spec.name, tracking_uri)
    champion = registry.champion_version(spec.registered_model)
    if champion is None:
        raise NothingToMonitor(f"{spec.registered_model} has no champion yet: nothing serves, nothing to monitor")
    return champion


def champion_reference(spec: PipelineSpec, champion: str) -> Any:
    """The data the champion was trained on, found by the fingerprint on its model version (a `drift.Side`).

    Raises:
        MonitoringError: that data is gone from the data store.
    """
    from tasks.dataset import load_frame
    from tasks.drift import Side

    tags = registry.version_tags(spec.registered_model, champion)
    fingerprint = tags.get("data.fingerprint", "")
    found = find_snapshot(spec, fingerprint, tags.get("data.snapshot")) if fingerprint else None
    if found is None:
        raise MonitoringError(f"the data champion v{champion} was trained on (fingerprint "
                              f"{fingerprint[:12] or 'unrecorded'}) is not in the data store {spec.data_root_path}: "
                              "nothing to compare live requests with")
    window = read_manifest(found).get("window") or {}
    span = f"{str(window.get('start', '?'))[:10]} to {str(window.get('end', '?'))[:10]}"
    description = f"the data champion v{champion} was trained on ({span})"
    return Side(load_frame(spec, found), description, str(found), fingerprint)


def monitor_report_dir(spec: PipelineSpec, dag_id: str, dag_run_id: str) -> Path:
    """The run's folder in the reports store, named by DAG too: an hourly run and the nightly training run
    share run ids (`scheduled__<time>`), and one must not overwrite the other's report."""
    return report_dir(spec, f"{dag_id}__{dag_run_id}" if dag_id else dag_run_id)


def _logged_or_scored(spec: PipelineSpec, model: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    from tasks.dataset import feature_columns

    def score(frame: pd.DataFrame) -> np.ndarray:
        if "probability" in frame:  # live rows carry the score they were answered with
            return frame["probability"].to_numpy(dtype=np.float64)
        return np.asarray(model.predict_columns(feature_columns(spec, frame)))  # the reference: scored now

    return score


def report_drift(spec: PipelineSpec, log_dir: Path, interval: Interval, dag_run_id: str, dag_id: str = "",
                 tracking_uri: str | None = None) -> dict[str, Any]:
    """Evidently drift of the live requests the champion answered in `interval` against its training data.

    The live side's scores are the logged probabilities; the reference is scored by the champion's
    ONNX artifact. The report lands in the reports store like train_and_deploy's (Drift reports page).

    Returns:
        A digest: champion version, rows, status, drifted share and columns, the report folder (None
        when the interval had fewer than `monitoring.min_rows` predictions: not judged).

    Raises:
        NothingToMonitor: no champion. MonitoringError: its training data is gone, or the log is foreign.
    """
    from tasks.drift import Side, build_drift_report
    from tasks.evaluate import download_model

    champion = _champion(spec, tracking_uri)
    live = read_predictions(spec, log_dir, interval)
    live = live[live["model_version"] == champion].drop(columns=["label"])  # the logged label is a prediction
    digest: dict[str, Any] = {"interval": str(interval), "champion_version": champion, "rows": len(live),
                              "report": None, "status": "not judged"}
    if len(live) < spec.monitoring.min_rows:
        log.info("drift not judged: %d predictions by champion v%s in %s", len(live), champion, interval)
        return digest
    reference = champion_reference(spec, champion)
    current = Side(live, f"live requests answered by champion v{champion} ({interval})")
    context = {"dag_id": dag_id, "dag_run_id": dag_run_id, "run_date": interval.end.isoformat(),
               "model_name": spec.registered_model, "model_version": champion, "champion_version": champion,
               "interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()}}
    out = monitor_report_dir(spec, dag_id, dag_run_id)
    with tempfile.TemporaryDirectory(prefix="monitor-") as tmp:
        score = _logged_or_scored(spec, download_model(spec, champion, Path(tmp) / "model"))
        # The report's "drifted" status follows the retrain line, so the report and the decision say the same.
        judged = spec.model_copy(update={"drift": spec.drift.model_copy(
            update={"drift_share": spec.monitoring.max_drifted_share})})
        summary = build_drift_report(judged, current, reference, Path(tmp) / "report", score=score, context=context)
        publish(Path(tmp) / "report", out)
    log.info("live drift report %s: %s", out, summary["headline"])
    return {**digest, "report": str(out), "status": summary["status"], "drifted_share": summary["drifted_share"],
            "features": summary["features"], "drifted": [c["column"] for c in summary["columns"] if c["drifted"]],
            "prediction_drift": bool(summary["prediction"] and summary["prediction"]["drifted"]),
            "headline": summary["headline"]}


def _typed_keys(keys: list[str]) -> list[Any]:
    # Integer ids bind as integers: every database compares them with an integer key column as it should.
    return [int(k) for k in keys] if all(re.fullmatch(r"-?\d{1,18}", k) for k in keys) else keys


def fetch_ground_truth(spec: PipelineSpec, url: str, keys: list[str]) -> pd.DataFrame:
    """Key (as text), event time and target of these keys from `monitoring.ground_truth.query`.

    Raises:
        SourceError: the database is unreachable or the query fails (names the database, never a password).
        MonitoringError: the query does not return the key, event time and target columns.
    """
    source = spec.monitoring.ground_truth
    if source is None:
        raise MonitoringError("the spec declares no ground truth (monitoring.ground_truth)")
    wanted = [spec.key, spec.event_time, spec.target.column]
    query = sa.text(source.query).bindparams(sa.bindparam("keys", expanding=True))
    engine = sa.create_engine(url)
    rows: list[dict[str, Any]] = []
    try:
        with engine.connect() as conn:
            typed = _typed_keys(keys)
            for i in range(0, len(typed), KEY_CHUNK):
                rows += [dict(r) for r in conn.execute(query, {"keys": typed[i:i + KEY_CHUNK]}).mappings()]
    except sa.exc.SQLAlchemyError as exc:
        first_line = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise SourceError(f"ground truth ({source.connection}, {redact(url)}): {first_line}") from exc
    finally:
        engine.dispose()
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else wanted)
    missing = [c for c in wanted if c not in frame]
    if missing:
        raise MonitoringError(f"monitoring.ground_truth.query returns no column {', '.join(missing)} "
                              f"(it returns {', '.join(frame.columns)})")
    return frame[wanted].assign(**{spec.key: frame[spec.key].astype(str)})


def compute_live_metrics(spec: PipelineSpec, log_dir: Path, until: datetime, url: str | None,
                         hours: float | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The champion's live metrics on its predictions of the last `hours` whose outcome has arrived.

    A prediction meets its outcome by key: the business app sends the spec's key (the flight id) as
    the request id. Per key the newest prediction counts (an app that asks again about a flight gets
    a fresher answer); predictions without an id, or whose outcome has not arrived, are counted apart.

    Args:
        until: end of the window (the monitored interval's end).
        url: SQLAlchemy URL of `monitoring.ground_truth.connection`; None when the spec declares none.
        hours: window length; default `monitoring.ground_truth_hours`.

    Returns:
        rows, keyed, labelled, pending counts; `metrics` (roc_auc, accuracy, brier, positive_rate,
        predicted_rate) when any outcome arrived; `newest_event`: the latest event time with an outcome.
    """
    from tasks.metrics import classification_metrics

    policy = spec.monitoring
    window = Interval(until - timedelta(hours=hours or policy.ground_truth_hours), until)
    champion = _champion(spec, tracking_uri)
    result: dict[str, Any] = {"window": str(window), "champion_version": champion, "labelled": 0,
                              "metrics": None, "newest_event": None}
    if policy.ground_truth is None or url is None:
        return {**result, "reason": "the spec declares no ground truth (monitoring.ground_truth)"}
    served = read_predictions(spec, log_dir, window)
    served = served[served["model_version"] == champion]
    keyed = served.dropna(subset=["request_id"]).drop_duplicates("request_id", keep="last")
    truth = fetch_ground_truth(spec, url, keyed["request_id"].tolist()) if len(keyed) else None
    joined = keyed.merge(truth, left_on="request_id", right_on=spec.key) if truth is not None else keyed.iloc[:0]
    known = joined[joined[spec.target.column].notna()] if len(joined) else joined
    result.update(rows=len(served), keyed=len(keyed), labelled=len(known), pending=len(keyed) - len(known))
    if known.empty:
        return result
    actual = (known[spec.target.column].astype(float) >= spec.target.threshold).to_numpy()
    scores = classification_metrics(actual, known["probability"].to_numpy())
    result["metrics"] = {"roc_auc": None if np.isnan(scores["roc_auc"]) else scores["roc_auc"],
                         "accuracy": float(np.mean(known["label"].to_numpy() == actual)),
                         "brier": scores["brier"], "positive_rate": scores["positive_rate"],
                         "predicted_rate": float(known["label"].mean())}
    result["newest_event"] = pd.Timestamp(known[spec.event_time].max()).isoformat()
    return result


@dataclass(frozen=True)
class Check:
    """One retrain rule: its value and threshold, whether it asks for a retrain, and why, in words."""

    rule: str
    value: float | None
    threshold: float
    retrain: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """Whether to retrain, the reasons, every rule's outcome, and where a retrain's window should end."""

    retrain: bool
    reasons: list[str]
    checks: list[Check]
    window_end: str | None  # the day after the newest event with an outcome; None: the retrain picks its own

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _drift_check(policy: Monitoring, drift: dict[str, Any]) -> Check:
    limit = policy.max_drifted_share
    if drift.get("report") is None:
        return Check("drifted_share", None, limit, False,
                     f"drift not judged: {drift.get('rows', 0)} predictions by champion "
                     f"v{drift.get('champion_version')} in {drift.get('interval')}, {policy.min_rows} needed")
    share, drifted = drift["drifted_share"], drift["drifted"]
    counted = f"{len(drifted)} of {drift['features']} features drifted ({share:.0%}"
    if share >= limit:
        return Check("drifted_share", share, limit, True, f"{counted} >= {limit:.0%}): {', '.join(drifted)}")
    return Check("drifted_share", share, limit, False, f"{counted} < {limit:.0%})")


def _metric_check(policy: Monitoring, live: dict[str, Any], metric: str, floor: float) -> Check:
    name = {"roc_auc": "live ROC AUC", "accuracy": "live accuracy"}[metric]
    labelled = live.get("labelled", 0)
    value = (live.get("metrics") or {}).get(metric)
    if labelled < policy.min_labelled_rows or value is None:
        why = live.get("reason") or f"{labelled} predictions with an arrived outcome, {policy.min_labelled_rows} needed"
        return Check(metric, None, floor, False, f"{name} not judged: {why}")
    on = f"{name} {value:.3f} on {labelled:,} predictions with an arrived outcome"
    if value < floor:
        return Check(metric, value, floor, True, f"{on} is below {floor:g}")
    return Check(metric, value, floor, False, f"{on} (floor {floor:g})")


def decide_retrain(policy: Monitoring, drift: dict[str, Any], live: dict[str, Any]) -> Decision:
    """Apply the spec's `monitoring` rules to a drift digest and live metrics (from the functions above)."""
    checks = [_drift_check(policy, drift)]
    if policy.retrain_on_prediction_drift and drift.get("report") is not None:
        moved = bool(drift.get("prediction_drift"))
        checks.append(Check("prediction_drift", float(moved), 1.0, moved,
                            "the live scores drifted from the champion's scores on its training data" if moved
                            else "the live scores look like the champion's scores on its training data"))
    for metric, floor in (("roc_auc", policy.min_roc_auc), ("accuracy", policy.min_accuracy)):
        if floor is not None:
            checks.append(_metric_check(policy, live, metric, floor))
    reasons = [c.reason for c in checks if c.retrain]
    newest = live.get("newest_event")
    window_end = (pd.Timestamp(newest).normalize() + pd.Timedelta(days=1)).date().isoformat() if newest else None
    return Decision(bool(reasons), reasons, checks, window_end)


def record_decision(spec: PipelineSpec, decision: Decision, drift: dict[str, Any], live: dict[str, Any],
                    dag_run_id: str, dag_id: str = "", tracking_uri: str | None = None) -> str:
    """Keep the decision and why: `decision.json` next to the run's report, an MLflow run in experiment
    `<name>_monitoring` (metrics over time), and `monitor.*` tags on the champion's version.

    Returns:
        Where decision.json was written.
    """
    import mlflow

    champion = drift.get("champion_version") or live.get("champion_version")
    doc = {"dag_id": dag_id, "dag_run_id": dag_run_id, "model_name": spec.registered_model,
           "champion_version": champion, **decision.to_dict(), "drift": drift, "live": live}
    where = put_json(doc, monitor_report_dir(spec, dag_id, dag_run_id), DECISION_FILE)
    experiment = tracking.use_experiment(f"{spec.name}_monitoring", tracking_uri)
    metrics = {"live_rows": drift.get("rows"), "drifted_share": drift.get("drifted_share"),
               "labelled_rows": live.get("labelled"),
               **{f"live_{k}": v for k, v in (live.get("metrics") or {}).items()}}
    # A retried task (or a rerun of the DAG run) records into the run it started before, not a second one.
    earlier = tracking.client().search_runs([experiment], f"tags.`airflow.run_id` = '{dag_run_id}'", max_results=1)
    with mlflow.start_run(run_id=earlier[0].info.run_id if earlier else None, experiment_id=experiment,
                          run_name=f"{dag_id or 'monitor'} {drift.get('interval', '')}"):
        mlflow.set_tags({"monitor.retrain": str(decision.retrain).lower(), "model.version": str(champion),
                         "monitor.reasons": "; ".join(decision.reasons)[:5000] or "none",
                         "airflow.dag_id": dag_id, "airflow.run_id": dag_run_id})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_dict(doc, DECISION_FILE)
    if champion:
        verdict = ("retrain: " + "; ".join(decision.reasons)) if decision.retrain else "ok"
        for key, value in {"monitor.decision": verdict[:5000], "monitor.run": dag_run_id}.items():
            tracking.client().set_model_version_tag(spec.registered_model, champion, key, value)
    return str(where)
