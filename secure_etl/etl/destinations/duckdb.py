"""The local warehouse: a DuckDB file; a partition is replaced in one transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from secure_etl.config import DuckDBDestination
from secure_etl.etl.connector import Runtime
from secure_etl.etl.storage import PARTITION_COLUMN
from secure_etl.identifiers import is_sql_name
from secure_etl.security.files import owner_only, private_dir


def _quoted(identifier: str) -> str:
    """A name checked against a strict pattern, then quoted; values are always bound as
    parameters, so this is the only text that goes into SQL."""
    if not is_sql_name(identifier):
        raise ValueError(f"invalid identifier {identifier!r}")
    return f'"{identifier}"'


@contextlib.contextmanager
def _connect_to_write(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse file, in a 0700 directory. DuckDB creates the file
    and its WAL with the umask's mode, so they are made 0600 once they exist."""
    path = Path(path)
    private_dir(path.parent)
    with duckdb.connect(str(path)) as con:
        owner_only(path)
        yield con
        owner_only(path.with_name(path.name + ".wal"))


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def load_partition(path: Path, table: str, partition: str, parquet: Path) -> int:
    """Replace exactly ``partition`` of ``table`` by the rows of the Parquet file
    ``parquet`` (DuckDB streams it); loading twice changes nothing."""
    name = _quoted(table)
    source = "read_parquet(?)"
    with _connect_to_write(path) as con:
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {name} AS SELECT *, ?::VARCHAR AS {PARTITION_COLUMN} "
            f"FROM {source} LIMIT 0",
            [partition, str(parquet)],
        )
        with _transaction(con):
            con.execute(f"DELETE FROM {name} WHERE {PARTITION_COLUMN} = ?", [partition])
            rows = con.execute(
                f"INSERT INTO {name} BY NAME SELECT *, ? AS {PARTITION_COLUMN} FROM {source}",
                [partition, str(parquet)],
            ).fetchone()[0]
    return rows


def load_partition_stream(
    path: Path,
    table: str,
    partition: str,
    batches: Iterator[pa.Table],
    schema: pa.Schema,
) -> int:
    """Replace exactly ``partition`` of ``table`` by ``batches``, read as a stream."""
    name = _quoted(table)
    reader = pa.RecordBatchReader.from_batches(schema, (b for t in batches for b in t.to_batches()))
    with _connect_to_write(path) as con:
        con.register("shape", schema.empty_table())
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {name} AS SELECT *, ?::VARCHAR AS {PARTITION_COLUMN} "
            "FROM shape",
            [partition],
        )
        con.register("incoming", reader)
        with _transaction(con):
            con.execute(f"DELETE FROM {name} WHERE {PARTITION_COLUMN} = ?", [partition])
            rows = con.execute(
                f"INSERT INTO {name} BY NAME SELECT *, ? AS {PARTITION_COLUMN} FROM incoming",
                [partition],
            ).fetchone()[0]
    return rows


def merge_batch(path: Path, table: str, batch_id: str, key_column: str, parquet: Path) -> int:
    """Upsert the rows of ``parquet`` by ``key_column`` in one transaction; they carry
    ``batch_id`` in the partition column."""
    name, key = _quoted(table), _quoted(key_column)
    with _connect_to_write(path) as con:
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {name} AS SELECT *, ?::VARCHAR AS {PARTITION_COLUMN} "
            "FROM read_parquet(?) LIMIT 0",
            [batch_id, str(parquet)],
        )
        with _transaction(con):
            con.execute(
                f"DELETE FROM {name} WHERE {key} IN (SELECT {key} FROM read_parquet(?))",
                [str(parquet)],
            )
            rows = con.execute(
                f"INSERT INTO {name} BY NAME SELECT *, ? AS {PARTITION_COLUMN} "
                "FROM read_parquet(?)",
                [batch_id, str(parquet)],
            ).fetchone()[0]
    return rows


def read_partition(path: Path, table: str, partition: str) -> pd.DataFrame:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            f"SELECT * EXCLUDE ({PARTITION_COLUMN}) FROM {_quoted(table)} "
            f"WHERE {PARTITION_COLUMN} = ?",
            [partition],
        ).df()


def partition_stats(path: Path, table: str, partition: str, key_column: str) -> dict:
    """Row count, nulls per column and rows whose key is taken, computed by DuckDB."""
    name = _quoted(table)
    with duckdb.connect(str(path), read_only=True) as con:
        columns = [
            row[0]
            for row in con.execute(f"DESCRIBE {name}").fetchall()
            if row[0] != PARTITION_COLUMN
        ]
        counts = ", ".join(f"count({_quoted(c)})" for c in columns)
        total, duplicates, *non_null = con.execute(
            f"SELECT count(*), count(*) - count(DISTINCT {_quoted(key_column)}), {counts} "
            f"FROM {name} WHERE {PARTITION_COLUMN} = ?",
            [partition],
        ).fetchone()
    return {
        "rows": total,
        "duplicate_keys": duplicates,
        "nulls": {c: total - n for c, n in zip(columns, non_null, strict=True)},
    }


def partition_chunks(
    path: Path, table: str, partition: str, columns: Sequence[str], chunk_rows: int = 100_000
) -> Iterator[pa.Table]:
    selected = ", ".join(_quoted(c) for c in columns)
    with duckdb.connect(str(path), read_only=True) as con:
        reader = con.sql(
            f"SELECT {selected} FROM {_quoted(table)} WHERE {PARTITION_COLUMN} = ?",
            params=[partition],
        ).to_arrow_reader(chunk_rows)
        for batch in reader:
            yield pa.Table.from_batches([batch])


def table_rows(path: Path, table: str) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {_quoted(table)}").fetchone()[0]


class DuckDBTable:
    """A table in a local DuckDB file (relative paths are under the state directory)."""

    needs_bigquery_client = False

    def __init__(self, config: DuckDBDestination, runtime: Runtime | None = None) -> None:
        self.config = config
        path = Path(config.path)
        state_dir = (runtime or Runtime()).state_dir
        self.path = path if path.is_absolute() or state_dir is None else state_dir / path
        self.table = config.table

    @property
    def description(self) -> str:
        return f"{self.path}:{self.table}"

    def describe(self) -> str:
        return self.description

    def known_columns(self) -> set[str] | None:
        return None

    def load(self, partition: str, hashed: Path) -> int:
        return load_partition(self.path, self.table, partition, hashed)

    def load_batches(self, partition: str, batches: Iterator[pa.Table], schema: pa.Schema) -> int:
        return load_partition_stream(self.path, self.table, partition, batches, schema)

    def stats(self, partition: str, key_column: str) -> dict:
        return partition_stats(self.path, self.table, partition, key_column)

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        return partition_chunks(self.path, self.table, partition, columns)

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        return merge_batch(self.path, self.table, batch_id, key_column, hashed)
