"""Model behaviour: it learns, it is reproducible, and the ONNX artifact answers like torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import JUNE_WEEK

from serving.model import OnnxModel
from tasks.dataset import feature_columns, load_frame, split_by_time
from tasks.extract import extract_snapshot
from tasks.model import encode, export_onnx
from tasks.train import fit, predict


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


def test_same_seed_gives_identical_weights(spec, splits, trained):
    again, _ = fit(spec, spec.training, splits, torch.device("cpu"))
    for (name, a), b in zip(trained[0].state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_onnx_export_matches_torch_on_raw_columns(spec, splits, trained, tmp_path):
    net, _ = trained
    path = tmp_path / "model.onnx"
    export_onnx(net, path, {"model_name": "t"})
    columns = feature_columns(spec, splits.holdout)
    onnx_probs = OnnxModel.from_file(path).predict_columns(columns)
    numeric, codes = encode(net.config, columns)
    torch_probs = predict(net, torch.from_numpy(numeric), torch.from_numpy(codes), torch.device("cpu"))
    assert np.max(np.abs(onnx_probs - torch_probs)) <= 1e-5


def test_unseen_categories_and_missing_numbers_still_score(spec, trained, tmp_path):
    net, _ = trained
    path = tmp_path / "model.onnx"
    export_onnx(net, path, {"model_name": "t"})
    model = OnnxModel.from_file(path)
    record = {f.name: None for f in model.features}
    record.update(carrier="ZZ", origin="NOPE", dest="XXX")
    probs = model.predict_columns(model.columns_from_records([record]))
    assert 0.0 < float(probs[0]) < 1.0
