"""The pipeline spec: one frozen, strictly validated object per dataset, parsed from YAML."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from upath import UPath

from tasks import settings


class SpecError(ValueError):
    """The pipeline spec is unreadable or invalid; the message names the file and the key."""


class _Strict(BaseModel):
    # A typo in a key is an error naming the key, never a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Join(_Strict):
    left_on: str
    right_on: str
    columns: dict[str, str] = Field(description="file column -> name in the snapshot")


class SqlSource(_Strict):
    name: str
    kind: Literal["sql"]
    connection: str = Field(description="Airflow connection id; AIRFLOW_CONN_<ID> outside Airflow")
    query: str
    allow_empty: bool = False


class FileSource(_Strict):
    name: str
    kind: Literal["file"]
    path: str = Field(description="a path, glob or fsspec URL (s3://, gs://, ...); ${VAR} expanded")
    format: Literal["csv", "parquet"]
    join: Join | None = Field(None, description="how it joins the first source; none when it is the first")
    partitioning: Literal["hive"] | None = Field(None, description="key=value folders, e.g. day=2013-06-01/")
    allow_empty: bool = False


Source = Annotated[SqlSource | FileSource, Field(discriminator="kind")]


class Target(_Strict):
    column: str
    threshold: float


class Features(_Strict):
    numeric: list[str]
    categorical: list[str]

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class Training(_Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    hidden: list[int]
    embedding_dim: int = Field(ge=1)
    patience: int = Field(ge=1)
    seed: int
    validation_share: float = Field(gt=0, lt=0.5)
    holdout_share: float = Field(gt=0, lt=0.5)


# Evidently 0.7's stat tests (evidently/legacy/calculations/stattests); p-value tests drift below
# their threshold, distances at or above it.
DriftMethod = Literal["anderson", "chisquare", "cramer_von_mises", "ed", "empirical_mmd", "es", "fisher_exact",
                      "g_test", "hellinger", "jensenshannon", "kl_div", "ks", "mannw", "psi", "t_test", "TVD",
                      "wasserstein", "z"]


class ColumnDrift(_Strict):
    """One column's drift test; an unset field keeps Evidently's default for that column."""

    method: DriftMethod | None = None
    threshold: float | None = Field(default=None, gt=0)


class Drift(_Strict):
    """The Evidently drift report. Unset methods and thresholds are Evidently's defaults: up to 1000 rows
    K-S (numeric) / chi-square or Z-test (categorical), p < 0.05; above, Wasserstein and Jensen-Shannon >= 0.1."""

    max_rows: int = Field(5000, ge=100, description="rows sampled (seeded, so the same every time) from each side")
    drift_share: float = Field(0.5, gt=0, le=1, description="the data counts as drifted from this share of features")
    numeric: ColumnDrift = Field(default_factory=ColumnDrift, description="the test for every numeric feature")
    categorical: ColumnDrift = Field(default_factory=ColumnDrift, description="the test for every categorical feature")
    columns: dict[str, ColumnDrift] = Field(default_factory=dict, description="feature name -> its own test")
    prediction: ColumnDrift = Field(default_factory=ColumnDrift, description="the test for the candidate's scores")
    target: ColumnDrift = Field(default_factory=ColumnDrift, description="the test for the label")


# Metrics where less is better; every other metric is better when higher.
LOWER_IS_BETTER = frozenset({"log_loss", "brier"})
GATE_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "precision", "recall", "f1")
GateMetric = Literal["roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "precision", "recall", "f1"]


class ChampionRule(_Strict):
    """The candidate against the champion re-scored on the same holdout; one of the three bounds."""

    metric: GateMetric = "roc_auc"
    max_degradation: float | None = Field(None, ge=0, description="may be worse by at most this (absolute)")
    min_improvement: float | None = Field(None, description="must be better by at least this (absolute)")
    min_relative_improvement: float | None = Field(None, description="must be better by this share of the champion")

    @model_validator(mode="after")
    def _one_bound(self) -> ChampionRule:
        bounds = [b for b in (self.max_degradation, self.min_improvement, self.min_relative_improvement)
                  if b is not None]
        if len(bounds) != 1:
            raise ValueError("set exactly one of max_degradation, min_improvement, min_relative_improvement")
        return self


class SliceRule(_Strict):
    """No slice value with at least `min_rows` holdout rows may drop more than `max_drop` against the champion."""

    metric: GateMetric = "roc_auc"
    min_rows: int = Field(200, ge=1)
    max_drop: float = Field(ge=0)


class DriftRule(_Strict):
    """Refuse when more than this share of features drifted and the candidate did not train on that data."""

    max_drifted_share: float = Field(ge=0, le=1)


class Gate(_Strict):
    min: dict[GateMetric, float] = Field(default={}, description="candidate metric >= value")
    max: dict[GateMetric, float] = Field(default={}, description="candidate metric <= value")
    champion: ChampionRule | None = None
    slices: SliceRule | None = None
    live_check_rows: int = Field(200, ge=1, description="holdout rows the serving code must answer identically")
    drift: DriftRule | None = None


class GroundTruth(_Strict):
    """Where the actual outcome of served predictions arrives (flights: `arr_delay` once a flight landed)."""

    connection: str = Field(description="Airflow connection id; AIRFLOW_CONN_<ID> outside Airflow")
    query: str = Field(description="returns the key, the event time and the target for the keys bound as :keys "
                                   "(a list); a row whose target is still NULL has no ground truth yet")


class Monitoring(_Strict):
    """When the monitor_production DAG asks train_and_deploy for a retrain (dags/monitor_production.py)."""

    min_rows: int = Field(default=200, ge=1, description="predictions an interval needs before its drift is judged")
    max_drifted_share: float = Field(default=0.5, gt=0, le=1, description="retrain from this share of drifted features")
    retrain_on_prediction_drift: bool = Field(default=False, description="retrain when the live scores alone drifted")
    ground_truth: GroundTruth | None = Field(default=None, description="none: no live metrics, drift alone decides")
    ground_truth_hours: float = Field(default=168, gt=0, description="how far back predictions meet their outcome")
    min_labelled_rows: int = Field(default=200, ge=1, description="outcomes needed before live metrics are judged")
    min_roc_auc: float | None = Field(default=None, ge=0, le=1, description="retrain below this live ROC AUC")
    min_accuracy: float | None = Field(default=None, ge=0, le=1, description="retrain below this live accuracy")


# Derived from the event time when the snapshot has no column of that name.
TIME_PARTS = ("month", "weekday", "hour")


class Evaluation(_Strict):
    slices: list[str] = Field(default=[], description=f"columns, or {'/'.join(TIME_PARTS)} of the event time")
    min_slice_rows: int = Field(default=100, ge=1, description="smaller slices are listed without metrics")


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    registered_model: str
    data_root: str
    reports_root: str
    window_days: int = Field(ge=1)
    sources: list[Source] = Field(min_length=1)
    key: str
    event_time: str
    target: Target
    features: Features
    contract: str = Field(description="the data contract YAML (tasks/contract.py), relative to this file's folder")
    training: Training
    drift: Drift
    gate: Gate
    evaluation: Evaluation = Evaluation()
    monitoring: Monitoring = Monitoring()

    @field_validator("contract")
    @classmethod
    def _next_to_the_spec(cls, value: str, info: ValidationInfo) -> str:
        # The contract travels with its spec: a relative path means "in the spec's folder", not the cwd.
        base = (info.context or {}).get("spec_dir")
        relative = not Path(value).is_absolute() and not value.startswith("$")
        return str(Path(base) / value) if base and relative else value

    @model_validator(mode="after")
    def _first_source_feeds_the_rest_join(self) -> PipelineSpec:
        first = self.sources[0]
        if isinstance(first, FileSource) and first.join is not None:
            raise ValueError(f"sources.0.join: the first source ({first.name}) is what others join onto")
        for i, source in enumerate(self.sources[1:], start=1):
            if not isinstance(source, FileSource) or source.join is None:
                raise ValueError(f"sources.{i}: sources after the first must be files with a `join`")
        return self

    @property
    def primary(self) -> SqlSource | FileSource:
        """The source whose rows, filtered to the window, make the snapshot."""
        return self.sources[0]

    @property
    def lookups(self) -> list[FileSource]:
        """File sources joined onto the primary rows."""
        return [s for s in self.sources[1:] if isinstance(s, FileSource)]

    @property
    def data_root_path(self) -> Path:
        """Local folder, or object storage (s3://, gs://, memory://, ...) as a pathlib-like UPath."""
        return as_path(expand(self.data_root))

    @property
    def reports_root_path(self) -> Path:
        return Path(expand(self.reports_root))

    @property
    def contract_path(self) -> Path:
        return Path(expand(self.contract))


def as_path(location: str) -> Path:
    """A local Path for plain paths; an fsspec-backed UPath for URLs."""
    if "://" not in location or location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    return UPath(location)  # type: ignore[return-value]  # pathlib-compatible API


def expand(value: str) -> str:
    """Expand ${VAR} in a path; STATE_DIR always resolves (to its default when unset)."""
    env = {"STATE_DIR": str(settings.state_dir()), **os.environ}
    missing = [v for v in re.findall(r"\$\{(\w+)\}", value) if v not in env]
    if missing:
        raise SpecError(f"path {value!r} uses unset environment variable(s): {', '.join(missing)}")
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value)


def load_spec(path: str | Path | None = None) -> PipelineSpec:
    """Read and validate a pipeline spec (default: `PIPELINE_CONFIG`, else config/flights.yaml).

    Raises:
        SpecError: the file is missing or not YAML, or a key is unknown, missing or mistyped.
    """
    path = Path(path) if path else settings.pipeline_config_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read pipeline spec {path}: {exc}") from exc
    try:
        return PipelineSpec.model_validate(raw, context={"spec_dir": path.resolve().parent})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SpecError(f"invalid pipeline spec {path}: {problems}") from exc
