"""MariaDB and MySQL as a source, over verified TLS with the pipeline's client certificate.

The server's certificate is verified against the configured roots and its name checked;
a server that offers no TLS is refused (PyMySQL >= 1.2 refuses rather than falling back
to plaintext when it is given an ``SSLContext``). Rows stream through an unbuffered
server-side cursor (``SSCursor``) into Arrow tables of at most ``chunk_rows``, typed from
the table's column metadata, so memory stays bounded by a chunk. Names are validated and
quoted (backticks doubled, MySQL's rule); values are always bound.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pymysql
import pymysql.cursors

from secure_etl.config import MariaDBSource
from secure_etl.etl.connector import Runtime
from secure_etl.identifiers import is_sql_name
from secure_etl.security import tls as tls_policy

_SIGNED = ((16, pa.int16()), (32, pa.int32()), (64, pa.int64()))
_NAME_LONGEST = 64  # MySQL's limit for a table; columns keep SqlName's 63
# The server writes to a client that is slow to read (a chunk being written out) for
# this long before it drops the connection (its default: 60 s).
_NET_WRITE_TIMEOUT_S = 3600


class MariaDBError(Exception):
    """A refused or failed MariaDB connection or statement; says where."""


def quoted_name(name: str, what: str) -> str:
    """``name`` as a MySQL identifier: validated, in backticks, inner backticks doubled."""
    if not is_sql_name(name, _NAME_LONGEST):
        raise ValueError(f"invalid {what} name {name!r}")
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class MariaDBEndpoint:
    host: str
    port: int
    database: str
    user: str
    ca_bundle: str
    cert: str | None = None
    key: str | None = None
    connect_timeout_s: int = 10
    min_tls: str | None = None  # None: the policy's default

    @property
    def where(self) -> str:
        return f"mariadb {self.user}@{self.host}:{self.port}/{self.database}"

    def tls_context(self) -> ssl.SSLContext:
        """Verify the server against ``ca_bundle`` and its name; present the client
        certificate. Files are read now, at connect time: a rotation needs no restart."""
        context = tls_policy.verifying_context(self.ca_bundle, self.min_tls)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context

    def connect(self) -> pymysql.connections.Connection:
        try:
            context = self.tls_context()
        except (OSError, ssl.SSLError) as err:
            raise MariaDBError(f"{self.where}: TLS files: {err}") from None
        try:
            conn = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                database=self.database,
                ssl=context,
                connect_timeout=self.connect_timeout_s,
                charset="utf8mb4",
                cursorclass=pymysql.cursors.SSCursor,
                init_command=(
                    f"SET time_zone = '+00:00', net_write_timeout = {_NET_WRITE_TIMEOUT_S}"
                ),
            )
        except pymysql.MySQLError as err:
            raise MariaDBError(f"{self.where}: {_reason(err)}") from None
        return conn


def _reason(err: pymysql.MySQLError) -> str:
    message = str(err.args[1] if len(err.args) > 1 else err)
    if err.args and err.args[0] == 1045:  # access denied
        message += " (does the account require a client certificate this one does not match?)"
    return message


def arrow_type(data_type: str, column_type: str, precision, scale) -> pa.DataType:
    """The Arrow type for a column of ``information_schema.COLUMNS``. Integers become the
    narrowest signed type of at least 16 bits that holds every value (warehouses have no
    unsigned or 8-bit integers; BIGINT UNSIGNED becomes DECIMAL(20, 0)). DATETIME is
    taken as UTC (the session's time zone is UTC, so TIMESTAMP reads back in UTC too)."""
    bits = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "bigint": 64}
    if data_type in bits:
        needed = bits[data_type] + ("unsigned" in column_type)
        if needed > 64:
            return pa.decimal128(20, 0)
        return next(kind for width, kind in _SIGNED if needed <= width)
    if data_type == "decimal" and precision is not None and precision <= 38:
        return pa.decimal128(int(precision), int(scale or 0))
    if data_type == "float":
        return pa.float32()
    if data_type == "double":
        return pa.float64()
    if data_type == "date":
        return pa.date32()
    if data_type == "datetime":
        return pa.timestamp("us")
    if data_type == "timestamp":
        return pa.timestamp("us", tz="UTC")
    if data_type == "time":
        return pa.duration("us")
    if data_type == "year":
        return pa.int16()
    if data_type in {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit"}:
        return pa.binary()
    return pa.string()  # char, varchar, text, enum, set, json, wider decimals, ...


def table_schema(
    cursor, database: str, table: str, columns: Sequence[str] | None, where: str
) -> pa.Schema:
    """The Arrow schema of ``columns`` (all, in table order, if None) from the server's
    column metadata; an unknown table or column is an error that names it."""
    cursor.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE "
        "FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    found = {
        row[0]: arrow_type(*(v.lower() if isinstance(v, str) else v for v in row[1:]))
        for row in cursor.fetchall()
    }
    if not found:
        raise MariaDBError(f"{where}: no table {table!r} (or no right to see its columns)")
    names = list(columns) if columns else list(found)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise MariaDBError(
            f"{where}: table {table!r} has no column {', '.join(unknown)} "
            f"(it has {', '.join(found)})"
        )
    return pa.schema([pa.field(name, found[name]) for name in names])


