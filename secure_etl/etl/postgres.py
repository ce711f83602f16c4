"""PostgreSQL as a source and a destination, over verified TLS with client certificates.

Names are validated and quoted with ``psycopg.sql``; values are always bound. Extraction
streams through COPY in bounded chunks; a partition is loaded by COPY into a temporary
table, then swapped in (delete the partition, insert) in one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import psycopg
import pyarrow as pa
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


def _select(schema: str, table: str, columns: Sequence[str] | None, time_column: str):
    cols = (
        sql.SQL(", ").join(checked_name(c, "column") for c in columns) if columns else sql.SQL("*")
    )
    return sql.SQL("SELECT {cols} FROM {schema}.{table} WHERE {tc} >= %s AND {tc} < %s").format(
        cols=cols,
        schema=checked_name(schema, "schema"),
        table=checked_name(table, "table"),
        tc=checked_name(time_column, "column"),
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
) -> Iterator[pd.DataFrame]:
    """Rows with ``start <= time_column < end`` in chunks of at most ``chunk_rows``,
    read through a server-side cursor so memory stays bounded."""
    query = _select(schema, table, columns, time_column)
    with endpoint.connect() as conn, conn.transaction():
        with conn.cursor(name="secure_etl_extract") as cursor:
            cursor.itersize = chunk_rows
            cursor.execute(query, (start, end))
            names = [d.name for d in cursor.description]
            # Types come from the table, not from each chunk's values: every chunk of a
            # partition then has the same schema.
            dtypes = {d.name: _dtype_for(d) for d in cursor.description}
            empty = True
            while rows := cursor.fetchmany(chunk_rows):
                empty = False
                yield _typed(pd.DataFrame.from_records(rows, columns=names), dtypes)
            if empty:  # an hour without rows is still a partition, with its columns
                yield _typed(pd.DataFrame(columns=names), dtypes)


# PostgreSQL type OIDs -> pandas dtypes; anything else travels as text.
_OID_DTYPES = {
    16: "boolean",
    20: "Int64",
    21: "Int64",
    23: "Int64",
    700: "float64",
    701: "float64",
    25: "string",
    1042: "string",
    1043: "string",
    2950: "string",
    1114: "datetime64[us]",
    1184: "datetime64[us, UTC]",
}


def _dtype_for(column) -> object:
    if column.type_code == 1700:  # numeric: exact, with the declared precision if any
        if column.precision is not None and column.scale is not None:
            return pd.ArrowDtype(pa.decimal128(column.precision, column.scale))
        return "string"
    if column.type_code == 1082:
        return pd.ArrowDtype(pa.date32())
    return _OID_DTYPES.get(column.type_code, "string")


def _typed(frame: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    for name, dtype in dtypes.items():
        if dtype == "string":
            frame[name] = frame[name].map(lambda v: v if v is None else str(v))
        if isinstance(dtype, pd.ArrowDtype):
            frame[name] = pd.array(frame[name].tolist(), dtype=dtype)
        else:
            frame[name] = frame[name].astype(dtype)
    return frame


_PG_TYPES = {
    "Int64": "bigint",
    "int64": "bigint",
    "float64": "double precision",
    "bool": "boolean",
    "boolean": "boolean",
    "string": "text",
    "object": "text",
}


def _pg_type(dtype) -> str:
    text = str(dtype)
    if text.startswith("decimal128("):
        precision, scale = text[len("decimal128(") :].split(")")[0].split(",")
        return f"numeric({int(precision)},{int(scale)})"
    if text.startswith("date32"):
        return "date"
    if text.startswith("datetime64"):
        return "timestamptz" if "UTC" in text or "," in text else "timestamp"
    return _PG_TYPES.get(text, "text")


def load_partition(
    endpoint: PgEndpoint,
    schema: str,
    table: str,
    partition_column: str,
    partition: str,
    frame: pd.DataFrame,
) -> int:
    """Replace exactly ``partition`` of ``schema.table`` by ``frame`` in one transaction."""
    target = sql.SQL("{}.{}").format(checked_name(schema, "schema"), checked_name(table, "table"))
    part = checked_name(partition_column, "column")
    staged = frame.assign(**{partition_column: partition})
    columns = [checked_name(c, "column") for c in staged.columns]
    column_defs = sql.SQL(", ").join(
        sql.SQL("{} {}").format(name, sql.SQL(_pg_type(dtype)))
        for name, dtype in zip(columns, staged.dtypes, strict=True)
    )
    column_list = sql.SQL(", ").join(columns)
    with endpoint.connect() as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(target, column_defs))
        conn.execute(
            sql.SQL("CREATE TEMP TABLE secure_etl_stage (LIKE {}) ON COMMIT DROP").format(target)
        )
        copy_sql = sql.SQL("COPY secure_etl_stage ({}) FROM STDIN").format(column_list)
        with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for row in staged.itertuples(index=False, name=None):
                copy.write_row([None if pd.isna(v) else v for v in row])
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(target, part), (partition,))
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM secure_etl_stage").format(
                target, column_list, column_list
            )
        )
    return len(staged)


def read_partition(
    endpoint: PgEndpoint, schema: str, table: str, partition_column: str, partition: str
) -> pd.DataFrame:
    query = sql.SQL("SELECT * FROM {}.{} WHERE {} = %s").format(
        checked_name(schema, "schema"),
        checked_name(table, "table"),
        checked_name(partition_column, "column"),
    )
    with endpoint.connect() as conn, conn.cursor() as cursor:
        cursor.execute(query, (partition,))
        names = [d.name for d in cursor.description]
        frame = pd.DataFrame.from_records(cursor.fetchall(), columns=names)
    return frame.drop(columns=[partition_column])
