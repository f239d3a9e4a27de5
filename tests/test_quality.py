"""The data contract stops broken snapshots with a sentence that names the rule and column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from conftest import JUNE_WEEK

from tasks.extract import extract_snapshot
from tasks.quality import QualityError, check_quality
from tasks.snapshot import SnapshotWriter, read_snapshot


def _rewrite(source: Path, target: Path, change) -> Path:
    frame = change(read_snapshot(source).to_pandas())
    writer = SnapshotWriter(target)
    writer.write(pa.RecordBatch.from_pandas(frame, preserve_index=False))
    writer.publish({"pipeline": "flights"})
    return target


@pytest.fixture()
def clean(spec, sqlite_url, data_root) -> Path:
    extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    return data_root / "flights" / JUNE_WEEK.slug


def test_clean_snapshot_passes(spec, clean):
    result = check_quality(spec, clean)
    assert result["passed"] and all(c["passed"] for c in result["checks"])


def test_dropped_column_is_named(spec, clean, tmp_path):
    broken = _rewrite(clean, tmp_path / "s", lambda f: f.drop(columns=["distance"]))
    with pytest.raises(QualityError, match="column `distance` is missing"):
        check_quality(spec, broken)


def test_null_flood_is_reported_with_its_share(spec, clean, tmp_path):
    def flood(f: pd.DataFrame) -> pd.DataFrame:
        f.loc[f.index[: len(f) // 2], "carrier"] = None
        return f
    with pytest.raises(QualityError, match=r"column `carrier`: 50\.0% NULL"):
        check_quality(spec, _rewrite(clean, tmp_path / "s", flood))


def test_single_class_label_fails(spec, clean, tmp_path):
    broken = _rewrite(clean, tmp_path / "s", lambda f: f.assign(arr_delay=0.0))
    with pytest.raises(QualityError, match="0.0% positive"):
        check_quality(spec, broken)


def test_empty_window_allowed_by_the_spec_still_fails_the_contract(spec, sqlite_url, data_root):
    from datetime import datetime

    from tasks.snapshot import Window
    allowing = spec.model_copy(update={"sources": [
        spec.sources[0].model_copy(update={"allow_empty": True}), *spec.sources[1:]]})
    extract_snapshot(allowing, Window(datetime(2014, 1, 1), datetime(2014, 1, 2)), sqlite_url, data_root)
    with pytest.raises(QualityError, match="0 rows, at least 1000 required"):
        check_quality(spec, data_root / "flights" / "20140101T0000_20140102T0000")
