"""Connections to source databases: Airflow-style connection URIs to SQLAlchemy URLs."""

from __future__ import annotations

import os
from urllib.parse import quote, unquote, urlsplit

from tasks import settings

# Airflow connection types -> SQLAlchemy dialect+driver that requirements.txt installs.
_DIALECTS = {
    "sqlite": "sqlite",
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


class SourceError(RuntimeError):
    """A source cannot be reached or read; the message names the source, never its password."""


def sqlalchemy_url(
    conn_type: str,
    host: str | None = None,
    schema: str | None = None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
) -> str:
    """Build a SQLAlchemy URL from the fields of an Airflow connection."""
    dialect = _DIALECTS.get(conn_type.lower())
    if dialect is None:
        raise SourceError(f"unsupported connection type {conn_type!r}; use one of {sorted(_DIALECTS)}")
    if dialect == "sqlite":
        # Airflow puts the file path in `schema` (URI path) and leaves host empty.
        path = unquote(schema or host or "")
        return f"sqlite:///{path}" if path else "sqlite://"
    auth = ""
    if login:
        auth = quote(login, safe="") + (f":{quote(password, safe='')}" if password else "") + "@"
    hostport = (host or "127.0.0.1") + (f":{port}" if port else "")
    return f"{dialect}://{auth}{hostport}/{schema or ''}"


def url_from_uri(uri: str) -> str:
    """Turn an Airflow connection URI (the form of `AIRFLOW_CONN_*`) into a SQLAlchemy URL."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        # sqlite:////abs/path.db -> path "//abs/path.db"; Airflow's own form keeps it URL-quoted.
        return sqlalchemy_url("sqlite", schema=unquote(parts.path)[1:] or None)
    return sqlalchemy_url(
        parts.scheme,
        host=parts.hostname,
        schema=parts.path.lstrip("/") or None,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        port=parts.port,
    )


def url_for_connection(conn_id: str) -> str:
    """The SQLAlchemy URL of connection `conn_id` from `AIRFLOW_CONN_<CONN_ID>` (plain-Python use)."""
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    uri = os.environ.get(var)
    if uri is None:
        if conn_id == "flights_db":
            uri = settings.flights_db_uri()
        else:
            raise SourceError(f"connection {conn_id!r} is not defined: set {var}")
    return url_from_uri(uri)


def redact(url: str) -> str:
    """A URL safe for logs and error messages: the password is replaced."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
