"""Data checks as plain functions: they return numbers, the caller decides pass or fail.
They read partitions in bounded batches and never keep or return a PII value outside
the check's own scratch database."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

Tables = Callable[[], Iterable[pa.Table]]
# Columns the pipeline itself writes: they hold no source values.
GENERATED_COLUMNS = {"_run_id", "_pipeline_version", "_processed_at", "_pseudonym_key_id"}


def null_rates(stats: dict) -> dict[str, float]:
    """Per column: the share of null values, from a destination's ``partition_stats``."""
    rows = stats["rows"]
    return {c: (n / rows if rows else 0.0) for c, n in stats["nulls"].items()}


def _as_text(table: pa.Table, columns: Iterable[str]) -> pa.Table:
    arrays, names = [], []
    for name in columns:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        arrays.append(column if pa.types.is_string(column.type) else pc.cast(column, pa.string()))
        names.append(name)
    return pa.table(arrays, names=names)


MIN_TEXT_MATCH = 4  # shorter raw values are not looked for in free text (too common)


def pii_leaks(
    raw: Tables,
    pii_columns: Iterable[str],
    downstream: Mapping[str, Tables],
    texts: Mapping[str, Callable[[], Iterable[str]]] | None = None,
    memory_limit: str = "256MB",
) -> dict[str, int]:
    """How many values of each downstream text column, as ``label.column``, are raw PII
    values, and how many distinct raw PII values appear in each free text source
    (``texts``: logs, metadata), as ``label``: counts only, never values.

    The distinct raw values and each downstream dataset go into a scratch DuckDB
    (bounded by ``memory_limit``, spilling to a private temporary directory beyond it,
    deleted afterwards); one join per column counts. In free text, a raw value counts
    when it appears between word boundaries and has at least MIN_TEXT_MATCH characters.
    """
    pii_columns = list(pii_columns)
    with tempfile.TemporaryDirectory(prefix="secure-etl-leaks-") as scratch:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": scratch})
        try:
            con.execute("CREATE TEMP TABLE pii (v VARCHAR)")
            for table in raw():
                present = [c for c in pii_columns if c in table.column_names]
                if not present:
                    continue
                chunk = con.from_arrow(_as_text(table, present))
                for column in present:
                    # DuckDB quotes the name itself: no column name is ever spliced into SQL.
                    value = duckdb.ColumnExpression(column)
                    chunk.filter(value.isnotnull()).select(value.alias("v")).insert_into("pii")
            con.execute("CREATE TEMP TABLE pii_set AS SELECT DISTINCT v FROM pii")
            con.execute("DROP TABLE pii")
            leaks: dict[str, int] = {}
            for label, tables in downstream.items():
                leaks.update(_scan(con, label, tables))
            for label, text in (texts or {}).items():
                hits = _scan_text(con, text())
                if hits:
                    leaks[label] = hits
        finally:
            con.close()
    return leaks


def _scan(con: duckdb.DuckDBPyConnection, label: str, tables: Tables) -> dict[str, int]:
    columns: list[str] | None = None
    for table in tables():
        if columns is None:
            columns = [
                f.name
                for f in table.schema
                if f.name not in GENERATED_COLUMNS
                and (
                    pa.types.is_string(f.type)
                    or pa.types.is_large_string(f.type)
                    or pa.types.is_dictionary(f.type)
                )
            ]
            if not columns:
                return {}
            definition = ", ".join(f'"c{i}" VARCHAR' for i in range(len(columns)))
            con.execute(f"CREATE OR REPLACE TEMP TABLE downstream ({definition})")
        chunk = _as_text(table, columns)  # noqa: F841 - read by DuckDB by name
        con.execute("INSERT INTO downstream SELECT * FROM chunk")
    leaks = {}
    for i, name in enumerate(columns or []):
        hits = con.execute(
            f'SELECT count(*) FROM downstream d SEMI JOIN pii_set p ON d."c{i}" = p.v'  # noqa: S608
        ).fetchone()[0]
        if hits:
            leaks[f"{label}.{name}"] = hits
    return leaks


def _scan_text(con: duckdb.DuckDBPyConnection, texts: Iterable[str]) -> int:
    """Distinct raw PII values found in ``texts``: every substring that starts and ends
    at a word boundary and has the length of some raw value is a candidate; one join
    with the raw values counts the candidates that are PII."""
    lengths = sorted(
        n
        for (n,) in con.execute(
            f"SELECT DISTINCT length(v) FROM pii_set WHERE length(v) >= {MIN_TEXT_MATCH}"  # noqa: S608
        ).fetchall()
    )
    if not lengths:
        return 0
    con.execute("CREATE OR REPLACE TEMP TABLE candidates (v VARCHAR)")
    for text in texts:
        found = _candidates(text, lengths)
        if found:
            chunk = pa.table({"v": pa.array(sorted(found), pa.string())})  # noqa: F841
            con.execute("INSERT INTO candidates SELECT v FROM chunk")
    return con.execute(
        "SELECT count(DISTINCT c.v) FROM candidates c SEMI JOIN pii_set p ON c.v = p.v"
    ).fetchone()[0]


def _candidates(text: str, lengths: list[int]) -> set[str]:
    size = len(text)
    starts = [i for i in range(size) if i == 0 or not text[i - 1].isalnum()]
    ends = {j for j in range(1, size + 1) if j == size or not text[j].isalnum()}
    return {text[i : i + n] for i in starts for n in lengths if i + n in ends}
