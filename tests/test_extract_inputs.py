"""Extraction against real databases and files: values survive exactly, bad input is named."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from conftest import JUNE_WEEK, MARIADB_URL, POSTGRES_URL
from sqlalchemy.dialects.mysql import DATETIME

from tasks.config import FileSource, Join
from tasks.extract import extract_snapshot
from tasks.files import read_file_source
from tasks.snapshot import SchemaError, read_manifest, unify
from tasks.sources import SourceError
from tasks.sql_reader import read_batches

REPO = Path(__file__).resolve().parent.parent
ROWS = [
    (1, 1.5, "a", datetime(2013, 6, 1, 5, 15), Decimal("12.50")),
    (2, None, None, None, None),
    (3, -0.25, "é ü", datetime(2013, 6, 2, 23, 59, 59, 123456), Decimal("-1.00")),
]


def _typed_table(url: str) -> None:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    timestamp = sa.DateTime().with_variant(DATETIME(fsp=6), "mysql", "mariadb")  # keep microseconds
    table = sa.Table("extract_types", meta, sa.Column("id", sa.BigInteger), sa.Column("x", sa.Float),
                     sa.Column("s", sa.String(20)), sa.Column("ts", timestamp), sa.Column("d", sa.Numeric(10, 2)))
    with engine.begin() as conn:
        meta.drop_all(conn)
        meta.create_all(conn)
        conn.execute(table.insert(), [dict(zip(["id", "x", "s", "ts", "d"], r, strict=True)) for r in ROWS])
    engine.dispose()


@pytest.mark.parametrize("url", [POSTGRES_URL, MARIADB_URL, "sqlite"], ids=["postgres", "mariadb", "sqlite"])
def test_values_and_nulls_come_back_exactly(url, tmp_path):
    url = f"sqlite:///{tmp_path}/t.db" if url == "sqlite" else url
    _typed_table(url)
    batches = list(read_batches(url, "SELECT id, x, s, ts, d FROM extract_types WHERE id >= :low ORDER BY id",
                                {"low": 1}, "types"))
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[1] == {"id": 2, "x": None, "s": None, "ts": None, "d": None}
    assert rows[0]["x"] == 1.5 and rows[2]["x"] == -0.25 and rows[2]["s"] == "é ü"
    if not url.startswith("sqlite"):  # SQLite has no timestamp or decimal type: text and float come back
        assert rows[2]["ts"] == datetime(2013, 6, 2, 23, 59, 59, 123456)
        assert Decimal(str(rows[0]["d"])) == Decimal("12.50")


def test_postgres_timestamptz_keeps_the_instant():
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS extract_tz"))
        conn.execute(sa.text("CREATE TABLE extract_tz (at timestamptz)"))
        conn.execute(sa.text("INSERT INTO extract_tz VALUES ('2013-06-01 05:15:00-04:00')"))
    engine.dispose()
    batch = next(read_batches(POSTGRES_URL, "SELECT at FROM extract_tz", {}, "tz"))
    assert batch.schema.field("at").type.tz == "UTC"
    assert batch.column(0)[0].as_py() == datetime(2013, 6, 1, 9, 15, tzinfo=UTC)


def test_postgres_bound_values_arrive_verbatim_never_as_sql():
    # Values that would break (or inject into) SQL or a libpq options string if formatted into either.
    text = "it's a \\ test'; DROP TABLE extract_canary; --"
    at = datetime(2013, 6, 1, 5, 15, 30, 250000)
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS extract_canary (x int)"))
    batch = next(read_batches(POSTGRES_URL, "SELECT :s::text AS s, :at AS at, :n AS n, :flag AS flag;",
                              {"s": text, "at": at, "n": 7, "flag": True}, "params"))
    assert batch.to_pylist() == [{"s": text, "at": at, "n": 7, "flag": True}]
    with engine.connect() as conn:  # still there
        assert conn.execute(sa.text("SELECT to_regclass('extract_canary') IS NOT NULL")).scalar_one()
    engine.dispose()


def test_postgres_scanner_binary_must_carry_duckdbs_signature(tmp_path):
    # The PostgreSQL reader loads a native extension from a PyPI package: DuckDB must refuse a modified one.
    import duckdb

    from tasks.sql_reader import _scanner_extension

    genuine = _scanner_extension(duckdb.__version__)
    data = bytearray(genuine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = tmp_path / genuine.name
    tampered.write_bytes(data)
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    with pytest.raises(duckdb.Error, match="signature is either missing or invalid"):
        duckdb.connect(config=config).execute(f"LOAD '{tampered}'")
    duckdb.connect(config=config).execute(f"LOAD '{genuine}'")


def test_postgres_login_failure_names_the_database_but_never_the_password():
    secret = "s3cr'et pass"
    url = f"postgresql+psycopg2://nobody:{secret.replace(' ', '%20')}@127.0.0.1:5432/test"
    with pytest.raises(SourceError) as caught:
        list(read_batches(url, "SELECT 1", {}, "flights"))
    message = str(caught.value)
    assert "source 'flights': cannot connect to postgresql+psycopg2://nobody:***@127.0.0.1:5432/test" in message
    assert 'role "nobody" does not exist' in message
    assert "s3cr" not in message and "s3cr" not in repr(caught.value.__cause__)


@pytest.mark.parametrize("url", [POSTGRES_URL, "sqlite"], ids=["postgres", "sqlite"])
def test_sql_error_names_the_source_and_the_problem(url, tmp_path, sqlite_url):
    url = sqlite_url if url == "sqlite" else url
    with pytest.raises(SourceError, match=r"source 'broken'.*no_such_column"):
        list(read_batches(url, "SELECT no_such_column FROM flights", {}, "broken"))


def _airports(tmp_path: Path, pattern: str) -> FileSource:
    return FileSource(name="airports", kind="file", path=str(tmp_path / pattern), format="csv",
                      join=Join(left_on="dest", right_on="faa", columns={"lat": "dest_lat"}))


def test_malformed_csv_names_file_and_line(tmp_path):
    (tmp_path / "a.csv").write_text("faa,lat\nJFK,40.6\nLAX,33.9,extra\n")
    with pytest.raises(SourceError, match=r"a\.csv, line 3"):
        read_file_source(_airports(tmp_path, "a.csv"))


def test_glob_reads_every_file_and_type_drift_between_files_is_named(tmp_path):
    (tmp_path / "a.csv").write_text("faa,lat\nJFK,40.6\n")
    (tmp_path / "b.csv").write_text("faa,lat\nLAX,33.9\n")
    assert read_file_source(_airports(tmp_path, "*.csv")).num_rows == 2
    (tmp_path / "c.csv").write_text("faa,lat\nSFO,north\n")
    with pytest.raises(SourceError, match="lat"):
        read_file_source(_airports(tmp_path, "*.csv"))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SourceError, match="no file matches"):
        read_file_source(_airports(tmp_path, "nothing-*.csv"))


def test_type_change_between_batches_is_a_schema_error():
    schema = pa.schema([("seats", pa.int64())])
    with pytest.raises(SchemaError, match="`seats` changed type from int64 to string"):
        unify(schema, pa.RecordBatch.from_pydict({"seats": ["many"]}))
    # A NULL-only batch is not a change: it adopts the column's type.
    assert unify(schema, pa.RecordBatch.from_pydict({"seats": pa.nulls(2)}))[1].schema == schema


@pytest.mark.reliability  # a fault of issue 10's list (README Reliability table)
def test_killed_extract_leaves_nothing_visible_and_rerun_matches(spec, sqlite_url, data_root, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from tasks import snapshot
        from tasks.config import load_spec
        from tasks.extract import extract_snapshot
        from tasks.snapshot import Window
        from datetime import datetime
        snapshot.SnapshotWriter.publish = lambda self, details: os.kill(os.getpid(), signal.SIGKILL)
        extract_snapshot(load_spec(), Window(datetime(2013, 6, 1), datetime(2013, 6, 8)),
                         {sqlite_url!r}, __import__("pathlib").Path({str(data_root)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, check=False)
    assert proc.returncode == -9
    visible = [p for p in (data_root / "flights").iterdir() if not p.name.startswith(".")]
    assert visible == []
    manifest = extract_snapshot(spec, JUNE_WEEK, sqlite_url, data_root)
    reference = extract_snapshot(spec, JUNE_WEEK, sqlite_url, tmp_path / "clean")
    assert manifest["fingerprint"] == reference["fingerprint"]
    assert read_manifest(data_root / "flights" / JUNE_WEEK.slug)["rows"] == reference["rows"]


def test_date_partitioned_parquet_files_as_the_first_source(spec, sqlite_url, tmp_path):
    import pyarrow.parquet as pq

    from tasks.config import FileSource
    from tasks.snapshot import read_snapshot

    # Another team's daily export: day=YYYY-MM-DD/part.parquet, the same rows the database holds.
    reference = extract_snapshot(spec, JUNE_WEEK, sqlite_url, tmp_path / "from-db")
    rows = read_snapshot(Path(reference["path"])).drop_columns(["dest_lat", "dest_lon", "dest_alt"])
    days = pa.compute.strftime(rows.column("scheduled_departure"), format="%Y-%m-%d")
    for day in sorted(set(days.to_pylist())):
        folder = tmp_path / "export" / f"day={day}"
        folder.mkdir(parents=True)
        pq.write_table(rows.filter(pa.compute.equal(days, day)), folder / "part.parquet")
    files = FileSource(name="flights_export", kind="file", path=str(tmp_path / "export" / "*" / "*.parquet"),
                       format="parquet", partitioning="hive")
    from_files = spec.model_copy(update={"sources": [files, *spec.sources[1:]]})
    manifest = extract_snapshot(from_files, JUNE_WEEK, None, tmp_path / "from-files")
    got = read_snapshot(Path(manifest["path"]))
    assert got.num_rows == reference["rows"]
    assert "day" in got.column_names
    assert got.column("flight_id").to_pylist() == read_snapshot(Path(reference["path"])).column("flight_id").to_pylist()


def test_spec_rejects_a_join_on_the_first_source(tmp_path):
    import yaml

    from tasks.config import SpecError, load_spec

    raw = yaml.safe_load((REPO / "config" / "flights.yaml").read_text())
    raw["sources"].reverse()  # the joined airports file first: nothing to join onto
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"sources\.0\.join"):
        load_spec(tmp_path / "s.yaml")


def test_duplicated_lookup_key_joins_its_first_row_and_keeps_the_others(spec, sqlite_url, tmp_path):
    from tasks.extract import _join, _lookup

    (tmp_path / "a.csv").write_text("faa,lat\nJFK,40.6\nJFK,99.0\nLAX,33.9\n")
    source = _airports(tmp_path, "a.csv")
    batch = pa.RecordBatch.from_pydict({"dest": ["LAX", "JFK", "SFO"]})
    joined = _join(batch, source, _lookup(source))
    assert joined.column(1).to_pylist() == [33.9, 40.6, None]
