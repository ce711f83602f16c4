"""Data checks as plain functions: they return numbers, the caller decides pass or fail.
They read partitions in bounded batches and never keep or return a PII value."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Tables = Callable[[], Iterable[pa.Table]]


def null_rates(stats: dict) -> dict[str, float]:
    """Per column: the share of null values, from a destination's ``partition_stats``."""
    rows = stats["rows"]
    return {c: (n / rows if rows else 0.0) for c, n in stats["nulls"].items()}


def _text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
    return text.drop_null()


def _prints(text: pa.Array) -> np.ndarray:
    return pd.util.hash_array(text.to_numpy(zero_copy_only=False).astype(object))


def pii_leaks(
    raw: Tables, pii_columns: Iterable[str], downstream: Mapping[str, Tables]
) -> dict[str, int]:
    """How many raw PII values reappear in each downstream column, as ``label.column``:
    counts only, never values. Raw values are kept as 64-bit fingerprints (8 bytes each);
    a fingerprint hit is then confirmed against the raw values themselves."""
    pii_columns = list(pii_columns)
    known = np.unique(
        np.concatenate(
            [np.empty(0, np.uint64)]
            + [_prints(_text(t[c])) for t in raw() for c in pii_columns if c in t.column_names]
        )
    )
    if not len(known):
        return {}
    candidates: dict[str, list[pa.Array]] = {}
    for label, tables in downstream.items():
        for table in tables():
            for name in table.column_names:
                text = _text(table[name])
                prints = _prints(text)
                at = np.minimum(np.searchsorted(known, prints), len(known) - 1)
                hit = known[at] == prints
                if hit.any():
                    candidates.setdefault(f"{label}.{name}", []).append(text.filter(hit))
    if not candidates:
        return {}
    suspects = {v for arrays in candidates.values() for a in arrays for v in a.to_pylist()}
    confirmed = set()
    for table in raw():
        for column in pii_columns:
            if column in table.column_names:
                confirmed.update(v for v in _text(table[column]).to_pylist() if v in suspects)
    leaks = {}
    for place, arrays in candidates.items():
        hits = sum(v in confirmed for a in arrays for v in a.to_pylist())
        if hits:
            leaks[place] = hits
    return leaks
