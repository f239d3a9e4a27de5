"""Evaluate a candidate on the holdout with the artifact that will serve, and check parity."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from serving.model import OnnxModel
from tasks import tracking
from tasks.baseline import baseline_probs, fit_baseline
from tasks.config import PipelineSpec
from tasks.dataset import LABEL, feature_columns, load_frame, split_by_time
from tasks.fit import predict
from tasks.metrics import best_f1_threshold, classification_metrics
from tasks.model import TabularNet, encode, load_checkpoint
from tasks.slices import slice_metrics
from tasks.train import ONNX_FILE

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-5


class ParityError(RuntimeError):
    """The ONNX export disagrees with the torch model: serving would not answer what was trained."""


def download_onnx(spec: PipelineSpec, version: str, into: Path) -> Path:
    """The registered ONNX file of `version`, downloaded from the registry into `into`."""
    uri = tracking.client().get_model_version_download_uri(spec.registered_model, version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{ONNX_FILE}", dst_path=str(into)))


def download_model(spec: PipelineSpec, version: str, into: Path) -> OnnxModel:
    """The registered ONNX artifact of `version`, loaded by the serving code itself."""
    return OnnxModel.from_file(download_onnx(spec, version, into), spec.registered_model, version)


def holdout_columns(spec: PipelineSpec, snapshot: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    holdout = split_by_time(spec, load_frame(spec, snapshot)).holdout
    return feature_columns(spec, holdout), holdout[LABEL].to_numpy()


def torch_probs(net: TabularNet, spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    numeric, codes = encode(net.config, feature_columns(spec, frame))
    return predict(net, torch.from_numpy(numeric), torch.from_numpy(codes), torch.device("cpu"))


def parity(onnx_probs: np.ndarray, reference: np.ndarray, version: str) -> float:
    """Max |ONNX - torch| over every row.

    Raises:
        ParityError: above PARITY_TOLERANCE.
    """
    diff = float(np.max(np.abs(onnx_probs - reference))) if len(reference) else 0.0
    if not diff <= PARITY_TOLERANCE:  # NaN fails too
        raise ParityError(f"ONNX export of version {version} differs from torch by {diff:.2e} "
                          f"(tolerance {PARITY_TOLERANCE:g}) on the holdout")
    return diff


def calibration_figure(labels: np.ndarray, probs: np.ndarray, baseline: np.ndarray) -> Any:
    """Reliability diagram (mean predicted vs observed delay rate per probability decile)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from matplotlib.figure import Figure
    from sklearn.calibration import calibration_curve

    figure = Figure(figsize=(5, 5))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for name, p in (("model", probs), ("logistic baseline", baseline)):
        if len(np.unique(labels)) == 2:
            observed, predicted = calibration_curve(labels, p, n_bins=10, strategy="quantile")
            ax.plot(predicted, observed, marker="o", label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed delay rate", title="Calibration on the holdout")
    ax.legend(loc="upper left")
    return figure


def evaluate_model(spec: PipelineSpec, snapshot: Path, run_id: str, version: str,
                   tracking_uri: str | None = None) -> dict[str, Any]:
    """Score the holdout with the registered ONNX model; compare with torch on every row.

    The decision threshold is the F1-best cut on validation; a logistic-regression baseline on the
    same features is scored on the same holdout; metrics per slice value and a calibration plot
    are logged on the run.

    Returns:
        {"metrics", "baseline", "threshold", "parity_max_abs_diff", "rows", "slices"}.

    Raises:
        ParityError: ONNX and torch differ by more than 1e-5 on some holdout row (recorded first).
    """
    tracking.use_experiment(spec.name, tracking_uri)
    splits = split_by_time(spec, load_frame(spec, snapshot))
    holdout, labels = splits.holdout, splits.holdout[LABEL].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_probs = download_model(spec, version, Path(tmp)).predict_columns(feature_columns(spec, holdout))
        ckpt = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="torch/checkpoint.pt",
                                                   dst_path=tmp)
        net = load_checkpoint(Path(ckpt))
    reference = torch_probs(net, spec, holdout)
    diff = float(np.max(np.abs(onnx_probs - reference))) if len(labels) else 0.0
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("parity_max_abs_diff", diff)
        mlflow.set_tag("parity.passed", str(diff <= PARITY_TOLERANCE))
        mlflow.log_dict({"max_abs_diff": diff, "tolerance": PARITY_TOLERANCE, "rows": int(len(labels))},
                        "evaluation/parity.json")
    tracking.client().set_model_version_tag(spec.registered_model, version, "parity.max_abs_diff", f"{diff:.3g}")
    parity(onnx_probs, reference, version)

    threshold = best_f1_threshold(splits.validation[LABEL].to_numpy(), torch_probs(net, spec, splits.validation))
    metrics = classification_metrics(labels, onnx_probs, threshold)
    base = baseline_probs(fit_baseline(spec, splits.train), spec, holdout)
    baseline = classification_metrics(labels, base, threshold)
    slices = slice_metrics(spec, holdout, labels, onnx_probs, threshold)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": v for k, v in baseline.items()})
        mlflow.log_metric("threshold", threshold)
        mlflow.log_dict({"slices": slices}, "evaluation/slices.json")
        mlflow.log_figure(calibration_figure(labels, onnx_probs, base), "evaluation/calibration.png")
    log.info("holdout (%d rows, threshold %.3f chosen on validation): %s; ONNX vs torch max |diff| = %.2e",
             len(labels), threshold, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), diff)
    log.info("logistic-regression baseline on the same holdout: roc_auc=%.4f (the network adds %+.4f)",
             baseline["roc_auc"], metrics["roc_auc"] - baseline["roc_auc"])
    for row in slices:
        if "roc_auc" in row:
            log.info("slice %s=%s: %d rows, roc_auc=%.4f, positive_rate=%.3f", row["slice"], row["value"],
                     row["rows"], row["roc_auc"], row["positive_rate"])
    return {"metrics": metrics, "baseline": baseline, "threshold": threshold, "parity_max_abs_diff": diff,
            "rows": int(len(labels)), "slices": slices}
