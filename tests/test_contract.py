"""The contract file: strict to read, found next to its spec, and drafted from a snapshot by the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import JUNE_WEEK, REPO

from tasks.config import load_spec
from tasks.contract import ColumnContract, ContractError, ensure_fits, load_contract
from tasks.contract_infer import infer_contract
from tasks.extract import extract_snapshot
from tasks.quality import main


def test_the_spec_finds_its_contract_next_to_it_wherever_it_is_copied(tmp_path):
    assert load_spec(REPO / "config" / "flights.yaml").contract_path == REPO / "config" / "flights.contract.yaml"
    shutil.copy(REPO / "config" / "flights.yaml", tmp_path / "team.yaml")
    assert load_spec(tmp_path / "team.yaml").contract_path == tmp_path / "flights.contract.yaml"


def test_the_committed_contract_fits_the_spec(spec):
    ensure_fits(load_contract(spec.contract_path), spec)


def test_an_unknown_key_is_an_error_naming_it(tmp_path):
    text = (REPO / "config" / "flights.contract.yaml").read_text().replace("    max: 6000", "    maxx: 6000")
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ContractError, match=r"columns\.distance\.maxx: Extra inputs are not permitted"):
        load_contract(tmp_path / "typo.yaml")


def test_a_contract_that_forgets_a_feature_does_not_fit_the_spec(spec):
    contract = load_contract(spec.contract_path)
    columns = {k: v for k, v in contract.columns.items() if k != "seats"}
    with pytest.raises(ContractError, match="column `seats` used by the pipeline is not in `columns`"):
        ensure_fits(contract.model_copy(update={"columns": columns}), spec)


def test_severity_applies_to_a_whole_column_or_rule_by_rule():
    assert ColumnContract(type="double", severity="warn").severity_of("nulls") == "warn"
    per_rule = ColumnContract(type="double", min=0, severity={"range": "warn"})
    assert (per_rule.severity_of("range"), per_rule.severity_of("nulls")) == ("warn", "error")
    with pytest.raises(ValueError, match="nullable: false allows no NULL"):
        ColumnContract(type="double", nullable=False, max_null_share=0.1)


@pytest.fixture()
def clean(spec, sqlite_url, data_root) -> Path:
    return Path(extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)["path"])


def test_infer_drafts_a_reviewable_contract_its_own_snapshot_passes(spec, clean, tmp_path, capsys):
    # when a contract is drafted from a known-good snapshot
    out = tmp_path / "draft.yaml"
    assert main(["infer", "--snapshot", str(clean), "--out", str(out)]) == 0
    # then the file is commented YAML that reads back as exactly the inferred contract
    text = out.read_text()
    assert text.startswith("# Data contract for `flights`, drafted by") and "# observed 0.0% NULL" in text
    assert load_contract(out) == infer_contract(spec, clean)[0]
    draft = yaml.safe_load(text)
    assert draft["columns"]["carrier"]["categories"][:2] == ["9E", "AA"]  # "9E" stays a string
    assert draft["columns"]["distance"]["min"] == 0 and draft["columns"]["distance"]["max"] > 4983
    # and the snapshot it came from passes it
    assert main(["check", "--snapshot", str(clean), "--contract", str(out)]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_check_cli_prints_the_table_and_exits_1_on_an_error(spec, sqlite_url, data_root):
    # given a snapshot whose carrier codes all changed
    broken = spec.primary.model_copy(update={"query": spec.primary.query.replace("f.carrier,", "f.carrier || 'X' "
                                                                                 "AS carrier,")})
    spec = spec.model_copy(update={"sources": [broken, *spec.sources[1:]]})
    snapshot = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)["path"]
    # when the command-line check runs (the spec's contract by default)
    done = subprocess.run([sys.executable, "-m", "tasks.quality", "check", "--snapshot", snapshot],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    # then it fails with the sentence and the table row
    assert done.returncode == 1, done.stderr
    assert "[categories] column `carrier`: 100.0% unseen values" in done.stdout
    assert re.search(r"FAIL\s+error\s+categories\s+carrier\s+100\.0% unseen", done.stdout)
