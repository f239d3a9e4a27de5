"""`python -m bench` (make bench): the SQLite benchmark, the PostgreSQL one (make bench-extract), then
training (make bench-train)."""

from __future__ import annotations

from bench import extract, sqlite, train

if __name__ == "__main__":
    sqlite.main()
    print()
    extract.main()
    print()
    train.main()
