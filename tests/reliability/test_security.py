"""Security properties: secrets stay out of everything a run writes; serving never unpickles."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import POSTGRES_URL

from tasks import seed, tracking

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55word"  # PostgreSQL here trusts local connections: the password travels, unchecked


def test_the_database_password_never_reaches_logs_reports_snapshots_or_mlflow(dag, tmp_path, monkeypatch, capfd,
                                                                             state_dir):
    seed.seed_database(POSTGRES_URL, months={6})
    raw = yaml.safe_load((REPO / "config" / "flights.yaml").read_text())
    raw.update(name="secrets_test", registered_model="secrets_test_model",
               data_root=str(tmp_path / "data"), reports_root=str(tmp_path / "reports"))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(REPO / "config" / "flights.contract.yaml", tmp_path)
    monkeypatch.setenv("PIPELINE_CONFIG", str(tmp_path / "spec.yaml"))
    monkeypatch.setenv("AIRFLOW_CONN_FLIGHTS_DB", f"postgres://root:{SECRET}@127.0.0.1:5432/test")

    run = dag.test(logical_date=datetime(2013, 6, 22, tzinfo=UTC),
                   run_conf={"window_end": "2013-06-22", "window_days": 14, "epochs": 1})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["extract"] == "success" and states["train"] == "success", states  # it used the connection

    out = capfd.readouterr()
    assert SECRET not in out.out and SECRET not in out.err
    written = [p for root in (tmp_path / "data", tmp_path / "reports", state_dir / "airflow" / "logs")
               if root.exists() for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written) and any(p.name == "report.html" for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    experiment = tracking.use_experiment("secrets_test")
    for mlflow_run in tracking.client().search_runs([experiment]):
        values = [*mlflow_run.data.params.values(), *mlflow_run.data.tags.values()]
        assert not any(SECRET in str(v) for v in values), mlflow_run.info.run_id


def test_the_serving_code_never_unpickles():
    """Models arrive as ONNX bytes; nothing in serving/ can execute code hidden in a pickle."""
    source = "\n".join(p.read_text() for p in (REPO / "serving").rglob("*.py"))
    assert not re.search(r"\b(pickle|cloudpickle|dill|joblib|torch\.load|numpy\.load|np\.load)\b", source)
    assert "allow_pickle" not in source
