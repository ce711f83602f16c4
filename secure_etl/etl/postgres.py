"""PostgreSQL as a source and a destination, over verified TLS with client certificates.

Names are validated and quoted with ``psycopg.sql``; values are always bound. Rows move
in bulk through ADBC's PostgreSQL driver (libpq underneath, so ``sslmode=verify-full``
and the client certificate apply as with psycopg; binary COPY decoded to and from Arrow
in C++), in bounded chunks. Administration, DDL and statistics use psycopg.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import adbc_driver_postgresql.dbapi as adbc_dbapi
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

SAFE_SSLMODES = {"verify-full"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresError(Exception):
    """A refused or failed PostgreSQL connection or statement; says where."""


def checked_name(name: str, what: str) -> sql.Identifier:
    if not _NAME.match(name):
        raise ValueError(f"invalid {what} name {name!r}")
    return sql.Identifier(name)


@dataclass(frozen=True)
class PgEndpoint:
    host: str
    port: int
    dbname: str
    user: str
    sslmode: str = "verify-full"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout_s: int = 10

    def connect(self) -> psycopg.Connection:
        """Certificate files are read now, at connect time: a rotation needs no restart."""
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                dbname=self.dbname,
                user=self.user,
                sslmode=self.sslmode,
                sslrootcert=self.sslrootcert,
                sslcert=self.sslcert,
                sslkey=self.sslkey,
                connect_timeout=self.connect_timeout_s,
            )
        except psycopg.OperationalError as err:
            raise PostgresError(
                f"postgres {self.user}@{self.host}:{self.port}/{self.dbname}: "
                f"{str(err).strip().splitlines()[-1]}"
            ) from None

    def adbc(self) -> adbc_dbapi.Connection:
        """An ADBC connection (libpq underneath: the same TLS parameters, files read now)."""
        params = {
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
            "connect_timeout": str(self.connect_timeout_s),
        }
        query = urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote)
        uri = (
            f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/"
            f"{quote(self.dbname, safe='')}?{query}"
        )
        try:
            return adbc_dbapi.connect(uri)
        except adbc_dbapi.Error as err:
            raise PostgresError(
                f"postgres {self.user}@{self.host}:{self.port}/{self.dbname}: "
                f"{str(err).strip().splitlines()[0]}"
            ) from None


def _select(schema: str, table: str, columns: Sequence[str] | None, where: sql.Composable):
    cols = (
        sql.SQL(", ").join(checked_name(c, "column") for c in columns) if columns else sql.SQL("*")
    )
    return sql.SQL("SELECT {cols} FROM {schema}.{table} WHERE {where}").format(
        cols=cols,
        schema=checked_name(schema, "schema"),
        table=checked_name(table, "table"),
        where=where,
    )


def extract_range(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    time_column: str,
    start,
    end,
    columns: Sequence[str] | None = None,
    chunk_rows: int = 100_000,
) -> Iterator[pa.Table]:
    """Rows with ``start <= time_column < end`` as Arrow tables of at most ``chunk_rows``."""
    tc = checked_name(time_column, "column")
    where = sql.SQL("{tc} >= {start} AND {tc} < {end}").format(
        tc=tc, start=sql.Literal(start), end=sql.Literal(end)
    )
    yield from query_tables(endpoint, _select(schema, table, columns, where), chunk_rows)


def extract_since(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    cursor_column: str,
    since,
    columns: Sequence[str] | None = None,
    chunk_rows: int = 100_000,
) -> Iterator[pa.Table]:
    """Rows with ``cursor_column >= since`` (every row if ``since`` is None)."""
    where = (
        sql.SQL("{} >= {}").format(checked_name(cursor_column, "column"), sql.Literal(since))
        if since is not None
        else sql.SQL("TRUE")
    )
    yield from query_tables(endpoint, _select(schema, table, columns, where), chunk_rows)


def query_tables(
    endpoint: PgEndpoint, query: sql.Composable, chunk_rows: int = 100_000
) -> Iterator[pa.Table]:
    """Stream ``query`` as Arrow tables of at most ``chunk_rows`` rows, through ADBC
    (binary COPY, decoded to Arrow in C++): memory stays bounded by a chunk, whatever the
    table's size. Values go into ``query`` as ``sql.Literal`` (quoted by psycopg), not as
    parameters: with parameters the driver cannot use COPY and holds the whole result in
    memory. An empty result is one empty table with the result's columns."""
    with endpoint.adbc() as conn, conn.cursor() as cursor:
        # Batches of about 4 MiB from the driver (its default, 16 MiB, costs memory and
        # no speed).
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": "4194304"})
        cursor.execute(query.as_string())
        reader = cursor.fetch_record_batch()
        schema = pa.schema([_arrow_field(f) for f in reader.schema])
        pending, rows = [], 0
        for batch in reader:
            pending.append(_normalised(batch, schema))
            rows += batch.num_rows
            while rows >= chunk_rows:
                table = pa.Table.from_batches(pending, schema)
                yield table.slice(0, chunk_rows).combine_chunks()
                rest = table.slice(chunk_rows)
                pending, rows = rest.to_batches(), rest.num_rows
        if rows or not pending:
            yield pa.Table.from_batches(pending, schema).combine_chunks()


def _arrow_field(field: pa.Field) -> pa.Field:
    """Plain Arrow types for what the driver hands over as PostgreSQL extension types:
    numeric(p, s) becomes decimal128(p, s), anything else opaque becomes text."""
    kind = field.type
    if not isinstance(kind, pa.ExtensionType):
        return pa.field(field.name, kind)
    meta = field.metadata or {}
    typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1"))
    if meta.get(b"POSTGRESQL:type") == b"numeric" and typmod >= 4:
        precision, scale = (typmod - 4) >> 16, (typmod - 4) & 0xFFFF
        if precision <= 38:
            return pa.field(field.name, pa.decimal128(precision, scale))
    return pa.field(field.name, pa.string())


def _normalised(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        if isinstance(column.type, pa.ExtensionType):
            column = column.storage
        columns.append(column if column.type == field.type else pc.cast(column, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


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
    yield from query_tables(endpoint, _select(schema, table, columns, where), chunk_rows)
