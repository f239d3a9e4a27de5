"""The serving app in-process: plain JSON and OIP v2 (per-feature, row-major, binary), every validation case
as a 4xx naming the field, auth, limits, metrics, OpenAPI, micro-batching, the prediction log, the cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import random
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from starlette.testclient import TestClient

from serving import binary, predlog
from serving.__main__ import run as serve
from serving.app import create_app
from serving.http import header, whole_body
from serving.listen import OwnListener, bind_reuseport
from serving.metrics import FOLD_EVERY, Metrics
from serving.model import InputError, OnnxModel
from serving.parquet import Column, Constant, Flags, Pages, ParquetWriter, is_complete, recover, write_table
from serving.predictor import INLINE_ROWS, Predictor
from serving.predlog import PredictionLog
from serving.protocol import Rows
from serving.registry import ModelCache, ModelRef
from serving.settings import Settings
from tasks.model import ModelConfig, TabularNet, export_onnx

RECORD = {"distance": 1000, "hour": 7, "carrier": "UA", "origin": "EWR"}
FEATURES = ["distance", "hour", "carrier", "origin"]
INFER = "/v2/models/flights_delay/infer"


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    cfg = ModelConfig(["distance", "hour"], ["carrier", "origin"],
                      {"carrier": ["AA", "UA"], "origin": ["EWR", "JFK"]}, [8], 4)
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    export_onnx(TabularNet(cfg), path, {"model_name": "flights_delay"})
    return path.read_bytes()


def _settings(cache: Path, **changes) -> Settings:
    base = Settings(model_name="flights_delay", registry_url=None, alias="champion", poll_seconds=3600,
                    cache_dir=cache, host="127.0.0.1", port=0)
    return replace(base, **changes)


@pytest.fixture()
def cache(tmp_path, onnx_bytes) -> Path:
    ModelCache(tmp_path, "flights_delay").save(ModelRef("flights_delay", "7", None), onnx_bytes)
    return tmp_path


@pytest.fixture()
def client(cache):
    with TestClient(create_app(_settings(cache))) as c:
        yield c


def _tensors(records: list[dict]) -> list[dict]:
    return [{"name": f, "shape": [len(records)], "datatype": "BYTES" if f in ("carrier", "origin") else "FP32",
             "data": [r[f] for r in records]} for f in FEATURES]


def _plain(client, records) -> list[float]:
    return [p["probability"] for p in client.post("/predict", json={"records": records}).json()["predictions"]]


def test_predict_answers_with_probabilities_and_version(client):
    resp = client.post("/predict", json={"records": [RECORD, {**RECORD, "carrier": "AA"}]})
    assert resp.status_code == 200
    body = resp.json()
    assert body["model_version"] == "7" and resp.headers["x-model-version"] == "7"
    assert len(body["predictions"]) == 2
    assert all(0 <= p["probability"] <= 1 and p["label"] in (0, 1) for p in body["predictions"])


def test_oip_infer_with_one_tensor_per_column(client):
    resp = client.post(INFER, json={"inputs": _tensors([RECORD]), "id": "r1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["outputs"][0]["name"] == "probability"
    assert body["outputs"][0]["data"][0] == pytest.approx(_plain(client, [RECORD])[0])
    assert body["outputs"][1] == {"name": "label", "datatype": "INT64", "shape": [1],
                                  "data": [int(body["outputs"][0]["data"][0] >= 0.5)]}
    assert body["id"] == "r1" and body["model_version"] == "7" and resp.headers["x-model-version"] == "7"
    # An empty list of requested outputs (some clients always send the field) means all of them, as absent does.
    again = client.post(INFER, json={"inputs": _tensors([RECORD]), "id": "r1", "outputs": []}).json()
    assert again["outputs"] == body["outputs"]


def test_oip_row_major_tensor_answers_like_the_per_feature_form(client):
    records = [RECORD, {**RECORD, "distance": None, "carrier": "AA"}]
    expected = _plain(client, records)
    rows = [[r[f] for f in FEATURES] for r in records]
    nested = {"name": "input", "shape": [2, 4], "datatype": "BYTES", "data": rows}
    flat = {**nested, "data": [v for row in rows for v in row]}
    as_text = {**nested, "data": [["1000", "7", "UA", "EWR"], ["", "7", "AA", "EWR"]]}  # BYTES: numbers as text
    for tensor in (nested, flat, as_text):
        resp = client.post(INFER, json={"inputs": [tensor]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"][0]["data"] == pytest.approx(expected)


def test_oip_binary_tensor_extension_in_and_out(client):
    """What Triton's Python client sends by default: JSON header, then raw little-endian tensors."""
    records = [RECORD, {**RECORD, "hour": 20}]
    blobs, inputs = [], []
    for f in FEATURES:
        values = [r[f] for r in records]
        if f in ("carrier", "origin"):
            blob = b"".join(struct.pack("<I", len(v)) + v.encode() for v in values)
            datatype = "BYTES"
        else:
            blob, datatype = np.array(values, dtype="<f4").tobytes(), "FP32"
        blobs.append(blob)
        inputs.append({"name": f, "shape": [2], "datatype": datatype, "parameters": {"binary_data_size": len(blob)}})
    head = json.dumps({"inputs": inputs, "outputs": [{"name": "probability", "parameters": {"binary_data": True}}]})
    resp = client.post(INFER, content=head.encode() + b"".join(blobs),
                       headers={"Inference-Header-Content-Length": str(len(head)),
                                "Content-Type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    size = int(resp.headers["inference-header-content-length"])
    header = json.loads(resp.content[:size])
    assert header["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [2],
                                  "parameters": {"binary_data_size": 8}}]
    assert np.frombuffer(resp.content[size:], "<f4").tolist() == pytest.approx(_plain(client, records))


@pytest.mark.parametrize(("body", "field"), [
    ({"records": [{**RECORD, "distance": "far"}]}, "records[0].distance"),
    ({"records": [{**RECORD, "distance": True}]}, "records[0].distance"),
    ({"records": [{**RECORD, "carrier": 5}]}, "records[0].carrier"),
    ({"records": [{k: v for k, v in RECORD.items() if k != "hour"}]}, "missing feature `hour`"),
    ({"records": [{**RECORD, "wind": 3}]}, "unknown feature `wind`"),
    ({"records": [RECORD, [1, 2]]}, "records[1]"),
    ({"records": []}, "records: at least one record"),
    ({"records": RECORD}, "records"),
    ({"rows": [RECORD]}, "rows"),
    ([RECORD], "body"),
    ({"records": [{**RECORD, "distance": 1e39}]}, "records[0].distance"),  # beyond FP32
    ({"records": [{**RECORD, "distance": 1e999}]}, "records[0].distance"),  # infinity
    ({"records": [RECORD], "id": 3}, "id"),
])
def test_predict_refuses_bad_records_naming_the_field(client, body, field):
    resp = client.post("/predict", content=json.dumps(body))
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"records": [{"distance": NaN, "hour": 7, "carrier": "UA", "origin": "EWR"}]}', "records[0].distance"),
    (b'{"records": [{"distance": 1, "hour": -Infinity, "carrier": "UA", "origin": "EWR"}]}', "records[0].hour"),
    (b'{"inputs": [{"name": "hour", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', "inputs.hour.data[0]"),
    (b"not json", "not valid JSON"),
    (b'{"records": [', "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"records": [{"distance": 1, "hour": 7, "carrier": "U\xffA", "origin": "EWR"}]}', "body: not UTF-8 at byte 53"),
    (b'{"records": [{"distance": 1, "hour": 7, "carrier": "\\ud800", "origin": "EWR"}]}',
     "records[0].carrier: a \\u escape of half a surrogate pair"),
    (json.dumps({"inputs": _tensors([RECORD])}).encode().replace(b'"UA"', b'"\xff"'), "inputs.carrier.data: not UTF-8"),
    (json.dumps({"inputs": _tensors([RECORD])}).encode().replace(b'"UA"', b'"\\udc00"'),
     "inputs.carrier.data[0]: a \\u escape"),
    (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [[1, 7, "\xff", "EWR"]]}]}',
     "inputs.input.data: not UTF-8"),
    (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [1, 7, "\xff", "EWR"]}]}',
     "inputs.input.data: not UTF-8"),
])
def test_malformed_json_and_nan_are_400s_naming_the_place(client, raw, field):
    path = INFER if b"inputs" in raw else "/predict"
    resp = client.post(path, content=raw)
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]


