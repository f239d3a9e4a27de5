"""Evaluate a candidate on the holdout with the artifact that will serve, and check parity."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from serving.model import OnnxModel
from tasks import tracking
from tasks.config import PipelineSpec
from tasks.dataset import LABEL, feature_columns, load_frame, split_by_time
from tasks.metrics import classification_metrics
from tasks.model import encode, load_checkpoint
from tasks.train import ONNX_FILE, predict

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-5


class ParityError(RuntimeError):
    """The ONNX export disagrees with the torch model: serving would not answer what was trained."""


def download_model(spec: PipelineSpec, version: str, into: Path) -> OnnxModel:
    """The registered ONNX artifact of `version`, loaded by the serving code itself."""
    uri = tracking.client().get_model_version_download_uri(spec.registered_model, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{ONNX_FILE}", dst_path=str(into)))
    return OnnxModel.from_file(local, spec.registered_model, version)


def holdout_columns(spec: PipelineSpec, snapshot: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    holdout = split_by_time(spec, load_frame(spec, snapshot)).holdout
    return feature_columns(spec, holdout), holdout[LABEL].to_numpy()


def evaluate_model(spec: PipelineSpec, snapshot: Path, run_id: str, version: str,
                   tracking_uri: str | None = None) -> dict[str, Any]:
    """Score the holdout with the registered ONNX model; compare with torch on every row.

    Returns:
        {"metrics": {...}, "parity_max_abs_diff": float, "rows": int}; also logged on the run.

    Raises:
        ParityError: ONNX and torch differ by more than 1e-5 on some holdout row.
    """
    tracking.use_experiment(spec.name, tracking_uri)
    columns, labels = holdout_columns(spec, snapshot)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_probs = download_model(spec, version, Path(tmp)).predict_columns(columns)
        ckpt = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="torch/checkpoint.pt",
                                                   dst_path=tmp)
        net = load_checkpoint(Path(ckpt))
    numeric, codes = encode(net.config, columns)
    torch_probs = predict(net, torch.from_numpy(numeric), torch.from_numpy(codes), torch.device("cpu"))
    diff = float(np.max(np.abs(onnx_probs - torch_probs))) if len(labels) else 0.0
    metrics = classification_metrics(labels, onnx_probs)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
        mlflow.log_metric("parity_max_abs_diff", diff)
        mlflow.set_tag("parity.passed", str(diff <= PARITY_TOLERANCE))
    tracking.client().set_model_version_tag(spec.registered_model, version, "parity.max_abs_diff", f"{diff:.3g}")
    log.info("holdout (%d rows): %s; ONNX vs torch max |diff| = %.2e", len(labels),
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), diff)
    if diff > PARITY_TOLERANCE:
        raise ParityError(f"ONNX export of version {version} differs from torch by {diff:.2e} "
                          f"(tolerance {PARITY_TOLERANCE:g}) on the holdout")
    return {"metrics": metrics, "parity_max_abs_diff": diff, "rows": int(len(labels))}
