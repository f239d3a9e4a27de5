"""Train the tabular model on a snapshot, log it to MLflow and register it as a candidate."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import onnx
import pandas as pd
from mlflow.models import infer_signature

from serving.model import OnnxModel
from tasks import tracking
from tasks.config import PipelineSpec
from tasks.dataset import feature_columns, load_frame, split_by_time
from tasks.fit import fit, pick_device
from tasks.model import TabularNet, export_onnx, save_checkpoint
from tasks.snapshot import read_manifest

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"


def _find_existing(experiment_id: str, fingerprint: str, config_hash: str) -> Any | None:
    runs = mlflow.search_runs(
        [experiment_id], output_format="list", max_results=1,
        filter_string=(f"tags.`data.fingerprint` = '{fingerprint}' and "
                       f"tags.`train.config_hash` = '{config_hash}' and "
                       "attributes.status = 'FINISHED'"),
    )
    runs = [r for r in runs if "model.version" in r.data.tags]
    return runs[0] if runs else None


def _fail_orphans(experiment_id: str, lineage: dict[str, str], fingerprint: str) -> None:
    """Mark FAILED the runs a killed attempt of this same task left RUNNING (a SIGKILL ends nothing).

    Only runs of this DAG run (its lineage tags) on this snapshot are touched; without lineage
    (plain-Python use) nothing is, since another process may be training right now.
    """
    if not lineage.get("airflow.run_id"):
        return
    filters = [f"tags.`{k}` = '{v}'" for k, v in lineage.items()] + [
        f"tags.`data.fingerprint` = '{fingerprint}'", "attributes.status = 'RUNNING'"]
    for orphan in mlflow.search_runs([experiment_id], " and ".join(filters), output_format="list"):
        log.warning("marking run %s FAILED: an earlier attempt of this task died while training",
                    orphan.info.run_id)
        tracking.client().set_tag(orphan.info.run_id, "mlflow.note.content",
                                  "FAILED by the next attempt: the process training it was killed")
        tracking.client().set_terminated(orphan.info.run_id, status="FAILED")


def train_model(spec: PipelineSpec, snapshot: Path, quality: dict[str, Any] | None = None,
                overrides: dict[str, Any] | None = None, tracking_uri: str | None = None,
                device: str = "auto", lineage: dict[str, str] | None = None) -> dict[str, Any]:
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
        lineage: extra run tags, e.g. the Airflow dag_id and run_id that trained it.

    Returns:
        {"run_id", "model_version", "reused"}.
    """
    training = spec.training.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    manifest = read_manifest(snapshot)
    fingerprint = manifest["fingerprint"]
    chash = tracking.config_hash({"training": training.model_dump(), "features": spec.features.model_dump(),
                                  "target": spec.target.model_dump()})
    experiment_id = tracking.use_experiment(spec.name, tracking_uri)
    _fail_orphans(experiment_id, lineage or {}, fingerprint)
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
                         "train.config_hash": chash, "train.device": str(run_device),
                         "code.version": tracking.code_version(),
                         # Which worker trained it (WORKER_NAME where a deployment names its workers).
                         "train.worker": os.environ.get("WORKER_NAME") or socket.gethostname(),
                         **(lineage or {})})
        given = {f"override.{k}": v for k, v in (overrides or {}).items() if v is not None}
        mlflow.log_params({**training.model_dump(), **given, "registered_model": spec.registered_model,
                           "target": f"{spec.target.column} >= {spec.target.threshold:g}",
                           "features_numeric": ",".join(spec.features.numeric),
                           "features_categorical": ",".join(spec.features.categorical),
                           "rows_train": len(splits.train), "rows_validation": len(splits.validation),
                           "rows_holdout": len(splits.holdout)})
        mlflow.log_dict(spec.model_dump(mode="json"), "spec/pipeline.json")
        if quality is not None:
            mlflow.log_dict(quality, "quality/result.json")
        net, history = fit(spec, training, splits, run_device)
        for step, row in enumerate(history, start=1):
            mlflow.log_metrics(row, step=step)
        best = min(history, key=lambda r: r["val_loss"])
        mlflow.log_metrics({"best_val_loss": best["val_loss"], "best_val_roc_auc": best["val_roc_auc"],
                            "epochs_run": len(history)})
        example = splits.holdout.head(5)
        version = _log_and_register(spec, net, run.info.run_id, fingerprint, snapshot, example)
        mlflow.set_tag("model.version", version)
    return {"run_id": run.info.run_id, "model_version": version, "reused": False}


def _log_and_register(spec: PipelineSpec, net: TabularNet, run_id: str, fingerprint: str,
                      snapshot: Path, example: pd.DataFrame) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        export_onnx(net, onnx_path, {"model_name": spec.registered_model, "run_id": run_id,
                                     "data_fingerprint": fingerprint, "target": spec.target.column})
        save_checkpoint(net, Path(tmp) / "checkpoint.pt")
        mlflow.log_artifact(str(Path(tmp) / "checkpoint.pt"), "torch")
        sha = tracking.file_sha256(onnx_path)
        # Raw columns in, probability out: what a caller of the serving container sends and gets.
        inputs = feature_columns(spec, example)
        signature = infer_signature(inputs, OnnxModel.from_file(onnx_path).predict_columns(inputs))
        # A self-contained model.onnx (no external data file): the serving side downloads one file.
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", save_as_external_data=False,
                                     pip_requirements=["onnxruntime"], signature=signature,
                                     input_example=inputs)
    mv = mlflow.register_model(info.model_uri, spec.registered_model, tags={
        "data.fingerprint": fingerprint, "data.snapshot": str(snapshot), "run_id": run_id,
        "onnx.sha256": sha,
    })
    return str(mv.version)
