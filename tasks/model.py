"""A tabular PyTorch model that carries its own preprocessing, and its ONNX export.

Normalisation statistics and category vocabularies live inside the model, so the exported
graph takes raw feature columns and training/serving skew cannot happen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

ONNX_OPSET = 18
ONNX_IR_VERSION = 10  # what onnxruntime >= 1.16 reads (the installed onnx writes newer by default)


@dataclass
class ModelConfig:
    numeric: list[str]
    categorical: list[str]
    vocab: dict[str, list[str]]  # per categorical column; code 0 is "unknown"
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    embedding_dim: int = 8


class Normalize(nn.Module):
    """(x - mean) / std with missing values imputed at the mean, plus a missing flag per column."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, 2n)
        missing = torch.isnan(x)
        z = torch.where(missing, torch.zeros_like(x), (x - self.mean) / self.std)
        return torch.cat([z, missing.to(x.dtype)], dim=1)


class Embed(nn.Module):
    """One embedding table per categorical column, row 0 for unseen values."""

    def __init__(self, sizes: list[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim) for n in sizes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # (B, k) int64 -> (B, k*dim)
        return torch.cat([t(codes[:, i]) for i, t in enumerate(self.tables)], dim=1)


class TabularNet(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = Normalize(len(config.numeric))
        self.embed = Embed([len(config.vocab[c]) for c in config.categorical], config.embedding_dim)
        width = 2 * len(config.numeric) + config.embedding_dim * len(config.categorical)
        layers: list[nn.Module] = []
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_numeric) float32, (B, n_categorical) int64 -> (B,) logits."""
        x = torch.cat([self.normalize(numeric), self.embed(codes)], dim=1)
        return self.head(x).squeeze(1)

    def fit_preprocessing(self, numeric: np.ndarray) -> None:
        """Set the normalisation buffers from training data (NaN-aware)."""
        mean = np.nan_to_num(np.nanmean(numeric, axis=0))
        std = np.nan_to_num(np.nanstd(numeric, axis=0), nan=1.0)
        self.normalize.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.normalize.std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))


def build_vocab(values: pd.Series) -> list[str]:
    return sorted(str(v) for v in values.dropna().unique() if str(v) != "")


def encode(config: ModelConfig, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw feature columns -> (numeric float32 (N, n), codes int64 (N, k)); unseen values -> 0."""
    numeric = np.stack([columns[c].astype(np.float32) for c in config.numeric], axis=1)
    codes = np.stack([
        pd.Categorical(columns[c], categories=config.vocab[c]).codes.astype(np.int64) + 1
        for c in config.categorical
    ], axis=1)
    return numeric, codes


def export_onnx(net: TabularNet, path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Export to ONNX with one raw input per feature column (float32 or string), output `probability`.

    The graph is written from the module's weights rather than traced: onnxruntime pays per node on
    every call, and the server's calls are small (a 1-row request joins a call of ~10-30 rows), so
    the first layer is folded. Each embedding table times its slice of the first layer's weights is
    one lookup table of that layer's width; the 1/std of the normalisation goes into the numeric
    weights (the mean is still subtracted first: folded into the bias it cancels catastrophically in
    float32 for a column whose training std is tiny); the missing flags are a second block of rows in
    the same Gemm. For the flights features: 21 nodes, not the traced graph's 26, with the same answers
    as torch to ~1e-7 (`tasks.evaluate.parity` checks every holdout row before a version is promoted).
    """
    model = helper.make_model(_graph(net.to("cpu").eval()), ir_version=ONNX_IR_VERSION, producer_name="tasks.model",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                             helper.make_opsetid("ai.onnx.ml", 3)])  # LabelEncoder int64: ml >= 2
    meta = {"model_config": json.dumps(asdict(net.config)), **metadata}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return model


def _graph(net: TabularNet) -> onnx.GraphProto:
    """TabularNet's forward pass and sigmoid as ONNX nodes over raw columns (see `export_onnx`)."""
    cfg = net.config
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    if [type(m) for m in net.head] != [t for _ in linears[1:] for t in (nn.Linear, nn.ReLU)] + [nn.Linear]:
        raise TypeError("export_onnx folds a head of Linear/ReLU pairs and a last Linear; this head is "
                        f"{[type(m).__name__ for m in net.head]}")
    n = len(cfg.numeric)
    with torch.no_grad():  # folded in float64, stored as float32
        weight, bias = linears[0].weight.double().numpy(), linears[0].bias.double().numpy()  # (h, width), (h,)
        mean, std = net.normalize.mean.double().numpy(), net.normalize.std.double().numpy()
        tables = [t.weight.double().numpy() for t in net.embed.tables if isinstance(t, nn.Embedding)]
    initializers: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    nodes, addends = [], []
    column = 2 * n  # the first layer's inputs: n normalised numerics, n missing flags, then each embedding
    for c, table in zip(cfg.categorical, tables, strict=True):
        vocab, dim = cfg.vocab[c], table.shape[1]
        lookup = table @ weight[:, column:column + dim].T  # (vocabulary + 1, h): code -> its share of layer 1
        column += dim
        nodes += [
            helper.make_node("LabelEncoder", [c], [f"__{c}_code"], domain="ai.onnx.ml", keys_strings=vocab,
                             values_int64s=list(range(1, len(vocab) + 1)), default_int64=0),
            helper.make_node("Gather", [const(f"__{c}_layer1", lookup.astype(np.float32)), f"__{c}_code"],
                             [f"__{c}_h"], axis=0),
        ]
        addends.append(f"__{c}_h")
    h = const("__layer1_bias", bias.astype(np.float32))  # the first layer's output, built up from here
    if addends:
        nodes.append(helper.make_node("Sum", [*addends, h], ["__layer1_c"]))
        h = "__layer1_c"
    if n:
        # The numeric columns stacked as an (n, N) matrix in two nodes; the Gemm reads it transposed.
        rows = np.concatenate([(weight[:, :n] / std).T, weight[:, n:2 * n].T])  # (2n, h)
        nodes += [
            helper.make_node("Concat", list(cfg.numeric), ["__flat"], axis=0),
            helper.make_node("Reshape", ["__flat", const("__by_column", np.array([n, -1], np.int64))], ["__x"]),
            helper.make_node("Sub", ["__x", const("__mean", mean.astype(np.float32).reshape(n, 1))], ["__centred"]),
            helper.make_node("IsNaN", ["__x"], ["__missing"]),
            helper.make_node("Where", ["__missing", const("__zero", np.zeros((), np.float32)), "__centred"],
                             ["__imputed"]),  # missing: the mean, so 0 once centred
            helper.make_node("Cast", ["__missing"], ["__flags"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["__imputed", "__flags"], ["__layer1_in"], axis=0),
            helper.make_node("Gemm", ["__layer1_in", const("__layer1", rows.astype(np.float32)), h],
                             ["__layer1_out"], transA=1),
        ]
        h = "__layer1_out"
    for i, linear in enumerate(linears[1:], 2):
        with torch.no_grad():
            w, b = linear.weight.float().numpy(), linear.bias.float().numpy()
        nodes += [helper.make_node("Relu", [h], [f"__relu{i}"]),
                  helper.make_node("Gemm", [f"__relu{i}", const(f"__layer{i}", w), const(f"__layer{i}_bias", b)],
                                   [f"__layer{i}_out"], transB=1)]
        h = f"__layer{i}_out"
    nodes += [helper.make_node("Sigmoid", [h], ["__probability"]),
              helper.make_node("Reshape", ["__probability", const("__flat_shape", np.array([-1], np.int64))],
                               ["probability"])]
    inputs = ([helper.make_tensor_value_info(c, TensorProto.FLOAT, ["N"]) for c in cfg.numeric]
              + [helper.make_tensor_value_info(c, TensorProto.STRING, ["N"]) for c in cfg.categorical])
    output = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])
    return helper.make_graph(nodes, "tabular_net", inputs, [output], initializers)


def save_checkpoint(net: TabularNet, path: Path) -> None:
    """Weights with their config, so a checkpoint rebuilds its own model."""
    torch.save({"config": asdict(net.config), "state_dict": net.state_dict()}, path)


def load_checkpoint(path: Path) -> TabularNet:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = TabularNet(ModelConfig(**payload["config"]))
    net.load_state_dict(payload["state_dict"])
    return net.eval()
