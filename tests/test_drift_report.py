"""A run's drift report end to end: reference found by the champion's fingerprint, an object-storage
reports store, MLflow artifacts on the candidate's run, tags on its version, listed by the plugin."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from upath import UPath

from plugins import drift_reports as plugin
from tasks import registry, tracking
from tasks.extract import extract_snapshot
from tasks.report import find_snapshot, report_dir, report_id, write_run_report
from tasks.snapshot import Window, read_manifest
from tasks.train import train_model

JUNE_WEEK = Window(datetime(2013, 6, 1), datetime(2013, 6, 8))
JULY_WEEK = Window(datetime(2013, 7, 1), datetime(2013, 7, 8))
STORE = "memory://drift-report-test/reports"


@pytest.fixture(scope="module")
def world(spec, sqlite_url, tmp_path_factory):
    """Its own model and data store; reports in an fsspec memory store, as on object storage."""
    root = tmp_path_factory.mktemp("drift_report")
    own = spec.model_copy(update={"name": "drift_report_test", "registered_model": "drift_report_test_model",
                                  "data_root": str(root / "data"), "reports_root": STORE})
    snapshots = [Path(extract_snapshot(own, w, sqlite_url)["path"]) for w in (JUNE_WEEK, JULY_WEEK)]
    return own, snapshots


def _candidate(spec, snapshot: Path) -> dict:
    return train_model(spec, snapshot, {"passed": True}, {"epochs": 1})


def _summary(location: str) -> dict:
    return json.loads((UPath(location) / "summary.json").read_text())


@pytest.mark.slow
def test_reports_follow_the_champion_and_land_in_the_store_mlflow_and_the_registry(world, monkeypatch):
    spec, (june, july) = world

    # The first run: no champion, so the older half of June's week against the newer half.
    first = _candidate(spec, june)
    location = write_run_report(spec, str(june), first["run_id"], first["model_version"], "manual__first",
                                dag_id="train_and_deploy", run_date="2013-06-08T03:00:00+00:00")
    assert location == str(report_dir(spec, "manual__first")) and location.startswith("memory://")
    summary = _summary(location)
    assert summary["reference"]["description"].startswith("the older half of this window (there is no champion")
    assert summary["champion_version"] is None and summary["prediction"] and summary["target"]
    registry.promote(spec.registered_model, first["model_version"])

    # The next run: July's week against the data the champion was trained on, found by its fingerprint.
    second = _candidate(spec, july)
    location = write_run_report(spec, str(july), second["run_id"], second["model_version"], "manual__second",
                                dag_id="train_and_deploy", run_date="2013-07-08T03:00:00+00:00")
    summary = _summary(location)
    june_fingerprint = read_manifest(june)["fingerprint"]
    assert summary["reference"]["fingerprint"] == june_fingerprint
    assert summary["reference"]["description"] == (
        f"the data champion v{first['model_version']} was trained on (2013-06-01 to 2013-06-08)")
    assert summary["current"]["fingerprint"] == read_manifest(july)["fingerprint"]
    assert summary["reference"]["rows"] > 5000 and summary["reference"]["rows_sampled"] == spec.drift.max_rows
    assert {"temp"} <= {c["column"] for c in summary["columns"] if c["drifted"]}  # June vs July weather
    assert (UPath(location) / "report.html").stat().st_size < 5_000_000

    # Logged on the candidate's run and summarised on its version.
    artifacts = {a.path for a in tracking.client().list_artifacts(second["run_id"], "drift")}
    assert artifacts == {"drift/report.html", "drift/summary.json"}
    tags = registry.version_tags(spec.registered_model, second["model_version"])
    assert tags["drift.status"] == summary["status"]
    assert tags["drift.drifted_share"] == f"{summary['drifted_share']:.3f}"
    assert "temp" in tags["drift.drifted_columns"] and tags["drift.report"] == location
    assert tags["drift.reference"].startswith(f"the data champion v{first['model_version']}")
    assert tags["drift.prediction"] in {"drift", "ok"} and tags["drift.target"] in {"drift", "ok"}

    # The plugin reads the same store: newest run first, the run tab resolves to its report.
    monkeypatch.setenv("REPORTS_DIR", STORE)
    entries = plugin.list_reports(plugin.reports_root())
    assert [e.report_id for e in entries][:2] == ["manual__second", "manual__first"]
    assert plugin.resolve_report_file(plugin.reports_root(), "manual__second", "report.html") is not None


@pytest.mark.slow
def test_a_moved_reference_is_found_by_fingerprint_and_a_lost_one_is_said_so(world):
    spec, (june, july) = world
    champion = registry.champion_version(spec.registered_model)
    if champion is None:  # run alone: make June's model the champion
        registry.promote(spec.registered_model, _candidate(spec, june)["model_version"])
    fingerprint = read_manifest(june)["fingerprint"]
    moved = june.with_name("restored-from-backup")
    june.rename(moved)
    try:
        assert find_snapshot(spec, fingerprint, str(june)) == moved
        # A same-named folder with other content is not taken for the champion's data.
        assert find_snapshot(spec, "0" * 64, str(moved)) is None
        hidden = moved.rename(moved.parent.parent / "elsewhere")
        candidate = _candidate(spec, july)
        summary = _summary(write_run_report(spec, str(july), candidate["run_id"], candidate["model_version"],
                                            "manual__lost"))
        assert summary["reference"]["description"].startswith("the older half of this window (the data champion")
        assert "is no longer in the data store" in summary["reference"]["description"]
        hidden.rename(moved)
    finally:
        if moved.exists():
            moved.rename(june)


@pytest.mark.parametrize("run_id, expected", [
    ("manual__2024-01-01T00:00:00+00:00", "manual__2024-01-01T00_00_00_00_00"),
    ("..", "_."), (".hidden", "_hidden"), ("a/../../b", "a_.._.._b"), ("", "_"),
])
def test_report_ids_are_safe_folder_names_and_the_plugin_agrees(run_id, expected):
    assert report_id(run_id) == expected == plugin.report_id_for_run(run_id)
    assert plugin.REPORT_ID.fullmatch(expected)
