"""Rows of a parameterised SQL query as a stream of Arrow record batches.

PostgreSQL goes through DuckDB's postgres scanner: the server streams `COPY (query) TO STDOUT` in
binary and optimised C++ turns it into Arrow, no Python object per value. (The ADBC driver did the
same, but its PyPI wheels are built without optimisation: twice the CPU, on a 2-core machine the
difference between keeping up with the server and not; see README, Extraction benchmark.)
Other databases go through a SQLAlchemy server-side cursor, converted column by column.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tasks.sources import SourceError, redact

# Rows per batch from a row-based driver: bounds the Python objects alive at once (see make bench).
CHUNK_ROWS = 20_000
# Rows per Arrow batch from PostgreSQL: half a Parquet row group; a few in flight bound the memory.
BATCH_ROWS = 65_536
# `:name` bind parameters; not `::type` casts and not `10:30` inside literals.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def read_batches(url: str, query: str, params: dict[str, Any], source: str) -> Iterator[pa.RecordBatch]:
    """Stream the query's rows; values are always bound, never formatted into the SQL.

    Raises:
        SourceError: the database is unreachable or the query fails; names the source and the
            database (password redacted).
    """
    if make_url(url).get_backend_name() == "postgresql":
        yield from _postgres(url, query, params, source)
    else:
        yield from _sqlalchemy(url, query, params, source)


def _pg_type(value: Any) -> str:
    if isinstance(value, datetime):
        return "timestamptz" if value.tzinfo else "timestamp"
    if isinstance(value, date):
        return "date"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    return "text"


def session_bound(query: str, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Move bind values into session settings, so the query itself takes no parameters.

    PostgreSQL streams only parameter-less statements (COPY). The values travel as settings in
    the connection's startup packet (`-c mlops.start=...`) and are read back typed with
    `current_setting(...)::type`: never formatted into the SQL text.

    Returns:
        (the rewritten query, {setting name: value as text}).
    """
    settings: dict[str, str] = {}

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise SourceError(f"query uses :{name}, which is not a bound parameter ({sorted(params)})")
        value = params[name]
        settings[f"mlops.{name}"] = value.isoformat() if hasattr(value, "isoformat") else str(value)
        return f"current_setting('mlops.{name}')::{_pg_type(value)}"

    # COPY (query) wraps the text: a trailing `;` would end the COPY early.
    rewritten = _PARAM.sub(setting, query.strip().rstrip(";"))
    return rewritten, settings


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _option_value(value: str) -> str:
    """A value inside libpq `options`, where spaces separate switches: escape them (and backslashes)."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def libpq_dsn(url: str, settings: dict[str, str]) -> str:
    """A libpq keyword/value connection string for the URL, carrying `settings` as `-c` options.

    URL query parameters (sslmode, options such as search_path, ...) are kept.
    """
    parsed = make_url(url)
    fields: dict[str, Any] = {"host": parsed.host, "port": parsed.port, "user": parsed.username,
                              "password": parsed.password, "dbname": parsed.database}
    fields |= {k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()}
    extra = [f"-c {name}={_option_value(value)}" for name, value in settings.items()]
    fields["options"] = " ".join(filter(None, [fields.get("options"), *extra])) or None
    return " ".join(f"{key}={_libpq_quote(str(value))}" for key, value in fields.items() if value is not None)


def _scanner_extension(duckdb_version: str) -> Path:
    """The postgres scanner that requirements.txt installs (DuckDB verifies its signature on load)."""
    spec = importlib.util.find_spec("duckdb_extension_postgres_scanner")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("PostgreSQL sources need the duckdb-extension-postgres-scanner package "
                          "(pip install -r requirements.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / "extensions" / f"v{duckdb_version}"
    return path / "postgres_scanner.duckdb_extension"


def _postgres(url: str, query: str, params: dict[str, Any], source: str) -> Iterator[pa.RecordBatch]:
    import duckdb

    sql, settings = session_bound(query, params)
    password = make_url(url).password

    def scrub(exc: BaseException) -> str:
        # DuckDB may quote the connection string back: never let the password through.
        text = str(exc)
        for form in filter(None, {password, _libpq_quote(password or "")[1:-1]}):
            text = text.replace(form, "***")
        return text

    # One thread: the scan is a single stream, and the second core belongs to the Parquet writer.
    # No network: extensions load only from the installed package, never auto-installed.
    con = duckdb.connect(config={"threads": 1, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    try:
        con.execute("SET TimeZone = 'UTC'")  # timestamptz arrives as an instant in UTC
        con.execute("LOAD '" + str(_scanner_extension(duckdb.__version__)).replace("'", "''") + "'")
        dsn = libpq_dsn(url, settings).replace("'", "''")
        try:
            con.execute(f"ATTACH '{dsn}' AS source (TYPE postgres, READ_ONLY)")
        except duckdb.Error as exc:
            raise SourceError(f"source {source!r}: cannot connect to {redact(url)}: {scrub(exc)}") from None
        try:
            reader = con.execute("SELECT * FROM postgres_query('source', ?)", [sql]).to_arrow_reader(BATCH_ROWS)
            # Strip driver metadata so schemas compare equal across databases.
            schema = pa.schema([pa.field(f.name, f.type) for f in reader.schema])
            empty = True
            for batch in reader:
                empty = False
                yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
            if empty:
                yield pa.RecordBatch.from_pylist([], schema=schema)
        except (duckdb.Error, pa.ArrowException) as exc:
            raise SourceError(f"source {source!r}: query failed on {redact(url)}: {scrub(exc)}") from None
    finally:
        con.close()


def _sqlalchemy(url: str, query: str, params: dict[str, Any], source: str) -> Iterator[pa.RecordBatch]:
    statement = sa.text(query).bindparams(*(
        sa.bindparam(name, type_=sa.DateTime()) for name, value in params.items()
        if hasattr(value, "isoformat")))
    engine = sa.create_engine(url)
    try:
        with engine.connect().execution_options(stream_results=True, yield_per=CHUNK_ROWS) as conn:
            result = conn.execute(statement, params)
            names = list(result.keys())
            empty = True
            for rows in result.partitions(CHUNK_ROWS):
                empty = False
                columns = list(zip(*rows, strict=True))
                yield pa.RecordBatch.from_arrays([pa.array(c) for c in columns], names=names)
            if empty:  # no rows: the column names still describe the snapshot
                yield pa.RecordBatch.from_arrays([pa.array([], pa.null()) for _ in names], names=names)
    except sa.exc.OperationalError as exc:
        raise SourceError(f"source {source!r}: cannot query {redact(url)}: {exc.orig}") from exc
    except sa.exc.DBAPIError as exc:
        raise SourceError(f"source {source!r}: query failed on {redact(url)}: {exc.orig}") from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SourceError(f"source {source!r}: a column mixes value types: {exc}") from exc
    finally:
        engine.dispose()
