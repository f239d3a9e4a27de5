"""bench.icount's driver serves real requests through the current app (what valgrind then counts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from bench.icount import REPO, _model_cache, _tree


def test_the_driver_serves_and_logs_1_row_requests_from_a_cached_model(tmp_path):
    _model_cache(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "bench.icount", "drive", str(REPO), str(tmp_path / "cache"), "64",
                          str(tmp_path / "predictions")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "served 64" in out.stdout
    assert ds.dataset(tmp_path / "predictions", format="parquet", partitioning="hive").to_table().num_rows == 64


def test_the_driver_serves_and_logs_1000_row_binary_requests(tmp_path):
    _model_cache(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "bench.icount", "drive", str(REPO), str(tmp_path / "cache"), "8",
                          str(tmp_path / "predictions"), "batch"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "served 8" in out.stdout
    assert ds.dataset(tmp_path / "predictions", format="parquet", partitioning="hive").to_table().num_rows == 8000


def test_a_base_revision_is_unpacked_as_an_importable_serving_package(tmp_path):
    inside = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, check=False)  # noqa: S607
    if inside.returncode != 0:
        pytest.skip("not a git checkout with commits: bench.icount compares against a git revision")
    tree = _tree("HEAD", tmp_path)
    assert (tree / "serving" / "app.py").is_file() and (tree / "serving" / "__init__.py").is_file()
    assert not (Path(tree) / "tasks").exists()  # only serving/: the rest comes from this checkout
