"""Airflow parses every DAG without errors, and the DAGs carry what operators expect."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "train_and_deploy" in dagbag.dags


def test_train_and_deploy_wiring(dagbag):
    dag = dagbag.dags["train_and_deploy"]
    order = ["extract", "check_quality", "train", "evaluate", "drift_report", "gate", "promote"]
    assert set(dag.task_ids) == set(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).get_flat_relative_ids(upstream=False)
    assert dag.doc_md and dag.tags and dag.max_active_runs == 1
    assert dag.get_task("extract").retries > 0
    assert dag.get_task("gate").retries == 0


def test_rollback_model_is_a_manual_dag_that_needs_a_justification(dagbag):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["rollback_model"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual trigger only
    assert list(dag.task_ids) == ["check_target", "move_champion"]
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match="justification"):
        params.validate()  # the default (empty) justification is refused
    params.update({"justification": "INC-1: the new model is broken", "target_version": "3"})
    assert params.validate()["target_version"] == "3"
    with pytest.raises(ParamValidationError, match="target_version"):
        copy.deepcopy(dag.params).update({"target_version": "../x"})
