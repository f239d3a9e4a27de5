"""Drift reports on data with a known injected shift: what drifted is reported as drifted, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import ColumnDrift, Drift, Features, PipelineSpec, SpecError
from tasks.dataset import LABEL
from tasks.drift import Side, build_drift_report, sample, split_window

ROWS = 3000


@pytest.fixture(scope="module")
def small_spec(spec: PipelineSpec) -> PipelineSpec:
    """Four features; `steady` judged by K-S (a p-value) instead of Evidently's default for 3000 rows."""
    return spec.model_copy(update={
        "features": Features(numeric=["shifted", "steady"], categorical=["carrier", "origin"]),
        "drift": Drift(max_rows=2000, columns={"steady": ColumnDrift(method="ks", threshold=0.01)}),
    })


def _frame(seed: int, shift: float = 0.0, new_carrier_share: float = 0.0, delay_rate: float = 0.2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    carrier = rng.choice(["AA", "UA", "DL"], ROWS).astype(object)
    carrier[rng.random(ROWS) < new_carrier_share] = "ZZ"  # a carrier the reference never saw
    return pd.DataFrame({
        "shifted": rng.normal(shift, 1.0, ROWS), "steady": rng.normal(0.0, 1.0, ROWS),
        "carrier": carrier, "origin": rng.choice(["JFK", "LGA", "EWR"], ROWS),
        LABEL: (rng.random(ROWS) < delay_rate).astype("float32"),
    })


def _score(frame: pd.DataFrame) -> np.ndarray:  # a "model" that follows the shifted column
    return 1 / (1 + np.exp(-frame["shifted"].to_numpy()))


@pytest.fixture(scope="module")
def shifted_report(small_spec: PipelineSpec, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("drift") / "run"
    current = Side(_frame(1, shift=1.5, new_carrier_share=0.4, delay_rate=0.5), "this window")
    reference = Side(_frame(2), "the data champion v1 was trained on", "/data/ref", "abc123")
    summary = build_drift_report(small_spec, current, reference, out, score=_score,
                                 context={"dag_run_id": "manual__1", "model_version": "2"})
    return summary, out


def test_a_shifted_number_and_a_new_category_drift_the_unshifted_columns_do_not(shifted_report):
    summary, _ = shifted_report
    columns = {c["column"]: c for c in summary["columns"]}
    assert {name for name, c in columns.items() if c["drifted"]} == {"shifted", "carrier"}
    assert columns["shifted"]["method"] == "Wasserstein distance (normed)"
    assert columns["shifted"]["score"] >= columns["shifted"]["threshold"] == 0.1
    assert columns["carrier"]["method"] == "Jensen-Shannon distance"
    assert columns["origin"]["score"] < 0.1
    # The spec's override reaches Evidently: K-S p-value at 0.01 for `steady`, unshifted, so not drifted.
    assert columns["steady"]["method"] == "ks" and columns["steady"]["threshold"] == 0.01
    assert columns["steady"]["score"] > 0.01
    assert [c["column"] for c in summary["columns"][:2]] == ["shifted", "carrier"]  # drifted first, worst first


def test_the_summary_has_share_status_prediction_target_and_sample_sizes(shifted_report):
    summary, out = shifted_report
    assert summary["drifted_columns"] == 2 and summary["features"] == 4
    assert summary["drifted_share"] == 0.5 and summary["drift_share_threshold"] == 0.5
    assert summary["status"] == "drift"  # half the features drifted: the spec's drift_share
    assert summary["prediction"]["drifted"] and summary["prediction"]["column"] == "prediction"
    assert summary["target"]["drifted"]  # the delay rate went from 20 % to 50 %
    assert summary["reference"] == {"description": "the data champion v1 was trained on", "snapshot": "/data/ref",
                                    "fingerprint": "abc123", "rows": ROWS, "rows_sampled": 2000}
    assert summary["current"]["rows_sampled"] == 2000 and summary["max_rows"] == 2000
    assert summary["dag_run_id"] == "manual__1" and summary["model_version"] == "2"
    assert summary["headline"].startswith("The data has drifted: 2 of 4 features differ from the data champion v1")
    assert "The model's scores shifted. The share of arr_delay >= 15 shifted." in summary["headline"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_the_html_report_is_whole_and_under_5_mb(shifted_report):
    _, out = shifted_report
    page = (out / "report.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html") or page.lstrip().startswith("<html")
    assert "shifted" in page and "carrier" in page
    assert (out / "report.html").stat().st_size < 5_000_000


def test_identical_data_is_ok(small_spec, tmp_path):
    same = _frame(3)
    summary = build_drift_report(small_spec, Side(same, "now"), Side(same.copy(), "then"), tmp_path / "r")
    assert summary["status"] == "ok" and summary["drifted_share"] == 0.0
    assert summary["prediction"] is None  # no candidate scorer given
    assert summary["headline"] == "No drift: all 4 features look like then. The share of arr_delay >= 15 did not shift."


def test_sampling_is_deterministic_and_keeps_time_order():
    frame = pd.DataFrame({"x": range(10_000)})
    first, second = sample(frame, 500), sample(frame, 500)
    assert len(first) == 500 and first.equals(second)
    assert first["x"].is_monotonic_increasing
    assert sample(frame, 20_000) is frame


def test_the_first_run_compares_the_older_half_with_the_newer():
    older, newer = split_window(pd.DataFrame({"t": range(11)}))
    assert list(older["t"]) == list(range(5)) and list(newer["t"]) == list(range(5, 11))


def test_a_drift_override_for_an_unknown_column_is_named(small_spec, tmp_path):
    typo = small_spec.model_copy(update={"drift": Drift(columns={"steddy": ColumnDrift(method="psi")})})
    with pytest.raises(SpecError, match="drift.columns: steddy"):
        build_drift_report(typo, Side(_frame(1), "a"), Side(_frame(2), "b"), tmp_path / "r")


def test_an_unknown_drift_method_fails_when_the_spec_loads():
    with pytest.raises(ValueError, match="method"):
        ColumnDrift.model_validate({"method": "wassersteinn"})
