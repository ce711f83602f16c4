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


def pii_leaks(
    raw: Tables,
    pii_columns: Iterable[str],
    downstream: Mapping[str, Tables],
    memory_limit: str = "256MB",
) -> dict[str, int]:
    """How many values of each downstream text column, as ``label.column``, are raw PII
    values: counts only, never values. The distinct raw values and each downstream
    dataset go into a scratch DuckDB (bounded by ``memory_limit``, spilling to a private
    temporary directory beyond it, deleted afterwards); one join per column counts."""
    pii_columns = list(pii_columns)
    with tempfile.TemporaryDirectory(prefix="secure-etl-leaks-") as scratch:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": scratch})
        try:
            con.execute("CREATE TEMP TABLE pii (v VARCHAR)")
            for table in raw():
                present = [c for c in pii_columns if c in table.column_names]
                chunk = _as_text(table, present)  # noqa: F841 - read by DuckDB by name
                for column in present:
                    con.execute(
                        f'INSERT INTO pii SELECT "{column}" FROM chunk '  # noqa: S608
                        f'WHERE "{column}" IS NOT NULL'
                    )
            con.execute("CREATE TEMP TABLE pii_set AS SELECT DISTINCT v FROM pii")
            con.execute("DROP TABLE pii")
            leaks: dict[str, int] = {}
            for label, tables in downstream.items():
                leaks.update(_scan(con, label, tables))
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
