"""The serving app over HTTP: plain JSON and OIP v2, clear 400s, readiness, the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from serving.app import create_app
from serving.registry import ModelCache, ModelRef
from serving.settings import Settings
from tasks.model import ModelConfig, TabularNet, export_onnx

RECORD = {"distance": 1000, "hour": 7, "carrier": "UA", "origin": "EWR"}


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    cfg = ModelConfig(["distance", "hour"], ["carrier", "origin"],
                      {"carrier": ["AA", "UA"], "origin": ["EWR", "JFK"]}, [8], 4)
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    export_onnx(TabularNet(cfg), path, {"model_name": "flights_delay"})
    return path.read_bytes()


def _settings(cache: Path) -> Settings:
    return Settings(model_name="flights_delay", registry_url=None, alias="champion", poll_seconds=3600,
                    cache_dir=cache, host="127.0.0.1", port=0)


@pytest.fixture()
def client(tmp_path, onnx_bytes):
    ModelCache(tmp_path, "flights_delay").save(ModelRef("flights_delay", "7", None), onnx_bytes)
    with TestClient(create_app(_settings(tmp_path))) as c:
        yield c


def test_predict_answers_with_probabilities_and_version(client):
    resp = client.post("/predict", json={"records": [RECORD, {**RECORD, "carrier": "AA"}]})
    assert resp.status_code == 200
    body = resp.json()
    assert body["model_version"] == "7" and resp.headers["x-model-version"] == "7"
    assert len(body["predictions"]) == 2
    assert all(0 <= p["probability"] <= 1 and p["label"] in (0, 1) for p in body["predictions"])


def test_oip_infer_with_one_tensor_per_column(client):
    inputs = [{"name": "distance", "shape": [1], "datatype": "FP32", "data": [1000]},
              {"name": "hour", "shape": [1], "datatype": "FP32", "data": [7]},
              {"name": "carrier", "shape": [1], "datatype": "BYTES", "data": ["UA"]},
              {"name": "origin", "shape": [1], "datatype": "BYTES", "data": ["EWR"]}]
    resp = client.post("/v2/models/flights_delay/infer", json={"inputs": inputs, "id": "r1"})
    assert resp.status_code == 200, resp.text
    plain = client.post("/predict", json={"records": [RECORD]}).json()["predictions"][0]["probability"]
    assert resp.json()["outputs"][0]["data"][0] == pytest.approx(plain)
    assert resp.json()["id"] == "r1"


def test_bad_input_is_a_400_that_names_the_field(client):
    resp = client.post("/predict", json={"records": [{**RECORD, "distance": "far"}]})
    assert resp.status_code == 400
    assert "distance" in resp.json()["error"]
    assert client.post("/predict", content=b"not json").status_code == 400
    assert client.post("/predict", json={"rows": []}).status_code == 400


def test_metadata_and_health(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True, "model_version": "7"}
    meta = client.get("/v2/models/flights_delay").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["carrier"] == "BYTES"
    assert client.get("/v2/models/other").status_code == 404


def test_not_ready_without_a_model(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.post("/predict", json={"records": [RECORD]}).status_code == 503


def test_corrupted_cache_is_not_served(tmp_path, onnx_bytes):
    import hashlib
    ModelCache(tmp_path, "flights_delay").save(
        ModelRef("flights_delay", "7", hashlib.sha256(onnx_bytes).hexdigest()), onnx_bytes[:-10])
    with TestClient(create_app(_settings(tmp_path))) as c:
        assert c.get("/v2/health/ready").status_code == 503