def _with(tensors: list[dict], name: str, **changes) -> list[dict]:
    return [{**t, **changes} if t["name"] == name else t for t in tensors]


@pytest.mark.parametrize(("inputs", "field"), [
    (_tensors([RECORD])[:-1], "missing tensor `origin`"),
    (_tensors([RECORD]) + [{"name": "wind", "shape": [1], "datatype": "FP32", "data": [1]}], "inputs.wind"),
    (_with(_tensors([RECORD]), "distance", data=["far"]), "inputs.distance.data[0]"),
    (_with(_tensors([RECORD]), "distance", datatype="BYTES"), "inputs.distance: datatype BYTES"),
    (_with(_tensors([RECORD]), "carrier", datatype="FP32", data=[1.0]), "inputs.carrier: datatype FP32"),
    (_with(_tensors([RECORD]), "distance", shape=[2]), "inputs.distance: shape [2]"),
    (_with(_tensors([RECORD]), "distance", shape=[1, 3]), "inputs.distance: shape [1, 3]"),
    (_with(_tensors([RECORD]), "distance", datatype="INT64", data=[2.5]), "inputs.distance.data[0]"),
    (_with(_tensors([RECORD]), "distance", datatype="FP32", data=[1e39]), "inputs.distance.data[0]"),
    (_with(_tensors([RECORD]), "hour", shape=[2], data=[7, 8]), "inputs.hour: 2 rows"),
    (_tensors([RECORD]) + _tensors([RECORD])[:1], "inputs.distance: given twice"),
    ([{"name": "input", "shape": [1, 3], "datatype": "BYTES", "data": [[1, 7, "UA"]]}], "shape [N, 4]"),
    ([{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [[1, "x", "UA", "EWR"]]}], "(`hour`)"),
    ([{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [[1, 7, 3, "EWR"]]}], "(`carrier`)"),
    ([{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[1, 7, 3, 4]]}], "datatype FP32"),
    ([], "inputs: at least one"),
    ([{"name": "distance", "shape": [1]}], "inputs[0]"),
    ([{"name": "distance", "shape": [1], "datatype": "FP32"}], "inputs.distance: no `data`"),
])
def test_infer_refuses_bad_tensors_naming_the_field(client, inputs, field):
    resp = client.post(INFER, json={"inputs": inputs})
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]


def test_infer_refuses_unknown_outputs_and_broken_binary_framing(client):
    resp = client.post(INFER, json={"inputs": _tensors([RECORD]), "outputs": [{"name": "logits"}]})
    assert resp.status_code == 400 and "outputs.logits" in resp.json()["error"]
    resp = client.post(INFER, json={"inputs": _tensors([RECORD]), "outputs": [{"name": "label"}, {"name": "label"}]})
    assert resp.status_code == 400 and "outputs.label: requested twice" in resp.json()["error"]
    head = json.dumps({"inputs": [{**t, "data": None} for t in _tensors([RECORD])]})
    for length in ("12x", "99999"):
        resp = client.post(INFER, content=head.encode(), headers={"Inference-Header-Content-Length": length})
        assert resp.status_code == 400 and "Inference-Header-Content-Length" in resp.json()["error"]
    resp = client.post(INFER, content=b"{}", headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 415


def test_no_request_shape_produces_a_500(client):
    rng = random.Random(0)
    values = [None, True, 0, -1, 1.5, "x", "", [], {}, [1], {"a": 1}, "NaN", 1e308, -(2**70)]
    bodies = [{"records": [{f: rng.choice(values) for f in rng.sample(FEATURES, rng.randint(0, 4))}]}
              for _ in range(60)]
    bodies += [{"inputs": [{"name": rng.choice([*FEATURES, "input"]), "shape": rng.choice([[1], [1, 4], [2], [], [-1]]),
                            "datatype": rng.choice(["FP32", "BYTES", "INT8", "BOOL", "X"]),
                            "data": rng.choice([[1], ["a"], [[1, 2, "a", "b"]], [None], 5])}]} for _ in range(60)]
    for body in bodies:
        path = INFER if "inputs" in body else "/predict"
        resp = client.post(path, json=body)
        assert resp.status_code in (200, 400), (body, resp.text)
        assert "Traceback" not in resp.text


def test_metadata_health_and_versions_forms(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True, "model_version": "7"}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get("/v2/models/flights_delay").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "distance": "FP32", "hour": "FP32", "carrier": "BYTES", "origin": "BYTES"}
    assert meta["versions"] == ["7"] and meta["parameters"]["row_major_input"]["shape"] == [-1, 4]
    assert client.get("/v2/models/flights_delay/versions/7").json() == meta
    assert client.get("/v2/models/flights_delay/ready").json()["ready"] is True
    assert client.get("/v2/models/flights_delay/versions/7/ready").status_code == 200
    assert client.post("/v2/models/flights_delay/versions/7/infer", json={"inputs": _tensors([RECORD])}).status_code \
        == 200
    for path in ("/v2/models/other", "/v2/models/flights_delay/versions/8", "/v2/models/flights_delay/versions/8/ready",
                 "/nothing/here"):
        resp = client.get(path)
        assert resp.status_code == 404 and "error" in resp.json()
    resp = client.post("/v2/models/flights_delay/versions/8/infer", json={"inputs": _tensors([RECORD])})
    assert resp.status_code == 404 and "version 8" in resp.json()["error"]
    resp = client.get("/predict")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    resp = client.post("/v2/health/ready")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"
    resp = client.head("/v2/models/flights_delay/ready")  # load balancers' health checks may use HEAD
    assert resp.status_code == 200 and resp.headers["x-model-version"] == "7" and resp.content == b""
    assert client.head("/v2/models/other").status_code == 404
    assert all(r.headers["x-model-version"] == "7" for r in (resp, client.get("/v2")))


