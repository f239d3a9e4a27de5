"""The champion's live metrics: its logged predictions met, by key, with the outcomes arrived in the business DB."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks.config import PipelineSpec
from tasks.monitor import Interval, MonitoringError, champion_version, read_predictions
from tasks.sources import SourceError, redact

KEY_CHUNK = 500  # keys per ground-truth query: far below every driver's bind-parameter limit


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
    champion = champion_version(spec, tracking_uri)
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
