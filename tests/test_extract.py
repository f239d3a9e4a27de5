"""Snapshots: the window's rows from real databases, fingerprinted, idempotent, never half-written."""

from __future__ import annotations

import pytest
from conftest import JUNE_WEEK, MARIADB_URL, POSTGRES_URL

from tasks import seed, snapshot, sql_reader
from tasks.extract import EmptyExtractError, extract_snapshot
from tasks.snapshot import read_manifest, read_snapshot
from tasks.sources import SourceError


def test_snapshot_holds_exactly_the_window(spec, sqlite_url, data_root):
    manifest = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    table = read_snapshot(data_root / "flights" / JUNE_WEEK.slug).to_pandas()
    assert manifest["rows"] == len(table) > 5000
    assert table["scheduled_departure"].min() >= JUNE_WEEK.start
    assert table["scheduled_departure"].max() < JUNE_WEEK.end
    assert table["flight_id"].is_unique
    # The file source was joined on the destination airport.
    assert table["dest_lat"].notna().mean() > 0.95


def test_rerun_gives_the_same_fingerprint_and_no_duplicates(spec, sqlite_url, data_root):
    first = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    second = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    assert second["fingerprint"] == first["fingerprint"]
    assert [p.name for p in (data_root / "flights").iterdir()] == [JUNE_WEEK.slug]


def test_fingerprint_does_not_depend_on_file_layout(spec, sqlite_url, data_root, tmp_path, monkeypatch):
    whole = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    monkeypatch.setattr(sql_reader, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(snapshot, "ROWS_PER_FILE", 2500)
    split = extract_snapshot(spec, JUNE_WEEK, sqlite_url, tmp_path / "other")
    assert len(split["files"]) > len(whole["files"])
    assert split["fingerprint"] == whole["fingerprint"]


def test_failed_extract_leaves_no_visible_snapshot(spec, sqlite_url, data_root):
    broken = spec.model_copy(update={"sources": [
        spec.sources[0], spec.sources[1].model_copy(update={"path": "/nonexistent/airports.csv"})]})
    with pytest.raises(SourceError, match="airports"):
        extract_snapshot(broken, JUNE_WEEK, sqlite_url, data_root)
    assert not (data_root / "flights" / JUNE_WEEK.slug).exists()
    assert not any(p.name.startswith(".") for p in (data_root / "flights").glob("*"))


@pytest.mark.reliability  # a fault of issue 10's list (README Reliability table)
def test_unreachable_database_error_names_it_without_password(spec, data_root):
    url = "postgresql+psycopg2://user:hunter2@127.0.0.1:1/nope"
    with pytest.raises(SourceError) as err:
        extract_snapshot(spec, JUNE_WEEK, url, data_root)
    assert "127.0.0.1:1" in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("url", [POSTGRES_URL, MARIADB_URL], ids=["postgres", "mariadb"])
def test_server_databases_give_the_same_snapshot_as_sqlite(spec, sqlite_url, data_root, tmp_path, url):
    seed.seed_database(url, months={6})
    reference = extract_snapshot(spec, JUNE_WEEK, sqlite_url, tmp_path / "sqlite")
    manifest = extract_snapshot(spec, JUNE_WEEK, url, data_root)
    assert manifest["rows"] == reference["rows"]
    assert read_manifest(data_root / "flights" / JUNE_WEEK.slug)["fingerprint"] == manifest["fingerprint"]
    assert manifest["fingerprint"] == reference["fingerprint"]


def test_empty_window_is_a_clear_failure_and_writes_nothing(spec, sqlite_url, data_root):
    from datetime import datetime

    from tasks.snapshot import Window
    with pytest.raises(EmptyExtractError, match="returned no rows"):
        extract_snapshot(spec, Window(datetime(2014, 1, 1), datetime(2014, 1, 2)), sqlite_url, data_root)
    assert not list((data_root / "flights").glob("*"))


def test_object_storage_data_root_gives_the_same_snapshot(spec, sqlite_url, data_root):
    # memory:// is fsspec's in-process filesystem: the same code path as s3:// or gs://.
    from tasks.config import as_path
    from tasks.quality import check_quality

    remote_root = as_path("memory://snapshots/extract-test")
    local = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    remote = extract_snapshot(spec, JUNE_WEEK, sqlite_url, remote_root)
    assert remote["fingerprint"] == local["fingerprint"]
    snap = remote_root / "flights" / JUNE_WEEK.slug
    assert read_snapshot(snap).num_rows == local["rows"]
    assert check_quality(spec, snap)["passed"]
    again = extract_snapshot(spec, JUNE_WEEK, sqlite_url, remote_root)
    assert again["fingerprint"] == remote["fingerprint"]
    assert sorted(p.name for p in snap.iterdir()) == sorted([*(f["path"] for f in remote["files"]), "manifest.json"])
