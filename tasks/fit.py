"""The training loop. Torch only (no MLflow, no Airflow), so it runs wherever torch does."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.config import PipelineSpec, Training
from tasks.dataset import LABEL, Splits, feature_columns
from tasks.metrics import classification_metrics
from tasks.model import ModelConfig, TabularNet, build_vocab, encode

log = logging.getLogger(__name__)
PREDICT_BATCH = 8192


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when asked for `auto` and present, else the CPU; an explicit name is taken as is."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def tensors(cfg: ModelConfig, spec: PipelineSpec, frame: Any) -> tuple[torch.Tensor, ...]:
    """(numeric float32, codes int64, labels float32) on the CPU, encoded as the model expects."""
    numeric, codes = encode(cfg, feature_columns(spec, frame))
    # A copy: the frame's column may be a read-only view of Arrow memory.
    labels = np.array(frame[LABEL].to_numpy(dtype=np.float32), copy=True)
    return torch.from_numpy(numeric), torch.from_numpy(codes), torch.from_numpy(labels)


class Batches:
    """Shuffled mini-batches of CPU tensors, moved to `device`.

    One index gather per batch (a DataLoader over a TensorDataset gathers and collates row by
    row, several times slower than the training step on the CPU). On CUDA the gather lands in
    pinned buffers, so the copy to the GPU is asynchronous; two buffers alternate and each is
    reused only once its previous copy has finished.
    """

    def __init__(self, data: tuple[torch.Tensor, ...], batch_size: int, seed: int, device: torch.device) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.pinned: list[tuple[list[torch.Tensor], torch.cuda.Event | None]] = []
        if device.type == "cuda":
            self.pinned = [([torch.empty((batch_size, *t.shape[1:]), dtype=t.dtype).pin_memory() for t in data],
                             None) for _ in range(2)]

    def __len__(self) -> int:
        return len(self.data[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = torch.randperm(len(self), generator=self.generator)
        for i, index in enumerate(order.split(self.batch_size)):
            if not self.pinned:
                yield tuple(t[index].to(self.device) for t in self.data)
                continue
            buffers, copied = self.pinned[i % 2]
            if copied is not None:
                copied.synchronize()
            staged = [torch.index_select(t, 0, index, out=b[:len(index)]) for t, b in zip(self.data, buffers,
                                                                                             strict=True)]
            batch = tuple(s.to(self.device, non_blocking=True) for s in staged)
            event = torch.cuda.Event()
            event.record()
            self.pinned[i % 2] = (buffers, event)
            yield batch


@torch.inference_mode()
def predict(net: TabularNet, numeric: torch.Tensor, codes: torch.Tensor, device: torch.device) -> np.ndarray:
    """Probabilities for encoded rows, scored in chunks on `device`, returned on the CPU."""
    net.eval()
    out = [torch.sigmoid(net(n.to(device), c.to(device))).float().cpu()
           for n, c in zip(numeric.split(PREDICT_BATCH), codes.split(PREDICT_BATCH), strict=True)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def build_model(spec: PipelineSpec, training: Training, splits: Splits) -> tuple[TabularNet, tuple, tuple]:
    """The untrained model with vocabularies and normalisation from the training rows, and the
    encoded (train, validation) tensors."""
    torch.manual_seed(training.seed)
    vocab = {c: build_vocab(splits.train[c]) for c in spec.features.categorical}
    cfg = ModelConfig(spec.features.numeric, spec.features.categorical, vocab,
                      training.hidden, training.embedding_dim)
    net = TabularNet(cfg)
    train = tensors(cfg, spec, splits.train)
    net.fit_preprocessing(train[0].numpy())
    return net, train, tensors(cfg, spec, splits.validation)


def train_step(net: TabularNet, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
               device: torch.device) -> torch.Tensor:
    """One optimiser step; returns the batch's mean loss (on the device, not synchronised)."""
    numeric, codes, labels = batch
    # bf16 autocast only on CUDA: CPU runs stay in float32 and bit-reproducible.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = net(numeric, codes)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def fit(spec: PipelineSpec, training: Training, splits: Splits,
        device: torch.device) -> tuple[TabularNet, list[dict[str, float]]]:
    """Train with early stopping on validation loss; return the best model and per-epoch metrics."""
    net, train, val = build_model(spec, training, splits)
    net.to(device)
    loader = Batches(train, training.batch_size, training.seed, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    stale = 0
    for epoch in range(1, training.epochs + 1):
        net.train()
        started = time.perf_counter()
        # Summed on the device: no host synchronisation per step.
        total = torch.zeros((), device=device)
        for batch in loader:
            total += train_step(net, optimizer, batch, device) * len(batch[2])
        train_loss = float(total) / max(len(loader), 1)
        elapsed = time.perf_counter() - started
        probs = predict(net, val[0], val[1], device)
        val_metrics = classification_metrics(val[2].numpy(), probs)
        row = {"train_loss": train_loss, "val_loss": val_metrics["log_loss"],
               "val_roc_auc": val_metrics["roc_auc"], "rows_per_s": len(loader) / max(elapsed, 1e-9),
               "epoch_seconds": elapsed}
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
