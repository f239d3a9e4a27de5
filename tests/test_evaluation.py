"""A training run carries its lineage, and evaluation leaves the numbers the gate and people need."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from conftest import JUNE_WEEK

from tasks import tracking
from tasks.evaluate import evaluate_model
from tasks.extract import extract_snapshot
from tasks.train import train_model


@pytest.fixture(scope="module")
def evaluated(spec, sqlite_url, tmp_path_factory):
    # Its own model name: the registry is shared with the end-to-end tests.
    own = spec.model_copy(update={"name": "evaluation_test", "registered_model": "evaluation_test_model"})
    root = tmp_path_factory.mktemp("data")
    snapshot = Path(extract_snapshot(own, JUNE_WEEK, sqlite_url, root)["path"])
    candidate = train_model(own, snapshot, {"passed": True}, {"epochs": 2},
                            lineage={"airflow.dag_id": "train_and_deploy", "airflow.run_id": "manual__t"})
    return own, candidate, evaluate_model(own, snapshot, candidate["run_id"], candidate["model_version"])


def test_the_run_records_lineage_params_and_a_signed_onnx_model(evaluated):
    spec, candidate, _ = evaluated
    run = tracking.client().get_run(candidate["run_id"])
    tags, params = run.data.tags, run.data.params
    for key in ("data.fingerprint", "data.window_start", "data.window_end", "train.config_hash", "train.device"):
        assert tags[key], key
    assert tags["airflow.dag_id"] == "train_and_deploy" and tags["airflow.run_id"] == "manual__t"
    assert len(tags["code.version"].removesuffix("+dirty")) == 40 or tags["code.version"].startswith("src-")
    assert params["override.epochs"] == "2" and params["epochs"] == "2"
    assert {"train_loss", "val_loss", "val_roc_auc", "best_val_loss"} <= set(run.data.metrics)
    model = mlflow.models.get_model_info(f"models:/{spec.registered_model}/{candidate['model_version']}")
    inputs = {i.name for i in model.signature.inputs.inputs}
    assert inputs == set(spec.features.all)
    assert model.saved_input_example_info is not None


def test_evaluation_scores_threshold_baseline_slices_and_calibration(evaluated):
    spec, candidate, result = evaluated
    metrics = result["metrics"]
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "precision", "recall", "f1"):
        assert 0 <= metrics[key] <= (1 if key != "log_loss" else 10), key
    assert 0 < result["threshold"] < 1
    assert result["baseline"]["roc_auc"] > 0.5
    seen = {(r["slice"]) for r in result["slices"]}
    assert seen == {"carrier", "origin", "month"}
    for name in seen:  # every holdout row is in exactly one value of each slice
        assert sum(r["rows"] for r in result["slices"] if r["slice"] == name) == result["rows"]
    assert all("roc_auc" in r for r in result["slices"] if r["rows"] >= spec.evaluation.min_slice_rows)
    run = tracking.client().get_run(candidate["run_id"])
    assert {"holdout_roc_auc", "holdout_pr_auc", "baseline_roc_auc", "threshold",
            "parity_max_abs_diff"} <= set(run.data.metrics)
    artifacts = {a.path for a in tracking.client().list_artifacts(candidate["run_id"], "evaluation")}
    assert {"evaluation/calibration.png", "evaluation/slices.json", "evaluation/parity.json"} <= artifacts
    local = mlflow.artifacts.download_artifacts(run_id=candidate["run_id"], artifact_path="evaluation/parity.json")
    assert json.loads(Path(local).read_text())["max_abs_diff"] <= 1e-5
