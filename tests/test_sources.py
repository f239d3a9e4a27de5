"""Airflow connection URIs become the right SQLAlchemy URLs; passwords never reach messages."""

from __future__ import annotations

import pytest

from tasks.sources import SourceError, redact, sqlalchemy_url, url_from_uri


@pytest.mark.parametrize(("uri", "url"), [
    ("sqlite:////tmp/x/flights.db", "sqlite:////tmp/x/flights.db"),
    ("postgres://root@127.0.0.1:5432/test", "postgresql+psycopg2://root@127.0.0.1:5432/test"),
    ("mysql://root@127.0.0.1:3306/test", "mysql+pymysql://root@127.0.0.1:3306/test"),
    ("postgresql://u:p%40ss@db/x", "postgresql+psycopg2://u:p%40ss@db/x"),
])
def test_connection_uris_map_to_sqlalchemy_urls(uri, url):
    assert url_from_uri(uri) == url


def test_airflow_sqlite_connection_fields_map_to_an_absolute_path():
    # Airflow parses sqlite:////abs/db into schema="/abs/db" and an empty host.
    assert sqlalchemy_url("sqlite", host="", schema="/abs/flights.db") == "sqlite:////abs/flights.db"


def test_unsupported_connection_type_is_named():
    with pytest.raises(SourceError, match="oracle"):
        sqlalchemy_url("oracle", host="h")


def test_redact_hides_the_password():
    assert redact("postgresql+psycopg2://u:secret@h/db") == "postgresql+psycopg2://u:***@h/db"
