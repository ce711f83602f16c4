"""PostgreSQL as a source, over verified TLS with a client certificate (see
``secure_etl.security.postgres_tls``).

Names are validated and quoted with ``psycopg.sql``; values are always bound. Rows move
in bulk through ADBC's PostgreSQL driver (libpq underneath, so ``sslmode=verify-full``
and the client certificate apply as with psycopg; binary COPY decoded to and from Arrow
in C++), in bounded chunks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from secure_etl.config import PostgresSource, _PostgresConnection
from secure_etl.etl.connector import ClientCertificate, Runtime
from secure_etl.identifiers import is_sql_name
from secure_etl.security.postgres_tls import PgEndpoint


def checked_name(name: str, what: str) -> sql.Identifier:
    if not is_sql_name(name):
        raise ValueError(f"invalid {what} name {name!r}")
    return sql.Identifier(name)


def select(schema: str, table: str, columns: Sequence[str] | None, where: sql.Composable):
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
    yield from query_tables(endpoint, select(schema, table, columns, where), chunk_rows)


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
    yield from query_tables(endpoint, select(schema, table, columns, where), chunk_rows)


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
    # BaseExtensionType: the driver's types are C++ opaque types, not Python-defined ones.
    if not isinstance(kind, pa.BaseExtensionType):
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
        if isinstance(column.type, pa.BaseExtensionType):
            column = column.storage
        columns.append(column if column.type == field.type else pc.cast(column, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def pg_endpoint(config: _PostgresConnection, tls: ClientCertificate) -> PgEndpoint:
    """The endpoint of a postgres source or destination, with the pipeline's certificate."""
    return PgEndpoint(
        host=config.host,
        port=config.port,
        dbname=config.dbname,
        user=config.user,
        sslmode=config.sslmode,
        sslrootcert=config.ca_bundle or tls.ca_bundle,
        sslcert=str(tls.fullchain_path),
        sslkey=str(tls.privkey_path),
        min_tls=config.min_tls,
    )


class PostgresReader:
    """A postgres table read by hour (``time_column``) or past a cursor (``incremental``)."""

    pii_columns: tuple[str, ...] = ()

    def __init__(self, config: PostgresSource, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime()

    def describe(self) -> str:
        c = self.config
        return f"postgres://{c.host}:{c.port}/{c.dbname}/{c.table}"

    def known_columns(self) -> set[str] | None:
        return self.config.known_columns()

    def _endpoint(self) -> PgEndpoint:
        return pg_endpoint(self.config, self.runtime.client_tls(self.describe()))

    def chunks(self, partition: str) -> Iterator[pa.Table]:
        c = self.config
        start, end = self.runtime.partition_window(partition)
        yield from extract_range(
            self._endpoint(),
            c.db_schema,
            c.table,
            c.time_column,
            start,
            end,
            c.selected_columns(),
            c.chunk_rows,
        )

    def chunks_since(self, since: dt.datetime | None) -> Iterator[pa.Table]:
        c = self.config
        if c.incremental is None:
            raise ValueError(f"{self.describe()}: the source is not incremental")
        yield from extract_since(
            self._endpoint(),
            c.db_schema,
            c.table,
            c.incremental.cursor_column,
            since,
            c.selected_columns(),
            c.chunk_rows,
        )
