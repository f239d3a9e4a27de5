"""Schemathesis against the model server's own OpenAPI document (GET /openapi.json): over 1000 generated requests,
valid and invalid, to every route; no 5xx, every response as documented, the server alive and right afterwards.

The server is the real process on a loopback port, serving a model with the flights features from its disk
cache. Path and tensor names come from dictionaries most of the time (the served model's name, version and
features), so the requests reach the decoding and validation code rather than stopping at a 404.
Not enforced: schemathesis's positive_data_acceptance and negative_data_rejection checks, which flag where
the document is looser or stricter than the server (see README, "Reliability").
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from serving_live import REPO, call, metric, serving_process, tiny_onnx

from serving.registry import ModelCache, ModelRef
from tasks.config import load_spec

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
MIN_REQUESTS = 1000


def _config(features: list[str]) -> str:
    return f"""
[dictionaries.served]
values = ["flights_delay"]
[dictionaries.version]
values = ["7"]
[dictionaries.features]
values = {json.dumps(features)}

[parameters]
"path.name" = {{ dictionary = "served", probability = 0.8 }}
"path.version" = {{ dictionary = "version", probability = 0.8 }}
"body.inputs[*].name" = {{ dictionary = "features", probability = 0.8 }}
"""


def test_over_a_thousand_generated_requests_get_no_5xx_and_the_server_stays_up(tmp_path):
    features = load_spec(REPO / "config" / "flights.yaml").features
    ModelCache(tmp_path / "cache", "flights_delay").save(ModelRef("flights_delay", "7", None),
                                                         tiny_onnx(features.numeric, features.categorical))
    (tmp_path / "schemathesis.toml").write_text(_config(features.all))
    har = tmp_path / "requests.har"
    with serving_process(tmp_path) as base:
        fuzz = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "--config-file", str(tmp_path / "schemathesis.toml"), "run",
             f"{base}/openapi.json", "--phases", "coverage,fuzzing", "--checks", "all",
             "--exclude-checks", "positive_data_acceptance,negative_data_rejection", "--max-examples", "100",
             "--seed", "1", "--workers", "1", "--generation-database", "none", "--no-color",
             "--report", "har", "--report-har-path", str(har)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        # Alive and unchanged afterwards.
        live, ready = call(base, "GET", "/v2/health/live"), call(base, "GET", "/v2/health/ready")
        record = {f: 1.0 for f in features.numeric} | {"carrier": "UA", "origin": "EWR", "dest": "LAX"}
        status, headers, body = call(base, "POST", "/predict", {"records": [record]})
        text = call(base, "GET", "/metrics")[2].decode()
        errors = metric(base, 'serving_requests_total{route="/predict",status="400"}')
    assert fuzz.returncode == 0, fuzz.stdout[-6000:]
    statuses = collections.Counter(e["response"]["status"] for e in json.loads(har.read_text())["log"]["entries"])
    print(f"schemathesis: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= MIN_REQUESTS
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[200] > 100 and statuses[400] > 100 and errors  # both the happy and the refusing paths ran
    assert live[0] == 200 and ready[0] == 200 and ready[1]["x-model-version"] == "7"
    assert status == 200 and json.loads(body)["model_version"] == "7"
    assert 'status="5' not in text
    log = next(tmp_path.glob("serving-*.log")).read_text()
    assert "Traceback" not in log, log[-3000:]
