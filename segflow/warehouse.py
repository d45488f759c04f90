"""DuckDB access. One writer at a time: every connection is short-lived and closed (see DEVELOPERS notes)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import duckdb


@contextlib.contextmanager
def connect(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()
