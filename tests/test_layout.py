"""The project's standing promises: layers import what they may, the spec is strict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tasks
from tasks.config import SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent


def test_tasks_package_is_ours():
    assert Path(tasks.__file__).resolve().parent == REPO / "tasks"


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("tasks", r"airflow"),
    ("serving", r"torch|mlflow|airflow"),
])
def test_layers_do_not_import_forbidden_frameworks(folder, forbidden):
    pattern = re.compile(rf"^\s*(from|import)\s+({forbidden})\b", re.M)
    offenders = [p.name for p in (REPO / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_serving_requirements_stay_small():
    lines = (REPO / "serving" / "requirements.txt").read_text().lower().splitlines()
    names = {re.split(r"[=<>\[ ]", line)[0] for line in lines if line and not line.startswith("#")}
    assert {"onnxruntime", "uvicorn", "msgspec"} <= names
    assert not names & {"torch", "mlflow", "mlflow-skinny", "apache-airflow", "flask"}


def test_flights_spec_loads_and_excludes_leaky_columns():
    spec = load_spec(REPO / "config" / "flights.yaml")
    assert spec.registered_model == "flights_delay"
    for leak in ("dep_delay", "dep_time", "arr_time", "air_time", "arr_delay"):
        assert leak not in spec.features.all


def test_unknown_spec_key_is_an_error_naming_the_key(tmp_path):
    text = (REPO / "config" / "flights.yaml").read_text().replace("window_days: 30", "window_dayz: 30")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError, match="window_dayz"):
        load_spec(bad)


def test_wrong_type_in_spec_names_the_field(tmp_path):
    text = (REPO / "config" / "flights.yaml").read_text().replace("epochs: 4", "epochs: many")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError, match=r"training\.epochs"):
        load_spec(bad)
