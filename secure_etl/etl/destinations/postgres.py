"""PostgreSQL as a destination, over verified TLS with a client certificate: a partition
is replaced in one transaction, rows stream in by binary COPY (ADBC), and the checks'
statistics are computed by the server. Names are validated and quoted with
``psycopg.sql``; DDL and statistics use psycopg."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from psycopg import sql

from secure_etl.config import PostgresDestination
from secure_etl.etl import storage
from secure_etl.etl.connector import Runtime
from secure_etl.etl.sources.postgres import checked_name, pg_endpoint, query_tables, select
from secure_etl.etl.storage import PARTITION_COLUMN
from secure_etl.security.postgres_tls import PgEndpoint

# The column type for each Arrow type, matched to what ADBC's binary COPY writer sends
# for it: the writer picks the wire format from the Arrow type alone, so a column of
# another width fails ("insufficient data left in message") or reads the bytes wrong.
# int8 and uint8 go as int2, uint16 as int4, uint32 as int8.
_PG_TYPES = (
    (pa.types.is_boolean, "boolean"),
    (lambda t: pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t), "smallint"),
    (lambda t: pa.types.is_int32(t) or pa.types.is_uint16(t), "integer"),
    (lambda t: pa.types.is_int64(t) or pa.types.is_uint32(t), "bigint"),
    (pa.types.is_float32, "real"),
    (pa.types.is_float64, "double precision"),
    (pa.types.is_date32, "date"),
    (lambda t: pa.types.is_time32(t) or pa.types.is_time64(t), "time"),
    (pa.types.is_duration, "interval"),
    (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t),
        "text",
    ),
    (
        lambda t: (
            pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
        ),
        "bytea",
    ),
)


def _sent_as(arrow_type: pa.DataType) -> pa.DataType:
    """The Arrow type a column is sent to COPY as: the writer has no exact form for a
    uint64 (it would wrap past 2**63), a date64, a float16, a string view or a dictionary
    of anything but text, so those are cast first; every other type goes as it is."""
    if pa.types.is_dictionary(arrow_type):
        value = _sent_as(arrow_type.value_type)
        return arrow_type if pa.types.is_string(value) else value
    if pa.types.is_uint64(arrow_type):
        return pa.decimal128(20, 0)
    if pa.types.is_date64(arrow_type):
        return pa.date32()
    if pa.types.is_float16(arrow_type):
        return pa.float32()
    if pa.types.is_string_view(arrow_type):
        return pa.string()
    if pa.types.is_binary_view(arrow_type):
        return pa.binary()
    return arrow_type


def _pg_type(arrow_type: pa.DataType, column: str = "?") -> str:
    """The column type that takes ``arrow_type`` as ADBC's COPY sends it (after
    ``_sent_as``); a nested type has none and is refused, naming the column."""
    arrow_type = _sent_as(arrow_type)
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_decimal(arrow_type):
        return f"numeric({int(arrow_type.precision)},{int(arrow_type.scale)})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    for test, name in _PG_TYPES:
        if test(arrow_type):
            return name
    raise ValueError(
        f"column {column}: the PostgreSQL destination takes no {arrow_type} column; "
        "flatten it before the load (a nested value is not loaded as text)"
    )


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
        sql.SQL("{} {}").format(
            checked_name(field.name, "column"), sql.SQL(_pg_type(field.type, field.name))
        )
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
    """The batches with the partition column appended, as a stream, each column cast to
    the type COPY sends (``_sent_as``) where it differs."""
    sent = pa.schema([f.with_type(_sent_as(f.type)) for f in schema])

    stamps = pa.array([partition], pa.string())  # the column, sliced to each batch's rows

    def stamp() -> Iterator[pa.RecordBatch]:
        nonlocal stamps
        for batch in batches:
            for piece in batch.to_batches() if isinstance(batch, pa.Table) else [batch]:
                if len(stamps) < piece.num_rows:
                    stamps = stamps.take(np.zeros(piece.num_rows, dtype=np.int64))
                constant = stamps.slice(0, piece.num_rows)
                columns = [
                    c if c.type == f.type else c.cast(f.type)
                    for c, f in zip([*piece.columns, constant], sent, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=sent)

    return pa.RecordBatchReader.from_batches(sent, stamp())


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
