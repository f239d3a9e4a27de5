"""`python -m bench` (make bench): the SQLite benchmark, then the PostgreSQL one (make bench-extract)."""

from __future__ import annotations

from bench import extract, sqlite

if __name__ == "__main__":
    sqlite.main()
    print()
    extract.main()
