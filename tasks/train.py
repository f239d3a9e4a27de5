"""Train the tabular model on a snapshot, log it to MLflow and register it as a candidate."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks import tracking
from tasks.config import PipelineSpec, Training
from tasks.dataset import LABEL, Splits, feature_columns, load_frame, split_by_time
from tasks.metrics import classification_metrics
from tasks.model import ModelConfig, TabularNet, build_vocab, encode, export_onnx, save_checkpoint
from tasks.snapshot import read_manifest

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _tensors(cfg: ModelConfig, spec: PipelineSpec, frame: Any) -> tuple[torch.Tensor, ...]:
    numeric, codes = encode(cfg, feature_columns(spec, frame))
    labels = frame[LABEL].to_numpy(dtype=np.float32)
    return torch.from_numpy(numeric), torch.from_numpy(codes), torch.from_numpy(labels)


@torch.inference_mode()
def predict(net: TabularNet, numeric: torch.Tensor, codes: torch.Tensor, device: torch.device) -> np.ndarray:
    net.eval()
    out = [torch.sigmoid(net(n.to(device), c.to(device))).float().cpu()
           for n, c in zip(numeric.split(8192), codes.split(8192), strict=True)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def fit(spec: PipelineSpec, training: Training, splits: Splits,
        device: torch.device) -> tuple[TabularNet, list[dict[str, float]]]:
    """Train with early stopping on validation loss; return the best model and per-epoch metrics."""
    torch.manual_seed(training.seed)
    vocab = {c: build_vocab(splits.train[c]) for c in spec.features.categorical}
    cfg = ModelConfig(spec.features.numeric, spec.features.categorical, vocab,
                      training.hidden, training.embedding_dim)
    net = TabularNet(cfg)
    train = _tensors(cfg, spec, splits.train)
    val = _tensors(cfg, spec, splits.validation)
    net.fit_preprocessing(train[0].numpy())
    net.to(device)
    loader = DataLoader(TensorDataset(*train), batch_size=training.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(training.seed),
                        pin_memory=device.type == "cuda")
    optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    stale = 0
    for epoch in range(1, training.epochs + 1):
        net.train()
        started, total, seen = time.perf_counter(), 0.0, 0
        for numeric, codes, labels in loader:
            numeric, codes = numeric.to(device, non_blocking=True), codes.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            # bf16 autocast only on CUDA: CPU runs stay in float32 and bit-reproducible.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(net(numeric, codes).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            seen += len(labels)
        probs = predict(net, val[0], val[1], device)
        val_metrics = classification_metrics(val[2].numpy(), probs)
        row = {"train_loss": total / max(seen, 1), "val_loss": val_metrics["log_loss"],
               "val_roc_auc": val_metrics["roc_auc"],
               "rows_per_s": seen / max(time.perf_counter() - started, 1e-9)}
        history.append(row)
        log.info("epoch %d/%d train_loss=%.4f val_loss=%.4f val_roc_auc=%.4f rows/s=%.0f", epoch,
                 training.epochs, row["train_loss"], row["val_loss"], row["val_roc_auc"], row["rows_per_s"])
        if best is None or row["val_loss"] < best[0]:
            best, stale = (row["val_loss"], {k: v.detach().clone() for k, v in net.state_dict().items()}), 0
        else:
            stale += 1
            if stale >= training.patience:
                log.info("early stop: validation loss has not improved for %d epochs", stale)
                break
    assert best is not None
    net.load_state_dict(best[1])
    return net.to("cpu").eval(), history


def _find_existing(experiment_id: str, fingerprint: str, config_hash: str) -> Any | None:
    runs = mlflow.search_runs(
        [experiment_id], output_format="list", max_results=1,
        filter_string=(f"tags.`data.fingerprint` = '{fingerprint}' and "
                       f"tags.`train.config_hash` = '{config_hash}' and "
                       "attributes.status = 'FINISHED'"),
    )
    runs = [r for r in runs if "model.version" in r.data.tags]
    return runs[0] if runs else None


def train_model(spec: PipelineSpec, snapshot: Path, quality: dict[str, Any] | None = None,
                overrides: dict[str, Any] | None = None, tracking_uri: str | None = None,
                device: str = "auto") -> dict[str, Any]:
    """Train on a snapshot, log the run to MLflow and register the ONNX model as a new version.

    An identical training (same data fingerprint and configuration) is not repeated: the
    existing run and model version are returned, so reruns never register duplicates.

    Args:
        spec: the pipeline spec.
        snapshot: snapshot folder written by `extract_snapshot`.
        quality: the contract result, attached to the run.
        overrides: training settings from the trigger form (epochs, learning_rate, batch_size).
        tracking_uri: MLflow tracking URI (default from the environment).
        device: "auto" (CUDA when available), "cpu" or "cuda".

    Returns:
        {"run_id", "model_version", "reused"}.
    """
    training = spec.training.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    manifest = read_manifest(snapshot)
    fingerprint = manifest["fingerprint"]
    chash = tracking.config_hash({"training": training.model_dump(), "features": spec.features.model_dump(),
                                  "target": spec.target.model_dump()})
    experiment_id = tracking.use_experiment(spec.name, tracking_uri)
    existing = _find_existing(experiment_id, fingerprint, chash)
    if existing is not None:
        log.info("reusing run %s (same data fingerprint and configuration)", existing.info.run_id)
        return {"run_id": existing.info.run_id, "model_version": existing.data.tags["model.version"],
                "reused": True}

    splits = split_by_time(spec, load_frame(spec, snapshot))
    run_device = pick_device(device)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags({"data.fingerprint": fingerprint, "data.snapshot": str(snapshot),
                         "data.window_start": manifest["window"]["start"],
                         "data.window_end": manifest["window"]["end"],
                         "train.config_hash": chash, "train.device": str(run_device)})
        mlflow.log_params({**training.model_dump(), "rows_train": len(splits.train),
                           "rows_validation": len(splits.validation), "rows_holdout": len(splits.holdout)})
        if quality is not None:
            mlflow.log_dict(quality, "quality/result.json")
        net, history = fit(spec, training, splits, run_device)
        for step, row in enumerate(history, start=1):
            mlflow.log_metrics(row, step=step)
        version = _log_and_register(spec, net, run.info.run_id, fingerprint, snapshot)
        mlflow.set_tag("model.version", version)
    return {"run_id": run.info.run_id, "model_version": version, "reused": False}


def _log_and_register(spec: PipelineSpec, net: TabularNet, run_id: str, fingerprint: str,
                      snapshot: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        export_onnx(net, onnx_path, {"model_name": spec.registered_model, "run_id": run_id,
                                     "data_fingerprint": fingerprint, "target": spec.target.column})
        save_checkpoint(net, Path(tmp) / "checkpoint.pt")
        mlflow.log_artifact(str(Path(tmp) / "checkpoint.pt"), "torch")
        sha = tracking.file_sha256(onnx_path)
        # A self-contained model.onnx (no external data file): the serving side downloads one file.
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", save_as_external_data=False,
                                     pip_requirements=["onnxruntime"])
    mv = mlflow.register_model(info.model_uri, spec.registered_model, tags={
        "data.fingerprint": fingerprint, "data.snapshot": str(snapshot), "run_id": run_id,
        "onnx.sha256": sha,
    })
    return str(mv.version)
