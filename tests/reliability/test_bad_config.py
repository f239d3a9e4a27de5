"""Hostile input files: a pipeline spec or a data contract with an unknown key, a wrong type or a missing field
fails when it loads, with an error naming the key (never a silent default).

Covered elsewhere: a contract's misspelt key (tests/test_contract.py::test_an_unknown_key_is_an_error_naming_it),
a drift override for an unknown column (tests/test_drift.py), a join on the first source
(tests/test_extract_inputs.py::test_spec_rejects_a_join_on_the_first_source); trigger params over the REST API
(tests/test_trigger_api.py) and in `dag.test()` (tests/test_dag_integrity.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import SpecError, load_spec
from tasks.contract import ContractError, load_contract

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]
Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[int(key)] if isinstance(raw, list) else raw[key]
        raw[last] = value
    return edit


def _drop(path: str) -> Edit:
    def edit(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[int(key)] if isinstance(raw, list) else raw[key]
        del raw[last]
    return edit


def _write(tmp: Path, source: str, edit: Edit) -> Path:
    raw = yaml.safe_load((REPO / "config" / source).read_text())
    edit(raw)
    path = tmp / source
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(("edit", "named"), [
    (_set("window_dayz", 30), r"window_dayz: Extra inputs are not permitted"),
    (_set("training.epochz", 4), r"training\.epochz: Extra inputs are not permitted"),
    (_set("sources.0.conection", "flights_db"), r"sources\.0\.sql\.conection: Extra inputs are not permitted"),
    (_set("window_days", "thirty"), r"window_days: Input should be a valid integer"),
    (_set("window_days", 0), r"window_days: Input should be greater than or equal to 1"),
    (_set("training.learning_rate", "fast"), r"training\.learning_rate: Input should be a valid number"),
    (_set("features", ["distance"]), r"features: Input should be a valid dictionary"),
    (_drop("target"), r"target: Field required"),
    (_drop("registered_model"), r"registered_model: Field required"),
], ids=["unknown top-level key", "unknown nested key", "unknown key in a source", "string for an int",
        "out of range", "string for a float", "list for an object", "missing section", "missing field"])
def test_a_broken_pipeline_spec_fails_at_load_naming_the_key(tmp_path, edit, named):
    shutil.copy(REPO / "config" / "flights.contract.yaml", tmp_path)
    path = _write(tmp_path, "flights.yaml", edit)
    with pytest.raises(SpecError, match=named) as err:
        load_spec(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("edit", "named"), [
    (_set("row_count.minimum", 10), r"row_count\.minimum: Extra inputs are not permitted"),
    (_set("columns.distance.min", "low"), r"columns\.distance\.min: Input should be a valid number"),
    (_set("columns.carrier.nullable", "sometimes"), r"columns\.carrier\.nullable: Input should be a valid boolean"),
    (_set("columns.carrier.severity", "fatal"), r"columns\.carrier\.severity"),
    (_set("label.min_positive_share", [0.1]), r"label\.min_positive_share: Input should be a valid number"),
    (_drop("columns.distance.type"), r"columns\.distance\.type: Field required"),
    (_drop("columns"), r"columns: Field required"),
], ids=["unknown key", "string for a number", "string for a bool", "unknown severity", "list for a number",
        "missing column type", "missing section"])
def test_a_broken_data_contract_fails_at_load_naming_the_key(tmp_path, edit, named):
    path = _write(tmp_path, "flights.contract.yaml", edit)
    with pytest.raises(ContractError, match=named) as err:
        load_contract(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("text", "named"), [("name: [unclosed", "cannot read"), ("", "(top level)|Input should be"),
                                             ("- a list\n- not a mapping", "Input should be")],
                         ids=["not YAML", "empty file", "a list"])
def test_a_contract_that_is_not_a_mapping_is_refused_clearly(tmp_path, text, named):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ContractError, match=named):
        load_contract(tmp_path / "c.yaml")
