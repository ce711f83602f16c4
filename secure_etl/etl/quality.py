"""Data checks as plain functions: they return numbers, the caller decides pass or fail."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def null_rates(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> dict[str, float]:
    columns = list(columns) if columns is not None else list(frame.columns)
    if len(frame) == 0:
        return {c: 0.0 for c in columns}
    return {c: float(frame[c].isna().mean()) for c in columns}


def duplicate_keys(frame: pd.DataFrame, key_column: str) -> int:
    return int(frame[key_column].duplicated(keep=False).sum())


def pii_leaks(
    raw: pd.DataFrame, pii_columns: Iterable[str], downstream: pd.DataFrame
) -> dict[str, int]:
    """How many raw PII values reappear in each downstream column (counts only, no values)."""
    secrets = set()
    for column in pii_columns:
        secrets.update(str(v) for v in raw[column].dropna())
    leaks = {}
    for column in downstream.columns:
        values = downstream[column].dropna().astype(str)
        hits = int(values.isin(secrets).sum())
        if hits:
            leaks[column] = hits
    return leaks