def test_openapi_document_describes_both_apis_and_the_features(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
            "/v2/health/live", "/metrics"} <= set(doc["paths"])
    record = doc["components"]["schemas"]["Record"]
    assert record["required"] == FEATURES and record["additionalProperties"] is False
    assert "security" not in doc


def test_oversized_body_is_413_and_the_limit_is_configurable(cache):
    with TestClient(create_app(_settings(cache, max_body_bytes=2000))) as c:
        small = c.post("/predict", json={"records": [RECORD]})
        big = c.post("/predict", json={"records": [RECORD] * 100})
    assert small.status_code == 200
    assert big.status_code == 413 and "SERVING_MAX_BODY_BYTES" in big.json()["error"]


def test_headers_are_looked_up_in_the_servers_list_and_a_complete_first_message_is_the_body():
    headers = [(b"content-type", b"application/json"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert header(headers, b"x-a") == b"2" and header(headers, b"content-length") is None  # last one, as a dict
    assert whole_body({"type": "http.request", "body": b"abc", "more_body": False}, 3) == b"abc"
    for message in ({"type": "http.request", "body": b"abc", "more_body": True},  # more to come: read_body's
                    {"type": "http.request", "body": b"abcd"},  # over the limit: read_body says why
                    {"type": "http.disconnect"}):
        assert whole_body(message, 3) is None


def test_bearer_token_guards_everything_but_liveness(cache):
    with TestClient(create_app(_settings(cache, auth_token="s3cret"))) as c:
        assert c.get("/v2/health/live").status_code == 200
        for method, path in (("GET", "/v2/health/ready"), ("GET", "/v2"), ("GET", "/v2/models/flights_delay"),
                             ("POST", "/predict"), ("POST", INFER), ("GET", "/metrics"), ("GET", "/openapi.json")):
            resp = c.request(method, path, json={"records": [RECORD]})
            assert resp.status_code == 401, path
            assert resp.headers["www-authenticate"].startswith("Bearer")
            wrong = c.request(method, path, json={"records": [RECORD]}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/predict", json={"records": [RECORD]}, headers=ok).status_code == 200
        assert c.get("/openapi.json", headers=ok).json()["security"] == [{"bearer": []}]


def test_request_durations_land_in_their_buckets_however_many_are_folded_at_once():
    # Observations are appended and folded in bulk (every FOLD_EVERY requests, and when read): the
    # exposition must be what one observation at a time gives, bounds included (le= is inclusive).
    metrics = Metrics()
    durations = [0.0005, 0.0007, 0.003, 10.0]
    for seconds in durations:
        metrics.observe("/predict", 200, seconds)
    for _ in range(FOLD_EVERY + 3):
        metrics.observe("/v2/health/ready", 503, 0.001)
    metrics.observe("/predict", 400, 0.001)
    text = metrics.render().decode()
    assert 'serving_requests_total{route="/predict",status="200"} 4' in text
    assert 'serving_requests_total{route="/predict",status="400"} 1' in text
    assert f'serving_requests_total{{route="/v2/health/ready",status="503"}} {FOLD_EVERY + 3}' in text
    buckets = dict(re.findall(r'serving_request_duration_seconds_bucket\{route="/predict",le="([^"]+)"\} (\d+)', text))
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.0025"], buckets["0.005"], buckets["2.5"],
            buckets["+Inf"]) == ("1", "3", "3", "4", "4", "5")
    assert 'serving_request_duration_seconds_count{route="/predict"} 5' in text
    total = float(re.search(r'serving_request_duration_seconds_sum\{route="/predict"\} (\S+)', text).group(1))
    assert total == pytest.approx(sum(durations) + 0.001)


def test_merged_metrics_count_a_dead_process_requests_but_not_the_process():
    # Several server processes: the polling one alone knows a version is stale; one that died (and was
    # replaced) still counts for the requests it served, not as a process or a poller.
    this, polling, dead = Metrics(), Metrics(), Metrics()
    polling.model.polls_registry, polling.model.stale = 1, True
    dead.model.polls_registry = 1
    for m in (this, polling, dead):
        m.observe("/predict", 200, 0.001)
    others = [{**polling.state(), "alive": True}, {**dead.state(), "alive": False}]
    text = this.merged(others).render().decode()
    assert "serving_processes 2" in text and "serving_registry_pollers 1" in text
    assert "serving_model_stale 1" in text
    assert 'serving_requests_total{route="/predict",status="200"} 3' in text


def test_metrics_count_requests_rows_and_the_loaded_model(client):
    client.post("/predict", json={"records": [RECORD, RECORD, RECORD]})
    client.post("/predict", json={"records": []})
    text = client.get("/metrics").text
    assert 'serving_requests_total{route="/predict",status="200"} 1' in text
    assert 'serving_requests_total{route="/predict",status="400"} 1' in text
    assert 'serving_request_duration_seconds_count{route="/predict"} 2' in text
    assert "serving_rows_predicted_total 3" in text  # + the warm-up, which is not counted
    assert 'serving_model_info{name="flights_delay",version="7"' in text
    assert "serving_model_loaded 1" in text and "serving_model_swaps_total 0" in text
    assert "serving_registry_last_success_timestamp_seconds 0" in text  # no registry configured


def test_not_ready_without_a_model(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.post("/predict", json={"records": [RECORD]}).status_code == 503
        assert c.get("/v2/models/flights_delay").status_code == 503
        assert "x-model-version" not in c.get("/v2").headers
        assert c.get("/openapi.json").status_code == 200


def test_corrupted_cache_is_not_served(tmp_path, onnx_bytes):
    ModelCache(tmp_path, "flights_delay").save(
        ModelRef("flights_delay", "7", hashlib.sha256(onnx_bytes).hexdigest()), onnx_bytes[:-10])
    with TestClient(create_app(_settings(tmp_path))) as c:
        assert c.get("/v2/health/ready").status_code == 503


def test_concurrent_requests_share_runtime_calls_and_get_their_own_answers(onnx_bytes):
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    merged: list[int] = []
    predictor = Predictor(model, ThreadPoolExecutor(1), on_batch=lambda rows, requests: merged.append(requests))
    records = [{**RECORD, "distance": 100 * i, "hour": i % 24} for i in range(40)]

    async def all_at_once() -> list[np.ndarray]:
        return await asyncio.gather(*(predictor.predict(predictor.protocol.records(
            json.dumps({"records": [r]}).encode())[0]) for r in records))

    answers = asyncio.run(all_at_once())
    alone = model.predict_columns(model.columns_from_records(records))
    assert sum(merged) == 40 and len(merged) < 40  # merged into fewer runtime calls
    assert np.concatenate(answers) == pytest.approx(alone, abs=1e-6)


def test_a_request_parsed_one_loop_turn_later_joins_the_same_runtime_call(onnx_bytes):
    # Under load the requests of one poll of the sockets are parsed over a few loop turns: the call
    # waits one turn, so they share it (twice as many per call, a fifth less CPU per request).
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    calls: list[int] = []
    predictor = Predictor(model, None, on_batch=lambda rows, requests: calls.append(requests))
    rows = predictor.protocol.records(json.dumps({"records": [RECORD]}).encode())[0]

    async def now() -> np.ndarray:  # as a request's handler does, in its task
        return await predictor.predict(rows)

    async def one_turn_later() -> np.ndarray:
        await asyncio.sleep(0)
        return await predictor.predict(rows)

    async def both() -> list[np.ndarray]:
        return await asyncio.gather(now(), one_turn_later())

    first, second = asyncio.run(both())
    assert calls == [2] and first == pytest.approx(second)


def test_small_calls_run_on_the_event_loop_and_large_ones_on_the_runtime_thread(onnx_bytes):
    # A call of more than INLINE_ROWS rows would hold the loop for milliseconds: health checks and
    # scrapes must go on meanwhile. Smaller ones are cheaper than the hand-off.
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    run, threads = model.predict_feeds, []

    def traced(columns):
        threads.append((len(next(iter(columns.values()))), threading.current_thread().name))
        return run(columns)

    model.predict_feeds = traced  # type: ignore[method-assign]
    predictor = Predictor(model, ThreadPoolExecutor(1, thread_name_prefix="onnxruntime"), max_batch_rows=INLINE_ROWS)
    small, large = ({"records": [RECORD] * n} for n in (INLINE_ROWS, INLINE_ROWS + 1))

    async def one_by_one() -> None:
        for body in (small, large):
            await predictor.predict(predictor.protocol.records(json.dumps(body).encode())[0])

    asyncio.run(one_by_one())
    assert [(rows, name.split("_")[0]) for rows, name in threads] == [
        (INLINE_ROWS, "MainThread"), (INLINE_ROWS + 1, "onnxruntime")]


def test_a_failing_runtime_call_fails_only_the_request_that_broke_it(onnx_bytes):
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    run = model.predict_feeds

    def fragile(columns):
        if "BOOM" in columns["origin"]:
            raise RuntimeError("the runtime refused")
        return run(columns)

    model.predict_feeds = fragile  # type: ignore[method-assign]
    predictor = Predictor(model, None)
    bodies = [{"records": [{**RECORD, "origin": "BOOM" if i == 3 else "EWR"}]} for i in range(8)]

    async def all_at_once():
        return await asyncio.gather(*(predictor.predict(predictor.protocol.records(json.dumps(b).encode())[0])
                                      for b in bodies), return_exceptions=True)

    results = asyncio.run(all_at_once())
    assert [isinstance(r, RuntimeError) for r in results] == [i == 3 for i in range(8)]


def test_prediction_log_writes_hourly_parquet_that_reads_back(tmp_path, onnx_bytes):
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    metrics = Metrics()
    plog = PredictionLog(tmp_path, sample=1.0, flush_seconds=3600, metrics=metrics)
    predictor = Predictor(model, None, log=plog)
    records, _ = predictor.protocol.records(json.dumps({"records": [RECORD, {**RECORD, "distance": None}]}).encode())
    tensors = predictor.protocol.infer(json.dumps({"inputs": _tensors([RECORD])}).encode()).rows
    ten = datetime(2024, 5, 1, 10, 59, tzinfo=UTC).timestamp()
    eleven = datetime(2024, 5, 1, 11, 0, tzinfo=UTC).timestamp()

    async def one_call(*requests):  # concurrent: merged into one runtime call
        return await asyncio.gather(*(predictor.predict(rows, tag) for rows, tag in requests))

    first, unlogged = asyncio.run(one_call((records, (ten, "req-1")), (tensors, None)))
    [second] = asyncio.run(one_call((tensors, (eleven, None))))
    files = plog.flush()
    assert sorted(p.parent.relative_to(tmp_path).as_posix() for p in files) == [
        "dt=2024-05-01/hr=10", "dt=2024-05-01/hr=11"]
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table().sort_by("ts")
    got = table.to_pylist()
    assert [r["distance"] for r in got] == [1000.0, None, 1000.0]  # the unsampled request is not there
    assert [r["probability"] for r in got] == pytest.approx([*first.tolist(), *second.tolist()])
    assert [r["label"] for r in got] == [int(p >= 0.5) for p in [*first.tolist(), *second.tolist()]]
    assert [r["request_id"] for r in got] == ["req-1", "req-1", None]
    assert {r["model_version"] for r in got} == {"7"} and [r["hr"] for r in got] == [10, 10, 11]
    assert [r["ts"] for r in got] == [datetime(2024, 5, 1, 10, 59, tzinfo=UTC)] * 2 + [
        datetime(2024, 5, 1, 11, 0, tzinfo=UTC)]
    assert metrics.log_rows == 3 and metrics.log_files == 2
    assert pq.read_metadata(files[0]).metadata[b"model_version"] == b"7"


def test_prediction_log_writes_between_requests_on_the_event_loop(tmp_path, onnx_bytes):
    """The writer shares the event loop with the requests: it writes a slice in steps, and the loop
    serves other work between them (never one long block, never a thread fighting for the GIL)."""
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    metrics = Metrics()
    plog = PredictionLog(tmp_path, sample=1.0, flush_seconds=3600, metrics=metrics)
    predictor = Predictor(model, None, log=plog)
    rows = predictor.protocol.records(json.dumps({"records": [RECORD] * 50}).encode())[0]

    before = threading.active_count()

    async def serve_while_logging() -> tuple[int, int]:
        plog.start()
        for _ in range(40):
            await predictor.predict(rows, (datetime.now(UTC).timestamp(), None))
        mid_slice, threads = 0, before  # loop turns while the writer holds taken rows it has not finished writing
        while metrics.log_rows == 0:
            mid_slice += not plog._queue and not plog._filling  # noqa: SLF001 - taken at the start of a slice
            threads = max(threads, threading.active_count())
            await asyncio.sleep(0)
        await plog.close()
        return mid_slice, threads

    mid_slice, threads = asyncio.run(serve_while_logging())
    assert mid_slice >= 10 and threads == before
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 2000 and metrics.log_rows == 2000 and metrics.log_files == 1


def test_prediction_log_blocks_keep_every_row_in_order_across_blocks_large_calls_and_reuse(tmp_path, onnx_bytes):
    """Small calls are assembled in the log's reused blocks, a large call's arrays are logged as they are:
    every logged row reads back once, in order, with its own values, whichever path it took; a call that
    failed logs nothing; a reused block carries nothing over (ids, unsampled rows) from its last slice."""
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    run = model.predict_feeds

    def fragile(columns):  # the runtime refusing a call cannot be produced on demand: a stand-in for it
        if "BOOM" in columns["origin"]:
            raise RuntimeError("the runtime refused")
        return run(columns)

    model.predict_feeds = fragile  # type: ignore[method-assign]
    metrics = Metrics()
    plog = PredictionLog(tmp_path, sample=1.0, flush_seconds=3600, metrics=metrics)
    predictor = Predictor(model, None, log=plog)
    now = datetime.now(UTC).timestamp()

    def rows(distance: float, n: int, origin: str = "EWR"):
        record = {**RECORD, "distance": distance, "origin": origin}
        return predictor.protocol.records(json.dumps({"records": [record] * n}).encode())[0]

    async def call(*requests):  # concurrent: one runtime call
        return await asyncio.gather(*(predictor.predict(r, tag) for r, tag in requests), return_exceptions=True)

    async def first_slice() -> None:
        for i in range(11):  # 11 x 200 rows: more than a block holds
            await call((rows(i, 200), (now, "a" if i == 3 else None)), (rows(-1, 5), None))
            if i == 5:  # a call that fails: its rows are given back, nothing of it is logged
                await call((rows(50, 10), (now, None)), (rows(51, 1, "BOOM"), (now, None)))
        await call((rows(100, 300), (now, None)))  # over SMALL_CALL: held as it is

    asyncio.run(first_slice())
    plog.flush()
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.column("distance").to_pylist() == [float(i) for i in range(11) for _ in range(200)] + [100.0] * 300
    assert table.column("request_id").to_pylist() == [
        "a" if i == 3 else None for i in range(11) for _ in range(200)] + [None] * 300
    assert metrics.log_rows == 2500 and len(plog._free) >= 2  # noqa: SLF001 - the written blocks wait for reuse

    async def second_slice() -> None:
        for i in range(5):
            await call((rows(200 + i, 100), (now, None)))

    asyncio.run(second_slice())
    [second] = plog.flush()
    again = pq.read_table(second)
    assert again.column("distance").to_pylist() == [200.0 + i for i in range(5) for _ in range(100)]
    assert set(again.column("request_id").to_pylist()) == {None} and metrics.log_rows == 3000


def test_prediction_log_joins_a_slices_large_calls_into_pages_and_keeps_every_row(tmp_path, onnx_bytes):
    """Large calls are held as they are, a block each; a slice joins them into pages of up to PAGE_ROWS
    (strings from JSON and from binary tensors alike): every logged row reads back once, in order."""
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    metrics = Metrics()
    plog = PredictionLog(tmp_path, sample=1.0, flush_seconds=3600, metrics=metrics)
    predictor = Predictor(model, None, log=plog)
    now = datetime.now(UTC).timestamp()

    def json_rows(distance: float, n: int):
        return predictor.protocol.records(json.dumps({"records": [{**RECORD, "distance": distance}] * n}).encode())[0]

    def binary_rows(distance: float, n: int):  # as the binary tensor extension decodes them: unicode arrays
        values = {"distance": np.full(n, distance, np.float32), "hour": np.full(n, 7.0, np.float32),
                  "carrier": np.full(n, "UA"), "origin": np.full(n, "EWR")}
        return Rows(n, columns=[values[f.name] for f in model.features])

    async def slice_() -> None:
        for i in range(12):  # 12 x 1,000 rows: more than one page holds
            rows = json_rows(i, 1000) if i % 2 else binary_rows(i, 1000)
            requests = [(rows, (now, "x" if i == 4 else None))]
            if i == 7:  # merged with a request that is not sampled: its rows are left out
                requests.append((json_rows(-1, 3), None))
            await asyncio.gather(*(predictor.predict(r, tag) for r, tag in requests))

    asyncio.run(slice_())
    [path] = plog.flush()
    table = pq.read_table(path)
    assert table.column("distance").to_pylist() == [float(i) for i in range(12) for _ in range(1000)]
    assert table.column("carrier").to_pylist() == ["UA"] * 12_000
    assert table.column("request_id").to_pylist() == ["x" if i == 4 else None for i in range(12) for _ in range(1000)]
    assert metrics.log_rows == 12_000


def test_a_file_left_open_by_a_dead_writer_is_completed_from_its_journal(tmp_path):
    schema = [("n", "int64"), ("s", "string"), ("f", "float32")]
    path, journal = tmp_path / ".part.parquet.tmp", tmp_path / ".part.parquet.journal"
    writer = ParquetWriter(path, schema, {"model_version": "7"}, journal=journal)
    for start in (0, 100):
        writer.write([Column("n", "int64", np.arange(start, start + 100)),
                      Column("s", "string", [f"v{i}" for i in range(100)]),
                      Column("f", "float32", np.full(100, 0.5, np.float32))])
    # Killed while writing a third row group: some of its pages and half its journal entry made it.
    writer._file.write(b"\x15" * 300)  # noqa: SLF001
    writer._file.flush()  # noqa: SLF001
    journal.write_bytes(journal.read_bytes() + b"\x99\x00\x00\x00partial")
    assert not is_complete(path)
    assert recover(path, journal) == 200
    assert is_complete(path)
    table = pq.read_table(path)
    assert table.column("n").to_pylist() == list(range(200)) and pq.read_metadata(path).num_row_groups == 2
    assert pq.read_metadata(path).metadata[b"model_version"] == b"7"
    journal.write_bytes(b"\x04\x00\x00\x00oops")  # a journal that is not one: refused, by name
    with pytest.raises(ValueError, match="header record is not a schema"):
        recover(path, journal)


def test_prediction_log_completes_files_that_a_stopped_process_left_open(tmp_path, onnx_bytes):
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    dead = PredictionLog(tmp_path, sample=1.0, flush_seconds=3600, metrics=Metrics())
    predictor = Predictor(model, None, log=dead)
    rows = predictor.protocol.records(json.dumps({"records": [RECORD] * 30}).encode())[0]

    async def two_slices() -> None:  # written as row groups; never closed: the process is killed
        for _ in range(2):
            await predictor.predict(rows, (datetime.now(UTC).timestamp(), "r"))
            for _ in dead._append():  # noqa: SLF001
                pass

    asyncio.run(two_slices())
    [orphan] = tmp_path.glob("dt=*/hr=*/.part-*.parquet.tmp")
    metrics = Metrics()
    sibling = PredictionLog(tmp_path, sample=1.0, flush_seconds=1, metrics=metrics)
    assert sibling.recover_orphans() == []  # written to just now: its writer may be alive
    old = time.time() - sibling.orphan_after - 1
    os.utime(orphan, (old, old))
    [done] = sibling.recover_orphans()
    assert done.name == orphan.name[1:].removesuffix(".tmp") and metrics.log_recovered == 60
    assert sorted(p.name for p in done.parent.iterdir()) == [done.name]  # no journal or temporary file left
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 60 and set(table.column("request_id").to_pylist()) == {"r"}
    assert sibling.recover_orphans() == []
    # A file whose journal is unreadable is set aside once, not retried on every scan.
    orphan.write_bytes(b"PAR1 pages")
    orphan.with_name(orphan.name.removesuffix(".tmp") + ".journal").write_bytes(b"not a journal")
    os.utime(orphan, (old, old))
    assert sibling.recover_orphans() == [] and not orphan.exists()
    assert [p.name for p in orphan.parent.glob(".*")] == [orphan.name.removesuffix(".tmp") + ".unrecoverable"]


def test_prediction_log_holds_one_object_per_categorical_value_up_to_a_bound(tmp_path, onnx_bytes, monkeypatch):
    """The log holds a slice's rows for a tenth of a second: a categorical value is held as one shared object,
    not as each request's own string (freed with its request); once the bound is reached, new values are
    held as they came, and so is a long value at any time. Every value reads back as it was sent."""
    monkeypatch.setattr(predlog, "CANONICAL_VALUES", 5)
    model = OnnxModel(onnx_bytes, "flights_delay", "7")
    plog = PredictionLog(tmp_path, sample=1.0, flush_seconds=3600, metrics=Metrics())
    predictor = Predictor(model, None, log=plog)
    origins = ["X" * 65, "EWR", "JFK", "LGA", "EWR", "BOS", "SFO", "BOS", None]  # first: over CANONICAL_LENGTH
    now = datetime.now(UTC).timestamp()

    def rows(origin: str | None) -> Rows:
        return predictor.protocol.records(json.dumps({"records": [{**RECORD, "origin": origin}]}).encode())[0]

    async def one_call() -> None:  # concurrent: one runtime call, logged in place
        await asyncio.gather(*(predictor.predict(rows(o), (now, None)) for o in origins))

    asyncio.run(one_call())
    held = plog._filling[id(model)].strings[1, :len(origins)]  # noqa: SLF001 - origin's row of the block
    assert held[1] is held[4]  # EWR twice: one object
    assert held[5] is not held[7]  # BOS came after the bound was reached: each request's own
    assert set(plog._canonical) == {None, "UA", "EWR", "JFK", "LGA"}  # noqa: SLF001 - None: missing; carrier UA first
    [path] = plog.flush()
    assert pq.read_table(path).column("origin").to_pylist() == [*origins[:-1], ""]  # missing: the unknown category


def test_prediction_log_samples_requests(tmp_path):
    plog = PredictionLog(tmp_path, sample=0.25, flush_seconds=3600, metrics=Metrics())
    random.seed(3)
    assert 400 < sum(plog.sampled() for _ in range(2000)) < 600
    assert all(PredictionLog(tmp_path, 1.0, 3600, Metrics()).sampled() for _ in range(100))


def test_parquet_writer_round_trips_through_pyarrow(tmp_path):
    path = tmp_path / "t.parquet"
    strings = [None if i % 5 == 0 else f"v{i}é" for i in range(1000)]
    write_table(path, [Column("ts", "timestamp_us", np.arange(1000) * 1_000_000),
                       Column("f", "float32", np.where(np.arange(1000) % 7 == 0, np.nan, np.arange(1000))),
                       Column("d", "float64", [None, 1.5] * 500),
                       Column("n", "int64", [None, 2**40] * 500),
                       Column("s", "string", strings)], {"k": "v"})
    table = pq.read_table(path)
    assert table.num_rows == 1000 and table.schema.metadata == {b"k": b"v"}
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert table.column("f").null_count == 143 and table.column("s").to_pylist() == strings
    assert table.column("n").to_pylist()[:2] == [None, 2**40] and table.column("d").null_count == 500


def test_parquet_constant_and_complete_columns_read_back_in_pyarrow_and_duckdb(tmp_path):
    # A constant is stored as a one-entry dictionary; columns without nulls as one run of levels.
    import duckdb

    path = tmp_path / "c.parquet"
    writer = ParquetWriter(path, [("name", "string"), ("n", "int64"), ("none", "string"), ("f", "float32")])
    for rows in (3, 1000):  # two row groups: each column chunk starts where the last one ended
        writer.write([Column("name", "string", Constant("flights_delay", rows)),
                      Column("n", "int64", Constant(7, rows)), Column("none", "string", Constant(None, rows)),
                      Column("f", "float32", np.arange(rows, dtype=np.float32))])
    writer.close()
    expected = {"name": ["flights_delay"] * 1003, "n": [7] * 1003, "none": [None] * 1003,
                "f": [*range(3), *range(1000)]}
    assert pq.read_table(path).to_pydict() == expected
    got = duckdb.connect().execute(f"SELECT name, n, none, f FROM read_parquet('{path}')").fetchall()
    assert [list(col) for col in zip(*got, strict=True)] == list(expected.values())


def test_parquet_labels_are_stored_as_one_bit_a_row_and_read_back_as_int64(tmp_path):
    """Flags (the log's label) are the dictionary [0, 1] and bit-packed indices, uncompressed: pages of 1, 8,
    13 and 1,000 rows (bits pack in groups of 8; a short last group is padded), over two row groups."""
    import duckdb

    rng = np.random.default_rng(7)
    pages = [[rng.random(1) < 0.5, rng.random(8) < 0.5], [rng.random(13) < 0.5], [rng.random(1000) < 0.3]]
    path = tmp_path / "l.parquet"
    writer = ParquetWriter(path, [("label", "int64"), ("n", "int64")])
    for _ in range(2):
        rows = sum(len(piece) for group in pages for piece in group)
        writer.write([Column("label", "int64", Flags(Pages(pages))), Column("n", "int64", np.arange(rows))])
    writer.close()
    expected = [int(v) for group in pages for piece in group for v in piece] * 2
    table = pq.read_table(path)
    assert table.schema.field("label").type == "int64" and table.column("label").to_pylist() == expected
    got = duckdb.connect().execute(f"SELECT label FROM read_parquet('{path}')").fetchall()
    assert [v for (v,) in got] == expected
    chunk = pq.read_metadata(path).row_group(1).column(0)
    assert chunk.has_dictionary_page and "RLE_DICTIONARY" in chunk.encodings and chunk.compression == "UNCOMPRESSED"
    assert chunk.total_compressed_size < 400  # 1,022 rows: 129 bytes of bits, not 8 KB of int64


def test_parquet_strings_of_one_length_are_stored_without_a_length_each_and_read_back(tmp_path):
    """Codes of one length (airports, carriers) are stored as DELTA_LENGTH_BYTE_ARRAY: the lengths once,
    then the bytes. Unicode arrays (binary tensors) and lists (JSON) alike, with nulls, at 1, 128 and 129
    values (the lengths' blocks hold 128), and empty strings (a page of missing categories), next to strings
    of one length in characters but not in UTF-8 bytes (PLAIN)."""
    import duckdb

    path = tmp_path / "d.parquet"
    schema = [("codes", "string"), ("listed", "string"), ("empty", "string"), ("mixed", "string")]
    writer = ParquetWriter(path, schema)
    expected: dict[str, list[str | None]] = {"codes": [], "listed": [], "empty": [], "mixed": []}
    for n in (1, 128, 129, 1000):
        array = np.array([("JFK", "LGA", "EWR")[i % 3] for i in range(n)])
        listed = [None if i % 7 == 3 else ("UA", "B6")[i % 2] for i in range(n)]
        empty = [None if i % 5 == 1 else "" for i in range(n)]
        mixed = [("UA", "é9")[i % 2] for i in range(n)]  # "é9": 2 characters, 3 bytes of UTF-8
        writer.write([Column("codes", "string", array), Column("listed", "string", listed),
                      Column("empty", "string", empty), Column("mixed", "string", mixed)])
        for name, values in zip(expected, (array.tolist(), listed, empty, mixed), strict=True):
            expected[name] += values
    writer.close()
    assert pq.read_table(path).to_pydict() == expected
    got = duckdb.connect().execute(f"SELECT codes, listed, empty, mixed FROM read_parquet('{path}')").fetchall()
    assert [list(col) for col in zip(*got, strict=True)] == list(expected.values())
    meta = pq.read_metadata(path).row_group(3)
    assert [("DELTA_LENGTH_BYTE_ARRAY" in meta.column(i).encodings) for i in range(4)] == [True, True, True, False]


def test_parquet_columns_written_page_by_page_read_back_in_pyarrow_and_duckdb(tmp_path):
    # The prediction log hands the writer its columns as Pages: one data page per group of pieces.
    import duckdb

    floats = Pages([[np.arange(3, dtype=np.float32), np.array([np.nan, 4], dtype=np.float32)],
                    [np.arange(5, 9, dtype=np.float32)]])
    codes = Pages([[np.array(["AA", "B6"]), np.array(["JFK", "LGA", "EWR"])], [np.array(["D" * 9] * 4)]])
    ids = Pages([[["r1", None, "r3"], ["r4", "r5"]], [[None] * 4]])
    path = tmp_path / "p.parquet"
    writer = ParquetWriter(path, [("f", "float32"), ("s", "string"), ("id", "string"), ("v", "string")])
    for _ in range(2):  # two row groups of two pages per column
        writer.write([Column("f", "float32", floats), Column("s", "string", codes), Column("id", "string", ids),
                      Column("v", "string", Constant("7", 9))])
    writer.close()
    expected = {"f": [0.0, 1.0, 2.0, None, 4.0, 5.0, 6.0, 7.0, 8.0] * 2,
                "s": ["AA", "B6", "JFK", "LGA", "EWR", *["D" * 9] * 4] * 2,
                "id": ["r1", None, "r3", "r4", "r5", None, None, None, None] * 2, "v": ["7"] * 18}
    assert pq.read_table(path).to_pydict() == expected
    assert pq.read_metadata(path).num_row_groups == 2
    got = duckdb.connect().execute(f"SELECT f, s, id, v FROM read_parquet('{path}')").fetchall()
    assert [list(col) for col in zip(*got, strict=True)] == list(expected.values())


def test_parquet_float_pages_read_back_whether_written_as_they_are_or_encoded(tmp_path):
    """A complete float page (contiguous pieces of the column's type, no NaN) goes to the file as it is,
    with no copy into bytes; a page with a NaN, a strided view, another float type, a list or values whose
    sum is NaN without a NaN (+inf and -inf partial sums) is encoded value by value. Every page reads back
    the values given, NaN as null."""
    rng = np.random.default_rng(3)
    a = rng.random(3000).astype(np.float32)
    with_nan = a[:50].copy()
    with_nan[[0, 49]] = np.nan
    groups = [[a[:1000], a[1000:1001], a[1001:]], [a[:10], with_nan], [a[::2][:20]], [a[:5].astype(np.float64)],
              [[1.5, None, 2.5]], [np.full(4, 3e38, np.float32), np.full(4, -3e38, np.float32)]]
    path = tmp_path / "f.parquet"
    writer = ParquetWriter(path, [("f", "float32"), ("d", "float64")])
    doubles = Pages([[np.asarray(piece, dtype=np.float64) for piece in group] for group in groups])
    writer.write([Column("f", "float32", Pages(groups)), Column("d", "float64", doubles)])
    writer.close()
    expected = [None if v is None or np.isnan(v) else float(np.float32(v))
                for group in groups for piece in group for v in (piece.tolist() if isinstance(piece, np.ndarray)
                                                                  else piece)]
    table = pq.read_table(path)
    assert table.column("f").to_pylist() == expected and table.column("f").null_count == 3
    assert [None if v is None else float(np.float32(v)) for v in table.column("d").to_pylist()] == expected


def test_parquet_data_page_headers_are_the_thrift_structs_they_stand_for():
    # The writer builds each data page's header directly: byte for byte the generic Thrift struct.
    from serving import parquet

    for rows in (0, 1, 63, 64, 8192, 100_000):
        for encoding in (parquet._PLAIN, parquet._DELTA_LENGTH_BYTE_ARRAY, parquet._RLE_DICTIONARY):
            for raw, stored in ((0, 0), (5, 3), (8200, 8200), (70_000, 3_000), (2**31 - 1, 2**30)):
                page = parquet._Struct().i32(1, rows).i32(2, encoding).i32(3, parquet._RLE).i32(4, parquet._RLE)
                struct_ = parquet._Struct().i32(1, parquet._DATA_PAGE).i32(2, raw).i32(3, stored).struct(5, page)
                assert parquet._data_page_header(rows, encoding, raw, stored) == struct_.end()


def test_parquet_string_arrays_of_any_length_round_trip(tmp_path):
    # Unicode arrays (binary BYTES tensors arrive as one) are framed in numpy; non-ASCII takes the loop.
    cases = {"same": ["JFK", "LGA", "EWR"] * 100, "mixed": ["AA", "B6", "", "D" * 40] * 75,
             "accented": ["Zürich", "AA"] * 150}
    path = tmp_path / "s.parquet"
    write_table(path, [Column(name, "string", np.array(values)) for name, values in cases.items()])
    table = pq.read_table(path)
    assert {name: table.column(name).to_pylist() for name in cases} == cases


def test_binary_bytes_tensors_decode_to_the_strings_sent():
    def framed(values: list[str]) -> bytes:
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)

    # The numpy path takes only equal lengths: ["JFK", "A", "LGABC"] has the byte count of three 3-letter codes.
    for values in (["JFK", "LGA", "EWR"], ["AA", "B6", "9E"], ["Zür", "AAA"], ["A\x00B", "CDE"], ["", ""],
                   ["JFK", "A", "LGABC"], ["é", "AA"]):
        assert list(binary.strings(framed(values), len(values), "inputs.x")) == values
    with pytest.raises(InputError, match=r"inputs.x: binary data ends after 1 of 2"):
        binary.strings(framed(["JFK"]), 2, "inputs.x")


def test_settings_from_env_name_the_bad_variable(tmp_path):
    env = {"STATE_DIR": str(tmp_path), "SERVING_AUTH_TOKEN": "t", "SERVING_MAX_BODY_BYTES": "1000",
           "SERVING_PREDICTION_LOG_SAMPLE": "0.1", "SERVING_PREDICTION_LOG_DIR": ""}
    s = Settings.from_env(env)
    assert (s.auth_token, s.max_body_bytes, s.prediction_log_sample, s.prediction_log_dir) == ("t", 1000, 0.1, None)
    assert Settings.from_env({"STATE_DIR": str(tmp_path)}).prediction_log_dir == tmp_path / "serving" / "predictions"
    assert Settings.from_env({**env, "MLFLOW_SERVER_URL": ""}).registry_url is None
    empty = tmp_path / "token"
    empty.write_text("\n")
    for name, value, expected in (
            ("SERVING_PORT", "http", "expected a port, 0 to 65535"),
            ("SERVING_PREDICTION_LOG_SAMPLE", "2", "expected a share from 0 to 1"),
            ("SERVING_MAX_BODY_BYTES", "-1", "expected a whole number of bytes"),
            ("SERVING_ACCESS_LOG", "maybe", "expected 1/0, true/false"),
            ("MLFLOW_SERVER_URL", "mlflow:5000", "expected an http:// or https:// URL"),
            # A secret that did not mount must not turn auth off.
            ("SERVING_AUTH_TOKEN_FILE", str(tmp_path / "missing"), "cannot read the token"),
            ("SERVING_AUTH_TOKEN_FILE", str(empty), "the file is empty")):
        with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}: {expected}")):
            Settings.from_env({**env, name: value})
    empty.write_text("s3cret\n")
    assert Settings.from_env({**env, "SERVING_AUTH_TOKEN_FILE": str(empty)}).auth_token == "s3cret"


def test_each_worker_process_unpickles_a_listening_socket_of_its_own_on_the_same_port():
    # What uvicorn's supervisor sends each worker process it starts: two of them listen on one port at once.
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    first, second = (pickle.loads(pickle.dumps(OwnListener("127.0.0.1", port))) for _ in range(2))  # noqa: S301
    try:
        for sock in (first, second):
            sock.listen()
            assert sock.getsockname() == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        first.close()
        second.close()


def test_several_processes_need_a_fixed_port_of_their_own():
    settings = replace(Settings.from_env({}), port=0, workers=2)
    with pytest.raises(ValueError, match="SERVING_PORT=0"):
        serve("serving.app:create_app", settings)
    # Another server with SO_REUSEPORT on the port would share it silently: refused before any worker starts.
    other = bind_reuseport("127.0.0.1", 0)
    other.listen()
    try:
        taken = replace(settings, host="127.0.0.1", port=other.getsockname()[1])
        with pytest.raises(ValueError, match=f"SERVING_PORT={taken.port}: a server already listens"):
            serve("serving.app:create_app", taken)
    finally:
        other.close()
