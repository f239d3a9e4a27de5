"""Production monitoring: the prediction log, and the champion's live requests against its training data.

Live metrics (arrived outcomes) are in tasks.live_metrics, the retrain decision in tasks.retrain."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from serving.predlog import RESERVED
from tasks import registry, settings, tracking
from tasks.config import PipelineSpec
from tasks.report import champion_data, publish, report_dir

log = logging.getLogger(__name__)
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


def champion_version(spec: PipelineSpec, tracking_uri: str | None = None) -> str:
    """The serving champion's version; NothingToMonitor when there is none."""
    tracking.use_experiment(spec.name, tracking_uri)
    champion = registry.champion_version(spec.registered_model)
    if champion is None:
        raise NothingToMonitor(f"{spec.registered_model} has no champion yet: nothing serves, nothing to monitor")
    return champion


def champion_reference(spec: PipelineSpec, champion: str) -> Any:
    """The data the champion was trained on, found by the fingerprint on its version (a `drift.Side`).

    Raises:
        MonitoringError: that data is gone from the data store.
    """
    reference, why = champion_data(spec, champion)
    if reference is None:
        raise MonitoringError(f"{why} ({spec.data_root_path}): nothing to compare live requests with")
    return reference


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

    champion = champion_version(spec, tracking_uri)
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
