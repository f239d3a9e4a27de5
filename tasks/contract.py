"""The data contract: a strict YAML model of what a snapshot must look like, rule by rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.config import PipelineSpec

Severity = Literal["error", "warn"]
ColumnRule = Literal["present", "type", "nulls", "range", "categories"]
NUMERIC = re.compile(r"u?int\d+|halffloat|float|double|decimal")


class ContractError(ValueError):
    """The contract is unreadable, invalid, or does not fit the pipeline spec; the message names the key."""


class _Strict(BaseModel):
    # A typo in a key is an error naming the key, never a rule silently not checked.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnContract(_Strict):
    type: str = Field(description="Arrow type name as in the snapshot manifest: int64, double, string, ...")
    nullable: bool = True
    max_null_share: float | None = Field(None, ge=0, le=1)
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = Field(None, min_length=1)
    max_unseen_share: float = Field(0.0, ge=0, le=1, description="tolerated share of values not in categories")
    severity: Severity | dict[ColumnRule, Severity] = Field(
        "error", description="for every rule of the column, or per rule: {range: warn}")

    @model_validator(mode="after")
    def _consistent(self) -> ColumnContract:
        if not self.nullable and self.max_null_share:
            raise ValueError("nullable: false allows no NULL; drop max_null_share or set nullable: true")
        if (self.min is not None or self.max is not None) and not NUMERIC.match(self.type):
            raise ValueError(f"min/max need a numeric type, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if "max_unseen_share" in self.model_fields_set and self.categories is None:
            raise ValueError("max_unseen_share needs categories")
        return self

    @property
    def null_limit(self) -> float | None:
        """The largest NULL share allowed; None when the column may be NULL throughout."""
        return 0.0 if not self.nullable else self.max_null_share

    def severity_of(self, rule: ColumnRule) -> Severity:
        return self.severity if isinstance(self.severity, str) else self.severity.get(rule, "error")


class RowCount(_Strict):
    min: int = Field(ge=0)
    severity: Severity = "error"


class RowCountChange(_Strict):
    max_change: float = Field(gt=0, description="largest |rows per day / previous rows per day - 1|")
    severity: Severity = "error"


class Unique(_Strict):
    columns: list[str] = Field(min_length=1)
    severity: Severity = "error"


class Freshness(_Strict):
    column: str
    max_age_hours: float = Field(gt=0, description="newest event at most this long before the window end")
    severity: Severity = "error"


class Label(_Strict):
    column: str
    threshold: float = Field(description="positive := column >= threshold")
    min_positive_share: float = Field(ge=0, le=1)
    max_positive_share: float = Field(ge=0, le=1)
    severity: Severity = "error"

    @model_validator(mode="after")
    def _ordered(self) -> Label:
        if self.min_positive_share > self.max_positive_share:
            raise ValueError("min_positive_share is above max_positive_share")
        return self


class UnexpectedColumns(_Strict):
    severity: Severity = "warn"


class Contract(_Strict):
    dataset: str
    columns: dict[str, ColumnContract] = Field(min_length=1)
    unexpected_columns: UnexpectedColumns | None = UnexpectedColumns()
    unique: Unique | None = None
    row_count: RowCount | None = None
    row_count_change: RowCountChange | None = None
    freshness: Freshness | None = None
    label: Label | None = None

    @model_validator(mode="after")
    def _rules_name_known_columns(self) -> Contract:
        named = {"unique": self.unique.columns if self.unique else [],
                 "freshness": [self.freshness.column] if self.freshness else [],
                 "label": [self.label.column] if self.label else []}
        for rule, columns in named.items():
            unknown = [c for c in columns if c not in self.columns]
            if unknown:
                raise ValueError(f"{rule} names column(s) {unknown} that `columns` does not describe")
        return self


def load_contract(path: Path) -> Contract:
    """Read and validate a contract file.

    Raises:
        ContractError: the file is missing or not YAML, or a key is unknown, missing or mistyped.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ContractError(f"cannot read data contract {path}: {exc}") from exc
    try:
        return Contract.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ContractError(f"invalid data contract {path}: {problems}") from exc


def ensure_fits(contract: Contract, spec: PipelineSpec) -> None:
    """The contract checks what the spec trains on, with the spec's label and event time.

    Raises:
        ContractError: a column the pipeline uses is not described, or a rule disagrees with the spec.
    """
    used = [spec.key, spec.event_time, spec.target.column, *spec.features.all]
    problems = [f"column `{c}` used by the pipeline is not in `columns`" for c in dict.fromkeys(used)
                if c not in contract.columns]
    if contract.label and (contract.label.column, contract.label.threshold) != (spec.target.column,
                                                                                spec.target.threshold):
        problems.append(f"label is `{contract.label.column}` >= {contract.label.threshold}, the spec's target "
                        f"is `{spec.target.column}` >= {spec.target.threshold}")
    if contract.freshness and contract.freshness.column != spec.event_time:
        problems.append(f"freshness checks `{contract.freshness.column}`, the spec's event time is "
                        f"`{spec.event_time}`")
    if problems:
        raise ContractError(f"data contract {spec.contract_path} does not fit spec {spec.name!r}: "
                            + "; ".join(problems))
