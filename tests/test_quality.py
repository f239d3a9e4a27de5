"""The data contract stops real broken snapshots with a sentence that names the rule and the column."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from conftest import JUNE_WEEK

from tasks import profile, seed, settings
from tasks.config import PipelineSpec
from tasks.extract import extract_snapshot
from tasks.quality import QualityError, check_quality, evaluate_contract, format_table
from tasks.rules import previous_snapshot
from tasks.snapshot import Window

NEXT_WEEK = Window(datetime(2013, 6, 8), datetime(2013, 6, 15))


def _with_query(spec: PipelineSpec, old: str, new: str, **source: object) -> PipelineSpec:
    """The spec with its SQL query edited: a source broken on purpose."""
    assert old in spec.primary.query, old
    primary = spec.primary.model_copy(update={"query": spec.primary.query.replace(old, new, 1), **source})
    return spec.model_copy(update={"sources": [primary, *spec.sources[1:]]})


def _snapshot(spec: PipelineSpec, url: str, root: Path, window: Window = JUNE_WEEK) -> Path:
    return Path(extract_snapshot(spec, window, url, root)["path"])


def _rule(result: dict, rule: str, column: str | None = None) -> dict:
    return next(r for r in result["rules"] if r["rule"] == rule and (column is None or r["column"] == column))


def test_clean_snapshot_passes_every_rule(spec, sqlite_url, data_root):
    # given a week of the real data, extracted as the pipeline does
    snapshot = _snapshot(spec, sqlite_url, data_root)
    # when it is checked against the committed contract
    result = check_quality(spec, snapshot)
    # then every rule passes and the document says what was checked, by which contract
    assert result["passed"] and result["failures"] == [] and result["warnings"] == []
    assert all(r["passed"] for r in result["rules"])
    assert {r["rule"] for r in result["rules"]} == {
        "row_count", "row_count_change", "freshness", "present", "type", "nulls", "range", "categories",
        "unexpected_columns", "unique", "label_balance"}
    assert result["contract"]["path"] == str(spec.contract_path)
    assert len(result["contract"]["sha256"]) == 64
    assert _rule(result, "row_count_change")["observed"] == "no previous snapshot"
    assert json.loads(json.dumps(result)) == result
    assert "PASSED" in format_table(result)


BROKEN = {
    # case: (old query text, new query text, rule, column, sentence fragment)
    "dropped column": ("f.dest, f.distance,", "f.dest,", "present", "distance", "is missing from the snapshot"),
    "renamed column": ("f.distance,", "f.distance AS dist,", "present", "distance", "is missing"),
    "type change": ("f.distance,", "CAST(f.distance AS TEXT) AS distance,", "type", "distance",
                    "type string, int64 expected"),
    "NULL flood": ("f.distance,", "CASE WHEN f.flight_id % 3 = 0 THEN NULL ELSE f.distance END AS distance,",
                   "nulls", "distance", "% NULL ("),
    "out of range": ("f.distance,", "f.distance * 100 AS distance,", "range", "distance", "outside [1, 6000]"),
    "unseen categories": ("f.carrier,", "f.carrier || 'X' AS carrier,", "categories", "carrier",
                          "100.0% unseen values"),
    "duplicate keys": ("FROM flights f", "FROM (SELECT * FROM flights UNION ALL "
                       "SELECT * FROM flights WHERE flight_id % 7 = 0) f", "unique", "flight_id", "duplicate rows"),
    "stale data": ("WHERE f.scheduled_departure >= :start",
                   "WHERE f.scheduled_departure < '2013-06-05' AND f.scheduled_departure >= :start",
                   "freshness", "scheduled_departure", "h before the window end"),
    "single class": ("f.arr_delay,", "-5.0 AS arr_delay,", "label_balance", "arr_delay", "only one class"),
}


@pytest.mark.reliability  # a fault of issue 10's list (README Reliability table)
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_source_stops_with_the_rule_and_column(case, spec, sqlite_url, data_root):
    old, new, rule, column, fragment = BROKEN[case]
    # given a snapshot extracted from a source broken on purpose
    snapshot = _snapshot(_with_query(spec, old, new), sqlite_url, data_root)
    # when it is checked
    with pytest.raises(QualityError) as caught:
        check_quality(spec, snapshot)
    # then the message names the rule and the column, and the document has the evidence
    message = str(caught.value)
    assert f"[{rule}]" in message and f"`{column}`" in message and fragment in message, message
    failed = _rule(evaluate_contract(spec, snapshot), rule, column)
    assert not failed["passed"] and failed["severity"] == "error" and fragment in failed["reason"]
    assert len(failed["examples"]) <= profile.EXAMPLES
    if rule in ("nulls", "range", "categories", "unique"):
        assert failed["examples"] and "flight_id" in failed["examples"][0]


def test_a_renamed_column_also_shows_as_unexpected(spec, sqlite_url, data_root):
    snapshot = _snapshot(_with_query(spec, "f.distance,", "f.distance AS dist,"), sqlite_url, data_root)
    result = evaluate_contract(spec, snapshot)
    assert result["warnings"] == ["[unexpected_columns] column(s) `dist` not in the contract "
                                  "(renamed, or new and unchecked)"]


def test_a_warn_rule_is_reported_but_does_not_stop(spec, sqlite_url, data_root):
    # given a snapshot with an extra column, which the contract only warns about
    snapshot = _snapshot(_with_query(spec, "f.carrier,", "f.carrier, f.tailnum,"), sqlite_url, data_root)
    # when it is checked, it passes
    result = check_quality(spec, snapshot)
    # and the warning is in the document and in the table
    assert result["passed"] and result["failures"] == []
    assert result["warnings"] == ["[unexpected_columns] column(s) `tailnum` not in the contract "
                                  "(renamed, or new and unchecked)"]
    warned = _rule(result, "unexpected_columns")
    assert warned["severity"] == "warn" and not warned["passed"]
    assert re.search(r"WARN\s+warn\s+unexpected_columns\s+tailnum", format_table(result))


def test_an_empty_extract_fails_the_row_count(spec, sqlite_url, data_root):
    # given a source that allows an empty window, and a window without flights
    allowing = _with_query(spec, "ORDER BY", "ORDER BY", allow_empty=True)
    snapshot = _snapshot(allowing, sqlite_url, data_root, Window(datetime(2014, 1, 1), datetime(2014, 1, 2)))
    with pytest.raises(QualityError, match=r"\[row_count\] snapshot: 0 rows, at least 1,000 required"):
        check_quality(spec, snapshot)


def test_a_row_count_collapse_against_the_previous_snapshot_fails(spec, sqlite_url, data_root):
    # given a full week, then the next week from a source that lost two thirds of its rows
    _snapshot(spec, sqlite_url, data_root, JUNE_WEEK)
    sampled = _with_query(spec, "WHERE ", "WHERE f.flight_id % 3 = 0 AND ")
    snapshot = _snapshot(sampled, sqlite_url, data_root, NEXT_WEEK)
    # then the drop in rows per day is the reason, against the week before
    with pytest.raises(QualityError, match=r"\[row_count_change\] snapshot: .* rows per day, -6\d\.\d% against "
                                           rf".* in the previous snapshot {JUNE_WEEK.slug}"):
        check_quality(spec, snapshot)


def test_row_count_change_compares_rows_per_day_not_rows(spec, sqlite_url, data_root):
    # a 3-day window after a 7-day one has fewer rows, but not fewer per day
    _snapshot(spec, sqlite_url, data_root, JUNE_WEEK)
    snapshot = _snapshot(spec, sqlite_url, data_root, Window(datetime(2013, 6, 8), datetime(2013, 6, 11)))
    result = check_quality(spec, snapshot)
    assert _rule(result, "row_count_change")["passed"]


def test_previous_snapshot_is_the_latest_published_one_ending_before(tmp_path):
    root = tmp_path / "flights"
    for slug, published in [("20130501T0000_20130601T0000", True), ("20130525T0000_20130608T0000", True),
                            ("20130601T0000_20130610T0000", False), ("20130610T0000_20130620T0000", True)]:
        (root / slug).mkdir(parents=True)
        if published:
            (root / slug / "manifest.json").write_text("{}")
    current = root / "20130601T0000_20130615T0000"
    assert previous_snapshot(current, datetime(2013, 6, 15)) == root / "20130525T0000_20130608T0000"
    assert previous_snapshot(root / "20130401T0000_20130501T0000", datetime(2013, 5, 1)) is None


def test_the_check_streams_batch_by_batch_with_the_same_verdicts(spec, sqlite_url, data_root, monkeypatch):
    # given a snapshot with NULLs and duplicate keys spread over the whole week
    broken = _with_query(_with_query(spec, *BROKEN["NULL flood"][:2]), *BROKEN["duplicate keys"][:2])
    snapshot = _snapshot(broken, sqlite_url, data_root)
    whole = evaluate_contract(spec, snapshot)
    # when it is read in 500-row batches
    batches = []
    original = profile.iter_batches
    monkeypatch.setattr(profile, "BATCH_ROWS", 500)
    monkeypatch.setattr(profile, "iter_batches", lambda *a: (batches.append(b) or b for b in original(*a)))
    small = evaluate_contract(spec, snapshot)
    # then counts, shares and the (first five) examples add up across batches to the same document
    assert len(batches) > 10 and max(b.num_rows for b in batches) <= 500
    assert small["rules"] == whole["rules"]
    assert {r["rule"] for r in small["rules"] if not r["passed"]} == {"nulls", "unique"}


@pytest.fixture(scope="session")
def year_url(tmp_path_factory) -> str:
    """All of 2013 in a SQLite database of its own (the shared one has only June and July)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('year')}/flights.db"
    seed.seed_database(url)
    seed.write_landing_files(settings.state_dir())
    return url


@pytest.mark.slow
def test_the_committed_contract_passes_every_month_of_2013(spec, year_url, tmp_path):
    # Month after month in one data root, as nightly runs would leave them: the row count change
    # rule compares each month with the one before.
    for month in range(1, 13):
        window = Window(datetime(2013, month, 1), datetime(2013 + month // 12, month % 12 + 1, 1))
        result = evaluate_contract(spec, _snapshot(spec, year_url, tmp_path, window))
        assert result["passed"] and result["warnings"] == [], (window, result["failures"], result["warnings"])
        assert month == 1 or _rule(result, "row_count_change")["observed"] != "no previous snapshot"
