"""Model behaviour: it learns, it is reproducible, and the ONNX artifact answers like torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import JUNE_WEEK
from onnx import numpy_helper

from serving.model import OnnxModel
from tasks.dataset import feature_columns, load_frame, split_by_time
from tasks.evaluate import ParityError, parity, torch_probs
from tasks.extract import extract_snapshot
from tasks.fit import fit
from tasks.model import ModelConfig, TabularNet, encode, export_onnx


@pytest.fixture(scope="module")
def splits(spec, sqlite_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    extract_snapshot(spec, JUNE_WEEK, sqlite_url, root)
    return split_by_time(spec, load_frame(spec, root / "flights" / JUNE_WEEK.slug))


@pytest.fixture(scope="module")
def trained(spec, splits):
    return fit(spec, spec.training, splits, torch.device("cpu"))


def test_split_is_time_ordered(spec, splits):
    assert splits.train[spec.event_time].max() <= splits.validation[spec.event_time].min()
    assert splits.validation[spec.event_time].max() <= splits.holdout[spec.event_time].min()


def test_training_loss_goes_down_and_beats_chance(trained):
    net, history = trained
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_roc_auc"] > 0.55


def test_same_seed_gives_identical_weights_and_metrics(spec, splits, trained):
    again, history = fit(spec, spec.training, splits, torch.device("cpu"))
    for (name, a), b in zip(trained[0].state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    timing = {"rows_per_s", "epoch_seconds"}
    assert [{k: v for k, v in row.items() if k not in timing} for row in history] == \
        [{k: v for k, v in row.items() if k not in timing} for row in trained[1]]


def test_onnx_export_matches_torch_on_raw_columns(spec, splits, trained, tmp_path):
    net, _ = trained
    path = tmp_path / "model.onnx"
    export_onnx(net, path, {"model_name": "t"})
    onnx_probs = OnnxModel.from_file(path).predict_columns(feature_columns(spec, splits.holdout))
    assert parity(onnx_probs, torch_probs(net, spec, splits.holdout), "t") <= 1e-5


def test_onnx_graph_folds_the_first_layer_into_few_nodes(trained, tmp_path):
    # onnxruntime pays per node on every call: normalisation, embeddings and the first Linear are one
    # Gemm plus a lookup per categorical column; no codes matrix, no concatenated embeddings.
    net = trained[0]
    model = export_onnx(net, tmp_path / "model.onnx", {"model_name": "t"})
    ops = [n.op_type for n in model.graph.node]
    linears = sum(isinstance(m, torch.nn.Linear) for m in net.head)
    assert ops.count("Gemm") == linears
    assert ops.count("Gather") == ops.count("LabelEncoder") == len(net.config.categorical)
    assert "Div" not in ops and "Transpose" not in ops and "Unsqueeze" not in ops
    assert len(ops) <= 21


def test_onnx_export_keeps_parity_on_a_column_that_was_nearly_constant_in_training(tmp_path):
    # A column constant in training (float32 noise gives it a std of ~1e-5) makes 1/std huge: folding
    # the mean into the bias would cancel catastrophically in float32; centring first does not.
    cfg = ModelConfig(["year", "distance"], ["carrier"], {"carrier": ["AA", "B6"]}, [16], 4)
    torch.manual_seed(3)
    net = TabularNet(cfg)
    rng = np.random.default_rng(0)
    train = np.column_stack([np.full(500, 2005.0) + rng.normal(0, 1e-4, 500), rng.uniform(100, 5000, 500)])
    net.fit_preprocessing(train.astype(np.float32))
    assert float(net.normalize.std[0]) < 1e-3
    path = tmp_path / "model.onnx"
    export_onnx(net, path, {"model_name": "t"})
    year = np.array([2005.0, 2005.0, np.nan, 2005.0001, 2004.9999, 2005.0], np.float32)
    distance = np.array([2475.0, np.nan, 300.0, 1000.0, 4999.0, 100.0], np.float32)
    carrier = np.array(["AA", "B6", "ZZ", "", "AA", "B6"], dtype=object)
    onnx_probs = OnnxModel.from_file(path).predict_columns({"year": year, "distance": distance, "carrier": carrier})
    numeric, codes = encode(cfg, {"year": year, "distance": distance, "carrier": carrier})
    with torch.no_grad():
        reference = torch.sigmoid(net(torch.from_numpy(numeric), torch.from_numpy(codes))).numpy()
    assert parity(onnx_probs, reference, "t") <= 1e-5


def test_a_broken_export_fails_the_parity_check(spec, splits, trained, tmp_path):
    net, _ = trained
    path = tmp_path / "model.onnx"
    model = export_onnx(net, path, {"model_name": "t"})
    # What a faulty exporter would do: one weight matrix of the graph slightly off.
    weights = max((i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
                  key=lambda i: np.prod(i.dims))
    values = numpy_helper.to_array(weights).copy()
    values += 0.01
    weights.CopyFrom(numpy_helper.from_array(values, weights.name))
    onnx.save(model, path)
    onnx_probs = OnnxModel.from_file(path).predict_columns(feature_columns(spec, splits.holdout))
    with pytest.raises(ParityError, match="differs from torch by"):
        parity(onnx_probs, torch_probs(net, spec, splits.holdout), "t")


def test_unseen_categories_and_missing_numbers_still_score(spec, trained, tmp_path):
    net, _ = trained
    path = tmp_path / "model.onnx"
    export_onnx(net, path, {"model_name": "t"})
    model = OnnxModel.from_file(path)
    record = {f.name: None for f in model.features}
    record.update(carrier="ZZ", origin="NOPE", dest="XXX")
    probs = model.predict_columns(model.columns_from_records([record]))
    assert 0.0 < float(probs[0]) < 1.0


@pytest.fixture(scope="module")
def summer(spec, sqlite_url, tmp_path_factory):
    """The model trained on June and July 2013 as the pipeline would (the spec's epochs)."""
    from datetime import datetime

    from tasks.snapshot import Window

    window = Window(datetime(2013, 6, 1), datetime(2013, 8, 1))
    root = tmp_path_factory.mktemp("summer")
    extract_snapshot(spec, window, sqlite_url, root)
    splits = split_by_time(spec, load_frame(spec, root / "flights" / window.slug))
    training = spec.training.model_copy(update={"epochs": 4})
    return fit(spec, training, splits, torch.device("cpu"))[0], splits


def test_storms_do_not_lower_the_predicted_delay(spec, summer):
    """Heavy rain and poor visibility at the origin make delays likelier, never less likely, on average."""
    net, splits = summer
    flights = splits.holdout
    clear = torch_probs(net, spec, flights.assign(precip=0.0, visib=10.0))
    storm = torch_probs(net, spec, flights.assign(precip=0.3, visib=0.5))
    assert storm.mean() > clear.mean()


def test_the_model_ranks_better_than_chance_and_close_to_the_logistic_baseline(spec, summer):
    from tasks.baseline import baseline_probs, fit_baseline
    from tasks.dataset import LABEL
    from tasks.metrics import classification_metrics

    net, splits = summer
    labels = splits.holdout[LABEL].to_numpy()
    ours = classification_metrics(labels, torch_probs(net, spec, splits.holdout))
    base = classification_metrics(labels, baseline_probs(fit_baseline(spec, splits.train), spec, splits.holdout))
    assert ours["roc_auc"] > 0.6 and base["roc_auc"] > 0.6
    assert ours["roc_auc"] > base["roc_auc"] - 0.03, (ours, base)
