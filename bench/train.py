"""`python -m bench.train` (make bench-train): a training epoch through the real input pipeline vs the
same epoch on tensors preloaded on the device.

Data: the whole of 2013 (336,776 flights) from the demo database (SQLite, seeded once under
STATE_DIR/bench), extracted once into a snapshot, split by time as the pipeline does; or any snapshot
given with --snapshot. Per device and batch size, one model (the spec's, same seed) trains a warm-up
epoch, then EPOCHS epochs alternating between
    real       tasks.fit.Batches: shuffled CPU tensors gathered per batch (pinned buffers and
               asynchronous copies on CUDA), what `fit` trains with
    preloaded  every tensor already on the device, batches gathered there (the floor)
and the best epoch of each counts. loader_ratio = real / preloaded seconds (target <= 1.1).
With CUDA present the CPU runs too, for the speed-up. The last line is
`RESULT loader_ratio=<x> rows_per_s=<n>` for the first device and batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import torch

from tasks import settings
from tasks.config import load_spec
from tasks.dataset import load_frame, split_by_time
from tasks.fit import Batches, build_model, pick_device, train_step
from tasks.snapshot import Window, snapshot_dir

EPOCHS = int(os.environ.get("BENCH_EPOCHS", "3"))
YEAR = Window(datetime(2013, 1, 1), datetime(2014, 1, 1))


def year_snapshot() -> Path:
    """The 2013 snapshot of the demo data, seeded and extracted on first use."""
    from tasks import seed
    from tasks.extract import extract_snapshot

    work = settings.state_dir() / "bench"
    spec = load_spec()
    target = snapshot_dir(work / "snapshots", spec.name, YEAR)
    if not (target / "manifest.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        db_url = f"sqlite:///{work / 'flights.db'}"
        seed.seed_database(db_url)  # a no-op when the tables already hold the whole year
        seed.write_landing_files(settings.state_dir())
        extract_snapshot(spec, YEAR, db_url, work / "snapshots")
    return target


def _timed(epoch: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def measure(snapshot: Path, device: torch.device, batch_size: int) -> dict[str, float]:
    spec = load_spec()
    training = spec.training.model_copy(update={"batch_size": batch_size})
    splits = split_by_time(spec, load_frame(spec, snapshot))
    net, train, _ = build_model(spec, training, splits)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    loader = Batches(train, batch_size, training.seed, device)
    resident = tuple(t.to(device) for t in train)
    generator = torch.Generator(device=device).manual_seed(training.seed)

    def real() -> None:
        for batch in loader:
            train_step(net, optimizer, batch, device)

    def preloaded() -> None:
        order = torch.randperm(len(resident[0]), generator=generator, device=device)
        for index in order.split(batch_size):
            train_step(net, optimizer, tuple(t[index] for t in resident), device)

    real()  # warm-up: kernels, allocator, caches
    preloaded()
    times: dict[str, list[float]] = {"real": [], "preloaded": []}
    for _ in range(EPOCHS):
        times["real"].append(_timed(real, device))
        times["preloaded"].append(_timed(preloaded, device))
    rows = len(train[0])
    best = {k: min(v) for k, v in times.items()}
    return {"rows": rows, "real_s": best["real"], "preloaded_s": best["preloaded"],
            "loader_ratio": best["real"] / best["preloaded"], "rows_per_s": rows / best["real"]}


def fit_and_check(snapshot: Path, device: torch.device, baseline: bool = False) -> None:
    """The pipeline's own `fit` on `device`, then the exported ONNX against torch on the holdout
    (and, with `baseline`, the logistic-regression baseline on the same holdout)."""
    import logging
    import tempfile

    import numpy as np

    from serving.model import OnnxModel
    from tasks.dataset import LABEL, feature_columns
    from tasks.fit import fit, predict
    from tasks.metrics import classification_metrics
    from tasks.model import encode, export_onnx

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = load_spec()
    splits = split_by_time(spec, load_frame(spec, snapshot))
    began = time.perf_counter()
    net, history = fit(spec, spec.training, splits, device)
    seconds = time.perf_counter() - began
    columns = feature_columns(spec, splits.holdout)
    numeric, codes = encode(net.config, columns)
    torch_probs = predict(net, torch.from_numpy(numeric), torch.from_numpy(codes), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(net, Path(tmp) / "model.onnx", {"device": device.type})
        onnx = OnnxModel.from_file(Path(tmp) / "model.onnx", spec.registered_model, "bench")
        onnx_probs = onnx.predict_columns(columns)
    labels = splits.holdout[LABEL].to_numpy()
    metrics = classification_metrics(labels, onnx_probs)
    print(f"fit on {device}: {len(history)} epochs in {seconds:.1f} s; holdout ROC AUC {metrics['roc_auc']:.4f}; "
          f"ONNX vs torch max |diff| {float(np.max(np.abs(onnx_probs - torch_probs))):.2e}")
    if baseline:
        from tasks.baseline import baseline_probs, fit_baseline

        base = classification_metrics(labels, baseline_probs(fit_baseline(spec, splits.train), spec, splits.holdout))
        print(f"logistic-regression baseline, same holdout: ROC AUC {base['roc_auc']:.4f}, "
              f"PR AUC {base['pr_auc']:.4f}, log loss {base['log_loss']:.4f}; network: PR AUC {metrics['pr_auc']:.4f}, "
              f"log loss {metrics['log_loss']:.4f}")


def _devices(requested: str) -> Iterable[torch.device]:
    first = pick_device(requested)
    yield first
    if first.type == "cuda":
        yield torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot", type=Path, help="snapshot folder (default: 2013 of the demo data)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable (default: the spec's)")
    parser.add_argument("--fit", action="store_true", help="also run the pipeline's fit + ONNX parity there")
    parser.add_argument("--baseline", action="store_true", help="with --fit: the logistic-regression baseline too")
    args = parser.parse_args()
    snapshot = args.snapshot or year_snapshot()
    if args.fit:
        fit_and_check(snapshot, pick_device(args.device), args.baseline)
    sizes = args.batch_size or [load_spec().training.batch_size]
    torch.set_num_threads(os.cpu_count() or 1)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"measured {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {os.cpu_count()} CPUs, GPU: {gpu}; "
          f"torch {torch.__version__}, Python {platform.python_version()}; snapshot {snapshot}; "
          f"best of {EPOCHS} epochs after a warm-up")
    print("| device | batch | train rows | real s/epoch | preloaded s/epoch | loader ratio | rows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for device in _devices(args.device):
        for size in sizes:
            r = results[(device.type, size)] = measure(snapshot, device, size)
            print(f"| {device.type} | {size} | {r['rows']:,} | {r['real_s']:.3f} | {r['preloaded_s']:.3f} "
                  f"| {r['loader_ratio']:.3f} | {r['rows_per_s']:,.0f} |", flush=True)
    if ("cuda", sizes[0]) in results:
        for size in sizes:
            speedup = results[("cuda", size)]["rows_per_s"] / results[("cpu", size)]["rows_per_s"]
            print(f"CUDA vs CPU at batch {size}: {speedup:.1f}x the rows/s")
    first = results[next(iter(results))]
    print(f"RESULT loader_ratio={first['loader_ratio']:.3f} rows_per_s={first['rows_per_s']:.0f}")


if __name__ == "__main__":
    main()
