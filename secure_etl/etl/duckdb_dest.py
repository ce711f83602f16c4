"""The local warehouse: a DuckDB file; a partition is replaced in one transaction."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd

PARTITION_COLUMN = "_partition"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _quoted(identifier: str) -> str:
    """A table name checked against a strict pattern, then quoted; values are always bound
    as parameters, so this is the only text that goes into SQL."""
    if not _IDENTIFIER.match(identifier):
        raise ValueError(f"invalid identifier {identifier!r}")
    return f'"{identifier}"'


def load_partition(path: Path, table: str, partition: str, frame: pd.DataFrame) -> int:
    """Replace exactly ``partition`` of ``table`` by ``frame``; loading twice changes nothing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    staged = frame.assign(**{PARTITION_COLUMN: partition})
    name = _quoted(table)
    with duckdb.connect(str(path)) as con:
        con.register("staged", staged)
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT * FROM staged LIMIT 0")
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"DELETE FROM {name} WHERE {PARTITION_COLUMN} = ?", [partition])
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM staged")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return len(staged)


def read_partition(path: Path, table: str, partition: str) -> pd.DataFrame:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            f"SELECT * EXCLUDE ({PARTITION_COLUMN}) FROM {_quoted(table)} "
            f"WHERE {PARTITION_COLUMN} = ?",
            [partition],
        ).df()


def table_rows(path: Path, table: str) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {_quoted(table)}").fetchone()[0]
