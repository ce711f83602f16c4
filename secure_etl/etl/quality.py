"""Data checks as plain functions: they return numbers, the caller decides pass or fail.
They read partitions in bounded batches and never keep or return a PII value outside
the check's own scratch database."""

from __future__ import annotations

import bisect
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # imported when a leak check runs: the pipeline's steps only tally
    import duckdb

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


def _is_text(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_dictionary(arrow_type)
    )


def text_columns(schema: pa.Schema) -> list[str]:
    """The columns that can hold a source's text: text columns the pipeline did not add."""
    return [f.name for f in schema if f.name not in GENERATED_COLUMNS and _is_text(f.type)]


class LengthTally:
    """Per text column, the distinct lengths (in characters) of its values, gathered
    while the tables stream by: a downstream column none of whose lengths is that of a
    raw PII value cannot hold one, so the leak check need not read it back."""

    def __init__(self) -> None:
        self.lengths: dict[str, set[int]] = {}

    def add(self, table: pa.Table) -> None:
        for name in text_columns(table.schema):
            column = table[name]
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            lengths = self.lengths.setdefault(name, set())
            for chunk in column.chunks:
                lengths.update(_distinct_lengths(chunk))

    def as_json(self) -> dict[str, list[int]]:
        return {name: sorted(lengths) for name, lengths in self.lengths.items()}


def _distinct_lengths(array: pa.Array) -> list[int]:
    """The distinct lengths in characters of a text array's values (nulls left out).
    When every byte is ASCII, a value's length is its byte length, read from the
    offsets; otherwise Arrow counts the characters."""
    if len(array) and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        width = np.int32 if pa.types.is_string(array.type) else np.int64
        _, offsets_buffer, data_buffer = array.buffers()
        offsets = np.frombuffer(
            offsets_buffer, width, len(array) + 1, array.offset * width(0).itemsize
        )
        start, end = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(data_buffer, np.uint8, end - start, start) if end > start else None
        if data is None or int(data.max()) < 0x80:
            sizes = np.diff(offsets)
            if array.null_count:
                sizes = sizes[array.is_valid().to_numpy(zero_copy_only=False)]
            return np.unique(sizes).tolist()
    found = pc.unique(pc.utf8_length(array)).to_pylist()
    return [n for n in found if n is not None]


MIN_TEXT_MATCH = 4  # shorter raw values are not looked for in free text (too common)


def pii_leaks(
    raw: Tables,
    pii_columns: Iterable[str],
    downstream: Mapping[str, Tables],
    texts: Mapping[str, Callable[[], Iterable[str]]] | None = None,
    memory_limit: str = "256MB",
    lengths: set[int] | None = None,
) -> dict[str, int]:
    """How many values of each downstream text column, as ``label.column``, are raw PII
    values, and how many distinct raw PII values appear in each free text source
    (``texts``: logs, metadata), as ``label``: counts only, never values.

    Only a value as long as some raw PII value can be one, so the raw values are read
    twice and never kept whole: first their lengths, then, against the candidates (the
    downstream values and the free-text stretches of those lengths, usually few: a
    pseudonym is 64 characters), the raw values that are candidates. Candidates go into
    a scratch DuckDB (bounded by ``memory_limit``, spilling to a private temporary
    directory beyond it, deleted afterwards). In free text, a raw value counts when it
    appears between word boundaries and has at least MIN_TEXT_MATCH characters.
    ``lengths``, when known (a ``LengthTally`` of the raw file), spares the first read.
    """
    import duckdb

    pii_columns = list(pii_columns)
    if lengths is None:
        lengths = _lengths(raw, pii_columns)
    if not lengths:
        return {}
    with tempfile.TemporaryDirectory(prefix="secure-etl-leaks-") as scratch:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": scratch})
        try:
            # kind 0: a downstream row (every one counts), 1: a free-text stretch (distinct)
            con.execute(
                "CREATE TEMP TABLE cand (label VARCHAR, kind INTEGER, v VARCHAR, place INTEGER)"
            )
            for label, tables in downstream.items():
                _downstream_candidates(con, label, tables, lengths)
            text_lengths = sorted(n for n in lengths if n >= MIN_TEXT_MATCH)
            for label, text in (texts or {}).items():
                if text_lengths:
                    _text_candidates(con, label, text(), text_lengths)
            if not con.execute("SELECT count(*) FROM cand").fetchone()[0]:
                return {}
            con.execute("CREATE TEMP TABLE wanted AS SELECT DISTINCT v FROM cand")
            con.execute("CREATE TEMP TABLE hits (v VARCHAR)")
            for raw_chunk in _raw_values(raw, pii_columns):  # noqa: B007 - read by DuckDB
                con.execute(
                    "INSERT INTO hits SELECT DISTINCT v FROM raw_chunk "
                    "WHERE v IN (SELECT v FROM wanted)"
                )
            found = con.execute(
                "SELECT label, CASE WHEN max(kind) = 0 THEN count(*) "
                "ELSE count(DISTINCT c.v) END FROM cand c "
                "SEMI JOIN (SELECT DISTINCT v FROM hits) h ON c.v = h.v GROUP BY label "
                "ORDER BY min(place)"
            ).fetchall()
        finally:
            con.close()
    return {label: hits for label, hits in found if hits}


