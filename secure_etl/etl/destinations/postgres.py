"""PostgreSQL as a destination, over verified TLS with a client certificate: a partition
is replaced in one transaction, rows stream in by binary COPY (ADBC), and the checks'
statistics are computed by the server. Names are validated and quoted with
``psycopg.sql``; DDL and statistics use psycopg."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
from psycopg import sql

from secure_etl.config import PostgresDestination
from secure_etl.etl import storage
from secure_etl.etl.connector import Runtime
from secure_etl.etl.sources.postgres import checked_name, pg_endpoint, query_tables, select
from secure_etl.etl.storage import PARTITION_COLUMN
from secure_etl.security.postgres_tls import PgEndpoint


def _pg_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_decimal(arrow_type):
        return f"numeric({int(arrow_type.precision)},{int(arrow_type.scale)})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    if pa.types.is_dictionary(arrow_type):
        return _pg_type(arrow_type.value_type)
    for test, name in (
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_int16, "smallint"),
        (pa.types.is_int32, "integer"),
        (pa.types.is_integer, "bigint"),
        (pa.types.is_float32, "real"),
        (pa.types.is_floating, "double precision"),
        (pa.types.is_date, "date"),
    ):
        if test(arrow_type):
            return name
    return "text"


def _prepare_table(
    endpoint: PgEndpoint,
    target: sql.Composable,
    table: str,
    arrow_schema: pa.Schema,
    indexed: Sequence[str],
) -> None:
    """Create the table (typed from the Arrow schema, plus the partition column, the first
    of ``indexed``) and its indexes if they do not exist yet."""
    partition_column = indexed[0]
    column_defs = sql.SQL(", ").join(
        sql.SQL("{} {}").format(checked_name(field.name, "column"), sql.SQL(_pg_type(field.type)))
        for field in arrow_schema
    )
    with endpoint.connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, {} text NOT NULL)").format(
                target, column_defs, checked_name(partition_column, "column")
            )
        )
        for column in indexed:
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    checked_name(f"{table}_{column}_idx"[:63], "index"),
                    target,
                    checked_name(column, "column"),
                )
            )


def _stamped(
    batches: Iterable[pa.RecordBatch | pa.Table], schema: pa.Schema, partition: str
) -> pa.RecordBatchReader:
    """The batches with the partition column appended, as a stream."""

    def stamp() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for piece in batch.to_batches() if isinstance(batch, pa.Table) else [batch]:
                constant = pa.array([partition] * piece.num_rows, pa.string())
                yield pa.RecordBatch.from_arrays([*piece.columns, constant], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, stamp())


def load_partition(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    partition_column: str,
    partition: str,
    batches: Iterable[pa.RecordBatch | pa.Table],
    arrow_schema: pa.Schema,
) -> int:
    """Replace exactly ``partition`` of ``schema.table`` by ``batches`` in one transaction
    (delete the partition, stream the new rows in by binary COPY, commit): readers see
    the old partition or the new one, never a mix. Memory stays bounded by one batch."""
    target = sql.SQL("{}.{}").format(checked_name(schema, "schema"), checked_name(table, "table"))
    _prepare_table(endpoint, target, table, arrow_schema, [partition_column])
    stamped = _stamped(
        batches, arrow_schema.append(pa.field(partition_column, pa.string())), partition
    )
    with endpoint.adbc() as conn, conn.cursor() as cursor:
        delete = sql.SQL("DELETE FROM {} WHERE {} = {}").format(
            target, checked_name(partition_column, "column"), sql.Literal(partition)
        )
        cursor.execute(delete.as_string())
        rows = cursor.adbc_ingest(table, stamped, mode="append", db_schema_name=schema)
        conn.commit()
    return rows


def merge_batch(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    partition_column: str,
    batch_id: str,
    key_column: str,
    batches: Iterable[pa.RecordBatch | pa.Table],
    arrow_schema: pa.Schema,
) -> int:
    """Upsert ``batches`` by ``key_column`` in one transaction: into a temporary table by
    binary COPY, delete the rows whose key comes again, insert. The rows of this batch
    carry ``batch_id`` in the partition column."""
    target = sql.SQL("{}.{}").format(checked_name(schema, "schema"), checked_name(table, "table"))
    _prepare_table(endpoint, target, table, arrow_schema, [partition_column, key_column])
    full = arrow_schema.append(pa.field(partition_column, pa.string()))
    columns = sql.SQL(", ").join(checked_name(name, "column") for name in full.names)
    key = checked_name(key_column, "column")
    with endpoint.adbc() as conn, conn.cursor() as cursor:
        rows = cursor.adbc_ingest(
            "secure_etl_merge", _stamped(batches, full, batch_id), mode="create", temporary=True
        )
        statements = (
            sql.SQL("DELETE FROM {t} USING secure_etl_merge s WHERE {t}.{k} = s.{k}"),
            sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM secure_etl_merge"),
            sql.SQL("DROP TABLE secure_etl_merge"),
        )
        for statement in statements:
            cursor.execute(statement.format(t=target, k=key, c=columns).as_string())
        conn.commit()
    return rows


def partition_stats(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    partition_column: str,
    partition: str,
    key_column: str,
) -> dict:
    """Row count, non-null count per column and rows whose key is taken, computed by the
    server: nothing of the partition crosses the wire."""
    target = sql.SQL("{}.{}").format(checked_name(schema, "schema"), checked_name(table, "table"))
    with endpoint.connect() as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(target))
        names = [d.name for d in cursor.description if d.name != partition_column]
        counts = sql.SQL(", ").join(
            sql.SQL("count({})").format(checked_name(n, "column")) for n in names
        )
        cursor.execute(
            sql.SQL(
                "SELECT count(*), count(*) - count(DISTINCT {key}), {counts} FROM {t} "
                "WHERE {part} = %s"
            ).format(
                key=checked_name(key_column, "column"),
                counts=counts,
                t=target,
                part=checked_name(partition_column, "column"),
            ),
            (partition,),
        )
        total, duplicates, *non_null = cursor.fetchone()
    return {
        "rows": total,
        "duplicate_keys": duplicates,
        "nulls": {n: total - c for n, c in zip(names, non_null, strict=True)},
    }


def partition_chunks(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    partition_column: str,
    partition: str,
    columns: Sequence[str],
    chunk_rows: int = 100_000,
) -> Iterator[pa.Table]:
    where = sql.SQL("{} = {}").format(
        checked_name(partition_column, "column"), sql.Literal(partition)
    )
    yield from query_tables(endpoint, select(schema, table, columns, where), chunk_rows)


class PostgresTable:
    """A postgres table whose partitions are replaced, or merged into by key."""

    networked = True
    needs_bigquery_client = False

    def __init__(self, config: PostgresDestination, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime()

    @property
    def description(self) -> str:
        c = self.config
        return f"postgres {c.host}:{c.port}/{c.dbname} {c.db_schema}.{c.table}"

    def describe(self) -> str:
        return self.description

    @property
    def verifies_peer(self) -> bool:
        return self.config.sslmode == "verify-full"

    def known_columns(self) -> set[str] | None:
        return None

    @property
    def endpoint(self) -> PgEndpoint:
        return pg_endpoint(self.config, self.runtime.client_tls(self.description))

    def load(self, partition: str, hashed: Path) -> int:
        return self.load_batches(
            partition, storage.iter_partition(hashed), storage.partition_schema(hashed)
        )

    def load_batches(self, partition: str, batches: Iterator[pa.Table], schema: pa.Schema) -> int:
        c = self.config
        return load_partition(
            self.endpoint, c.db_schema, c.table, PARTITION_COLUMN, partition, batches, schema
        )

    def stats(self, partition: str, key_column: str) -> dict:
        c = self.config
        return partition_stats(
            self.endpoint, c.db_schema, c.table, PARTITION_COLUMN, partition, key_column
        )

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        c = self.config
        return partition_chunks(
            self.endpoint, c.db_schema, c.table, PARTITION_COLUMN, partition, columns
        )

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        c = self.config
        return merge_batch(
            self.endpoint,
            c.db_schema,
            c.table,
            PARTITION_COLUMN,
            batch_id,
            key_column,
            storage.iter_partition(hashed),
            storage.partition_schema(hashed),
        )
