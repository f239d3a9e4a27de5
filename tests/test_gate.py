"""The promotion gate, promotion log and rollback on a real MLflow registry with real trained versions."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import pytest

from tasks import registry, tracking
from tasks.evaluate import evaluate_model
from tasks.extract import extract_snapshot
from tasks.gate import GateRejected, decide_promotion, evaluate_rules, live_check
from tasks.promotion import promote_verdict, read_log
from tasks.report import report_dir
from tasks.rollback import RollbackError, check_target, rollback
from tasks.snapshot import Window
from tasks.train import train_model

QUALITY_OK = {"passed": True}
JUNE = Window(datetime(2013, 6, 1), datetime(2013, 7, 1))  # enough rows for models that clearly differ


def _evaluation(auc: float, parity: float = 1e-7, slices: list | None = None) -> dict:
    metrics = {"roc_auc": auc, "pr_auc": 0.4, "log_loss": 0.5, "brier": 0.17, "accuracy": 0.8, "precision": 0.5,
               "recall": 0.5, "f1": 0.5}
    return {"metrics": metrics, "parity_max_abs_diff": parity, "threshold": 0.3, "slices": slices or []}


def _failed(rules: list[dict]) -> list[str]:
    return [r["rule"] for r in rules if not r["passed"]]


def test_first_model_faces_only_absolute_rules(spec):
    rules = evaluate_rules(spec, _evaluation(0.7), QUALITY_OK)
    assert [r["rule"] for r in rules] == ["data_quality", "parity", "min_roc_auc", "max_brier"]
    assert _failed(rules) == []


def test_with_no_rule_declared_the_gate_refuses(spec):
    bare = spec.model_copy(update={"gate": spec.gate.model_copy(update={"min": {}, "max": {}})})
    assert _failed(evaluate_rules(bare, _evaluation(0.9), QUALITY_OK)) == ["rules_declared"]


def test_the_champion_comparison_uses_the_rescored_numbers_and_reports_the_delta(spec):
    tolerance = spec.gate.champion.max_degradation
    within = evaluate_rules(spec, _evaluation(0.75 - tolerance / 2), QUALITY_OK, "1", {"roc_auc": 0.75}, [])
    beyond = evaluate_rules(spec, _evaluation(0.75 - tolerance * 2), QUALITY_OK, "1", {"roc_auc": 0.75}, [])
    assert _failed(within) == []
    assert _failed(beyond) == ["champion_roc_auc"]
    verdict = next(r for r in beyond if r["rule"] == "champion_roc_auc")
    assert verdict["baseline"] == 0.75 and verdict["delta"] == pytest.approx(-2 * tolerance)


def test_a_slice_that_regresses_blocks_even_when_the_average_improves(spec):
    def rows(auc_jfk: float) -> list[dict]:
        return [{"slice": "origin", "value": "JFK", "rows": 1500, "roc_auc": auc_jfk},
                {"slice": "origin", "value": "EWR", "rows": 1500, "roc_auc": 0.70},
                {"slice": "origin", "value": "LGA", "rows": 50, "roc_auc": 0.20}]  # too small to count
    champion = rows(0.75)
    rules = evaluate_rules(spec, _evaluation(0.80, slices=rows(0.65)), QUALITY_OK, "1", {"roc_auc": 0.72}, champion)
    assert _failed(rules) == ["slices"]
    assert "origin=JFK" in next(r["reason"] for r in rules if r["rule"] == "slices")
    fine = evaluate_rules(spec, _evaluation(0.80, slices=rows(0.74)), QUALITY_OK, "1", {"roc_auc": 0.72}, champion)
    assert _failed(fine) == []


@pytest.mark.reliability  # a fault of issue 10's list (README Reliability table)
def test_broken_data_or_parity_never_passes(spec):
    rules = evaluate_rules(spec, _evaluation(0.9, parity=1e-3), {"passed": False})
    assert _failed(rules) == ["data_quality", "parity"]


def test_the_drift_policy_refuses_only_data_the_candidate_has_not_seen(spec):
    from tasks.config import DriftRule

    strict = spec.model_copy(update={"gate": spec.gate.model_copy(update={"drift": DriftRule(max_drifted_share=0.3)})})
    drifted = {"drifted_share": 0.6, "current_fingerprint": "new"}
    assert _failed(evaluate_rules(strict, _evaluation(0.8), QUALITY_OK, drift=drifted, trained_on="old")) == ["drift"]
    assert _failed(evaluate_rules(strict, _evaluation(0.8), QUALITY_OK, drift=drifted, trained_on="new")) == []


@pytest.fixture(scope="module")
def world(spec, sqlite_url, tmp_path_factory):
    """A model of its own (the registry is shared with other tests), its reports store, one snapshot."""
    root = tmp_path_factory.mktemp("gate")
    own = spec.model_copy(update={"name": "gate_test", "registered_model": "gate_test_model",
                                  "reports_root": str(root / "reports")})
    snapshot = Path(extract_snapshot(own, JUNE, sqlite_url, root / "data")["path"])
    return own, snapshot


def _candidate(world, overrides: dict) -> tuple[dict, dict]:
    spec, snapshot = world
    candidate = train_model(spec, snapshot, QUALITY_OK, overrides)
    return candidate, evaluate_model(spec, snapshot, candidate["run_id"], candidate["model_version"])


def _gate(world, candidate: dict, evaluation: dict, run: str, **kwargs) -> dict:
    spec, snapshot = world
    return decide_promotion(spec, snapshot, candidate["run_id"], candidate["model_version"], evaluation,
                            QUALITY_OK, dag_run_id=run, **kwargs)


@pytest.mark.reliability  # a fault of issue 10's list (README Reliability table)
@pytest.mark.slow
def test_promotion_modes_log_and_rollback(world):
    spec, snapshot = world
    model = spec.registered_model

    # The first model faces the absolute rules only, passes, and becomes champion.
    good, good_eval = _candidate(world, {"epochs": 2})
    verdict = _gate(world, good, good_eval, "run_1")
    assert verdict["promote"] and verdict["champion"] is None
    assert not any(r["rule"].startswith("champion_") for r in verdict["rules"])
    promote_verdict(spec, verdict, "run_1")
    assert registry.champion_version(model) == good["model_version"]

    # A near-random model (one tiny step from its initialisation) is refused; the verdict says why.
    bad, bad_eval = _candidate(world, {"epochs": 1, "learning_rate": 1e-6})
    with pytest.raises(GateRejected, match=r"\[champion_roc_auc\] candidate roc_auc"):
        _gate(world, bad, bad_eval, "run_2")
    assert registry.champion_version(model) == good["model_version"]
    assert registry.alias_version(model, "challenger") == bad["model_version"]
    tags = registry.version_tags(model, bad["model_version"])
    assert tags["gate.status"] == "rejected" and "champion_roc_auc" in tags["gate.reasons"]
    on_page = json.loads((report_dir(spec, "run_2") / "verdict.json").read_text())  # the Drift reports page reads it
    assert on_page["status"] == "rejected" and on_page["candidate"] == bad["model_version"]

    # dry_run records and never promotes, even a passing candidate.
    better, better_eval = _candidate(world, {"epochs": 3})
    dry = _gate(world, better, better_eval, "run_3", mode="dry_run")
    assert not dry["promote"] and dry["status"].startswith("dry_run")
    assert registry.champion_version(model) == good["model_version"]

    # override without a justification is refused; with one it promotes and is on the record.
    with pytest.raises(GateRejected, match="justification"):
        _gate(world, bad, bad_eval, "run_4", mode="override", justification="  ")
    forced = _gate(world, bad, bad_eval, "run_4", mode="override", justification="INC-7: test the override path",
                   user="oncall@example.com")
    assert forced["promote"] and forced["status"] == "overridden"
    promote_verdict(spec, forced, "run_4")
    assert registry.champion_version(model) == bad["model_version"]
    assert registry.version_tags(model, bad["model_version"])["gate.justification"].startswith("INC-7")

    # A better candidate than the (weak) champion is promoted; the retried promote task changes nothing.
    verdict = _gate(world, better, better_eval, "run_5")
    assert verdict["promote"], verdict["rules"]
    first = promote_verdict(spec, verdict, "run_5")
    assert promote_verdict(spec, verdict, "run_5") == first
    assert registry.champion_version(model) == better["model_version"]
    assert registry.alias_version(model, "previous") == bad["model_version"]

    # The on-call engineer rolls back to `previous`.
    with pytest.raises(RollbackError, match="justification"):
        rollback(spec, "previous", "", "oncall", "rollback_1")
    rollback(spec, "previous", "INC-8: new model misroutes JFK", "oncall", "rollback_1")
    assert registry.champion_version(model) == bad["model_version"]

    moves = [(e["kind"], e["from_version"], e["to_version"], e["mode"]) for e in read_log(spec)]
    assert moves == [("promote", None, good["model_version"], "enforce"),
                     ("promote", good["model_version"], bad["model_version"], "override"),
                     ("promote", bad["model_version"], better["model_version"], "enforce"),
                     ("rollback", better["model_version"], bad["model_version"], "rollback")]
    entries = read_log(spec)
    assert entries[1]["justification"].startswith("INC-7") and entries[1]["user"] == "oncall@example.com"
    assert all(e["data_fingerprint"] and e["code_version"] and e["time"] for e in entries)
    registry_log = {k for k in tracking.client().get_registered_model(model).tags if k.startswith("promotion.")}
    assert len(registry_log) == 4

    # An artifact altered after registration fails the live load check and cannot be rolled back to.
    uri = tracking.client().get_model_version_download_uri(model, better["model_version"])
    stored = Path(uri.removeprefix("file://")) / "model.onnx"
    stored.write_bytes(stored.read_bytes()[:-64] + b"\0" * 64)
    live = live_check(spec, better["model_version"], better["run_id"], snapshot)
    assert not live["passed"] and "sha256" in live["reason"]
    with pytest.raises(RollbackError, match="altered|cannot serve"):
        check_target(spec, better["model_version"])
    assert registry.champion_version(model) == bad["model_version"]


def test_the_trigger_form_refuses_an_override_without_justification(dag):
    from airflow.sdk.exceptions import ParamValidationError

    def validate(conf: dict) -> dict:
        params = copy.deepcopy(dag.params)
        params.update(conf)
        return params.validate()

    assert validate({})["gate"]["mode"] == "enforce"
    with pytest.raises(ParamValidationError, match="justification"):
        validate({"gate": {"mode": "override"}})
    with pytest.raises(ParamValidationError):
        validate({"gate": {"mode": "override", "justification": "short"}})
    assert validate({"gate": {"mode": "override", "justification": "INC-7: a reason"}})["gate"]["mode"] == "override"
