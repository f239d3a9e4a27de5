"""The Java caller (examples/java, JDK only) against the live server: compiled with javac, run with java, its
default HTTP client (which offers an h2c upgrade), a bearer token, both the OIP and the plain JSON route."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_serving_live import call, serving_process, tiny_onnx

from serving.registry import ModelCache, ModelRef
from tasks.config import load_spec

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("java") is None,
    reason="javac/java are not on the PATH: install a JDK 17+ to run the Java client against the server")]


def test_java_client_gets_prediction_and_model_version_over_both_routes(tmp_path):
    features = load_spec(REPO / "config" / "flights.yaml").features  # what the business application sends
    ModelCache(tmp_path / "cache", "flights_delay").save(ModelRef("flights_delay", "9", None),
                                                         tiny_onnx(features.numeric, features.categorical))
    classes = tmp_path / "classes"
    subprocess.run(["javac", "-d", str(classes), str(REPO / "examples" / "java" / "FlightsClient.java")],
                   check=True, capture_output=True, timeout=120)
    with serving_process(tmp_path, SERVING_AUTH_TOKEN="java-secret") as base:
        run = subprocess.run(["java", "-cp", str(classes), "FlightsClient", base, "flights_delay"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "SERVING_AUTH_TOKEN": "java-secret"})
        expected = json.loads(call(base, "POST", "/predict", {"records": [_java_flight()]},
                                   {"Authorization": "Bearer java-secret"})[2])
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    oip, plain = (next(line for line in lines if line.startswith(p)) for p in ("OIP ", "JSON "))
    assert "HTTP 200, model_version 9 (X-Model-Version 9)" in oip
    assert "HTTP 200, model_version 9 (X-Model-Version 9)" in plain
    probability = expected["predictions"][0]["probability"]
    assert float(re.search(r"probability ([\d.eE+-]+)$", oip).group(1)) == pytest.approx(probability)
    assert float(re.search(r"probability ([\d.eE+-]+),", plain).group(1)) == pytest.approx(probability)


def _java_flight() -> dict[str, object]:
    """The flight FlightsClient.exampleFlight() sends, read from its source."""
    source = (REPO / "examples" / "java" / "FlightsClient.java").read_text()
    pairs = re.findall(r'f\.put\("(\w+)", ("[^"]*"|[-\d.]+)\);', source)
    return {k: json.loads(v) for k, v in pairs}
