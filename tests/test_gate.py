"""Gate rules: absolute thresholds always, the champion comparison only when there is one."""

from __future__ import annotations

from tasks.gate import evaluate_rules

QUALITY_OK = {"passed": True}


def _evaluation(auc: float, parity: float = 1e-7) -> dict:
    return {"metrics": {"roc_auc": auc}, "parity_max_abs_diff": parity}


def _failed(rules: list[dict]) -> list[str]:
    return [r["rule"] for r in rules if not r["passed"]]


def test_first_model_faces_only_absolute_rules(spec):
    rules = evaluate_rules(spec, "1", _evaluation(0.7), QUALITY_OK, None, None)
    assert [r["rule"] for r in rules] == ["data_quality", "parity", "min_roc_auc"]
    assert _failed(rules) == []


def test_candidate_below_the_absolute_floor_fails_with_a_reason(spec):
    rules = evaluate_rules(spec, "1", _evaluation(0.55), QUALITY_OK, None, None)
    assert _failed(rules) == ["min_roc_auc"]
    assert "0.5500" in next(r["reason"] for r in rules if r["rule"] == "min_roc_auc")


def test_candidate_may_trail_the_champion_only_within_the_tolerance(spec):
    tolerance = spec.gate.max_degradation
    within = evaluate_rules(spec, "2", _evaluation(0.75 - tolerance / 2), QUALITY_OK, "1", {"roc_auc": 0.75})
    beyond = evaluate_rules(spec, "2", _evaluation(0.75 - tolerance * 2), QUALITY_OK, "1", {"roc_auc": 0.75})
    assert _failed(within) == []
    assert _failed(beyond) == ["not_worse_than_champion"]
    assert next(r for r in beyond if r["rule"] == "not_worse_than_champion")["baseline"] == 0.75


def test_broken_data_or_parity_never_passes(spec):
    rules = evaluate_rules(spec, "2", _evaluation(0.9, parity=1e-3), {"passed": False}, None, None)
    assert _failed(rules) == ["data_quality", "parity"]
