"""Rows of a parameterised SQL query as a stream of Arrow record batches.

PostgreSQL goes through ADBC (libpq's binary protocol straight into Arrow, no Python objects per
value); other databases through a SQLAlchemy server-side cursor, converted column by column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tasks.sources import SourceError, redact

# Rows per batch from a row-based driver: bounds the Python objects alive at once (see make bench).
CHUNK_ROWS = 20_000
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


def session_bound(query: str, params: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """Move bind values into session settings, so the query itself takes no parameters.

    PostgreSQL streams only parameter-less statements (COPY); a parameterised one is fetched
    whole into client memory. The values still travel as bound parameters of `set_config`
    and are read back typed with `current_setting(...)::type` — never formatted into SQL.

    Returns:
        (statement that sets the values, the rewritten query, the values in order).
    """
    names: list[str] = []

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise SourceError(f"query uses :{name}, which is not a bound parameter ({sorted(params)})")
        if name not in names:
            names.append(name)
        return f"current_setting('mlops.{name}')::{_pg_type(params[name])}"

    rewritten = _PARAM.sub(setting, query)
    setter = "SELECT " + ", ".join(f"set_config('mlops.{n}', ${i}, false)" for i, n in enumerate(names, 1))
    values = [params[n].isoformat() if hasattr(params[n], "isoformat") else str(params[n]) for n in names]
    return setter, rewritten, values


def _libpq_uri(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _postgres(url: str, query: str, params: dict[str, Any], source: str) -> Iterator[pa.RecordBatch]:
    import adbc_driver_manager.dbapi as dbapi
    import adbc_driver_postgresql.dbapi as adbc_pg

    setter, sql, args = session_bound(query, params)
    try:
        conn = adbc_pg.connect(_libpq_uri(url))
    except dbapi.Error as exc:
        raise SourceError(f"source {source!r}: cannot connect to {redact(url)}: {exc}") from exc
    try:
        cursor = conn.cursor()
        try:
            if args:
                cursor.execute(setter, parameters=args)
                cursor.fetchall()
            cursor.execute(sql)
            reader = cursor.fetch_record_batch()
            # Strip driver metadata so schemas compare equal across databases.
            schema = pa.schema([pa.field(f.name, f.type) for f in reader.schema])
            empty = True
            for batch in reader:
                empty = False
                yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
            if empty:
                yield pa.RecordBatch.from_pylist([], schema=schema)
        except dbapi.Error as exc:
            raise SourceError(f"source {source!r}: query failed on {redact(url)}: {exc}") from exc
        finally:
            cursor.close()
    finally:
        conn.close()


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
