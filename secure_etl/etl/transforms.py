"""Row validation, keyed pseudonymisation and lineage columns."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterable
from hashlib import sha256

import pandas as pd

KEY_ID_COLUMN = "_pseudonym_key_id"
METADATA_COLUMNS = ("_run_id", "_pipeline_version", "_processed_at", KEY_ID_COLUMN)


def split_valid(frame: pd.DataFrame, key_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows fit to load, and the rest (no key, or a key seen earlier in the partition)."""
    key = frame[key_column]
    bad = key.isna() | key.duplicated(keep="first")
    return frame[~bad].reset_index(drop=True), frame[bad].reset_index(drop=True)


def hmac_hex(values: Iterable[object], secret: bytes) -> list[str | None]:
    """HMAC-SHA256 (hex) of each value's UTF-8 text; missing values stay missing."""
    # The keyed inner and outer states are computed once and copied per value.
    base = hmac.new(secret, digestmod=sha256)
    out: list[str | None] = []
    for value in values:
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            out.append(None)
            continue
        mac = base.copy()
        mac.update(str(value).encode("utf-8"))
        out.append(mac.hexdigest())
    return out


def pseudonymise(
    frame: pd.DataFrame, columns: Iterable[str], secret: bytes, key_id: str
) -> pd.DataFrame:
    """Replace each column's values by their keyed hash and record the key id per row."""
    out = frame.copy()
    for column in columns:
        if column not in out.columns:
            raise KeyError(f"pseudonymise: no column {column!r} (have {', '.join(out.columns)})")
        out[column] = pd.array(hmac_hex(out[column].to_numpy(object), secret), dtype="string")
    out[KEY_ID_COLUMN] = pd.array([key_id] * len(out), dtype="string")
    return out


def add_metadata(
    frame: pd.DataFrame, run_id: str, pipeline_version: str, processed_at: dt.datetime
) -> pd.DataFrame:
    out = frame.copy()
    out["_run_id"] = pd.array([run_id] * len(out), dtype="string")
    out["_pipeline_version"] = pd.array([pipeline_version] * len(out), dtype="string")
    out["_processed_at"] = pd.Timestamp(processed_at).as_unit("us")
    return out
