"""Rows of a parameterised SQL query as a stream of Arrow record batches.

PostgreSQL goes through ADBC (libpq's binary protocol straight into Arrow, no Python objects per
value); other databases through a SQLAlchemy server-side cursor, converted column by column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tasks.sources import SourceError, redact

CHUNK_ROWS = 50_000
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


def positional(query: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """`:start`/`:end` -> `$1`/`$2` (PostgreSQL wire protocol), in order of first use."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise SourceError(f"query uses :{name}, which is not a bound parameter ({sorted(params)})")
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PARAM.sub(number, query), [params[n] for n in order]


def _libpq_uri(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _postgres(url: str, query: str, params: dict[str, Any], source: str) -> Iterator[pa.RecordBatch]:
    import adbc_driver_manager.dbapi as dbapi
    import adbc_driver_postgresql.dbapi as adbc_pg

    sql, args = positional(query, params)
    try:
        conn = adbc_pg.connect(_libpq_uri(url))
    except dbapi.Error as exc:
        raise SourceError(f"source {source!r}: cannot connect to {redact(url)}: {exc}") from exc
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, parameters=args)
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