def extract_range(
    endpoint: MariaDBEndpoint,
    table: str,
    time_column: str,
    start: dt.datetime,
    end: dt.datetime,
    columns: Sequence[str] | None = None,
    chunk_rows: int = 10_000,
) -> Iterator[pa.Table]:
    """Rows with ``start <= time_column < end`` (UTC) as Arrow tables of at most
    ``chunk_rows`` rows. An empty result is one empty table with the columns."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    bounds = tuple(_utc_naive(t) for t in (start, end))
    conn, cursor = endpoint.connect(), None
    try:
        with conn.cursor(pymysql.cursors.Cursor) as meta:
            schema = table_schema(meta, endpoint.database, table, columns, endpoint.where)
        cursor = conn.cursor()  # SSCursor: rows come as they are read
        yielded = False
        try:
            cursor.execute(_select_range(table, schema.names, time_column), bounds)
            while rows := cursor.fetchmany(chunk_rows):
                yield _table(rows, schema)
                yielded = True
        except pymysql.MySQLError as err:
            raise MariaDBError(f"{endpoint.where}: {_reason(err)}") from None
        cursor.close()  # the result is read to its end: nothing left to drain
        cursor = None
        if not yielded:
            yield schema.empty_table()
    finally:
        if cursor is not None:
            _abandon(cursor)
        conn.close()


def _abandon(cursor: pymysql.cursors.SSCursor) -> None:
    """Stopped early (the consumer failed or stopped reading): mark the result done so
    that neither the cursor nor the result reads the rest of it when closed or collected;
    the connection is dropped next. PyMySQL has no public way to abandon an unbuffered
    result (its close reads every remaining row), so this is the one place that touches
    its private state."""
    result = getattr(cursor, "_result", None)
    if result is not None:
        result.unbuffered_active = False
    cursor.connection = None


def _select_range(table: str, columns: Sequence[str], time_column: str) -> str:
    """The SELECT of an hour; every name quoted, the bounds left to bind."""
    names = ", ".join(quoted_name(name, "column") for name in columns)
    tc = quoted_name(time_column, "column")
    return f"SELECT {names} FROM {quoted_name(table, 'table')} WHERE {tc} >= %s AND {tc} < %s"  # noqa: S608 (names quoted)


def _utc_naive(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _table(rows: Sequence[tuple], schema: pa.Schema) -> pa.Table:
    columns = zip(*rows, strict=True)
    arrays = [
        pa.array(values, type=field.type) if field.type != pa.string() else _strings(values)
        for values, field in zip(columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _strings(values: Sequence) -> pa.Array:
    """Text as it came; anything else the driver decoded (a wide DECIMAL) as its text."""
    return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], pa.string())


class MariaDBReader:
    """A MariaDB/MySQL table read by hour (``time_column``)."""

    pii_columns: tuple[str, ...] = ()

    def __init__(self, config: MariaDBSource, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime()

    def describe(self) -> str:
        c = self.config
        return f"mariadb://{c.host}:{c.port}/{c.database}/{c.table}"

    def known_columns(self) -> set[str] | None:
        return self.config.known_columns()

    def _endpoint(self) -> MariaDBEndpoint:
        c, tls = self.config, self.runtime.client_tls(self.describe())
        return MariaDBEndpoint(
            host=c.host,
            port=c.port,
            database=c.database,
            user=c.user,
            ca_bundle=c.ca_bundle or tls.ca_bundle,
            cert=str(tls.fullchain_path),
            key=str(tls.privkey_path),
            min_tls=c.min_tls,
        )

    def chunks(self, partition: str) -> Iterator[pa.Table]:
        c = self.config
        start, end = self.runtime.partition_window(partition)
        yield from extract_range(
            self._endpoint(), c.table, c.time_column, start, end, c.selected_columns(), c.chunk_rows
        )

    def chunks_since(self, since: dt.datetime | None) -> Iterator[pa.Table]:
        raise ValueError(f"{self.describe()}: a mariadb source is read by hourly partitions")