def _raw_values(raw: Tables, pii_columns: list[str]) -> Iterator[pa.Table]:
    """The non-null raw PII values as text, one column ``v`` per table read."""
    for table in raw():
        present = [c for c in pii_columns if c in table.column_names]
        if not present:
            continue
        text = _as_text(table, present)
        values = pa.chunked_array(
            [chunk for column in text.columns for chunk in column.chunks], pa.string()
        )
        values = values.filter(pc.is_valid(values))
        if len(values):
            yield pa.table({"v": values})


def _lengths(raw: Tables, pii_columns: list[str]) -> set[int]:
    """The distinct lengths (in characters) of the raw PII values."""
    lengths: set[int] = set()
    for values in _raw_values(raw, pii_columns):
        lengths.update(pc.unique(pc.utf8_length(values["v"])).to_pylist())
    return lengths


def _add(con: duckdb.DuckDBPyConnection, label: str, kind: int, values: pa.Array) -> None:
    """Candidates of one place; ``place`` keeps the order the places came in."""
    (place,) = con.execute(
        "SELECT coalesce((SELECT min(place) FROM cand WHERE label = ?), "
        "(SELECT count(DISTINCT label) FROM cand))",
        [label],
    ).fetchone()
    count = len(values)
    chunk = pa.table(  # noqa: F841 - read by DuckDB by name
        {
            "label": pa.array([label] * count, pa.string()),
            "kind": pa.array([kind] * count, pa.int32()),
            "v": values,
            "place": pa.array([place] * count, pa.int32()),
        }
    )
    con.execute("INSERT INTO cand SELECT * FROM chunk")


def _downstream_candidates(
    con: duckdb.DuckDBPyConnection, label: str, tables: Tables, lengths: set[int]
) -> None:
    """The values of each text column as long as some raw value, as ``label.column``."""
    wanted = pa.array(sorted(lengths), pa.int32())
    columns: list[str] | None = None
    for table in tables():
        if columns is None:
            columns = text_columns(table.schema)
            if not columns:
                return
        text = _as_text(table, columns)
        for name in columns:
            values = text[name]
            values = values.filter(pc.is_in(pc.utf8_length(values), value_set=wanted))
            if len(values):
                _add(con, f"{label}.{name}", 0, values.cast(pa.string()))


def _text_candidates(
    con: duckdb.DuckDBPyConnection, label: str, texts: Iterable[str], lengths: list[int]
) -> None:
    """Every substring of ``texts`` that starts and ends at a word boundary and has the
    length of some raw value. A text seen before (event logs repeat run ids, step keys
    and messages) is skipped."""
    seen: set[str] = set()
    for text in texts:
        if text in seen:
            continue
        seen.add(text)
        found = _candidates(text, lengths)
        if found:
            _add(con, label, 1, pa.array(sorted(found), pa.string()))


_NOT_ALNUM = re.compile(r"[\W_]")


def _candidates(text: str, lengths: list[int]) -> set[str]:
    # [\W_] is a character str.isalnum() refuses: a word boundary is just after or before one.
    breaks = [m.start() for m in _NOT_ALNUM.finditer(text)]
    starts = [0, *(i + 1 for i in breaks)]
    ends = [*breaks, len(text)]  # sorted
    wanted = set(lengths)
    shortest, longest = lengths[0], lengths[-1]
    found = set()
    for i in starts:
        # the ends within reach of this start, found by bisection
        for j in ends[
            bisect.bisect_left(ends, i + shortest) : bisect.bisect_right(ends, i + longest)
        ]:
            if j - i in wanted:
                found.add(text[i:j])
    return found
