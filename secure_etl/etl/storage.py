"""Where each stage of a pipeline keeps a partition: one Parquet file, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from secure_etl.security.files import write_secret

STAGES = ("raw", "quarantine", "hashed")


def partition_file(state_dir: Path, stage: str, pipeline: str, partition: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    safe = partition.replace(":", "-")
    return Path(state_dir) / "data" / stage / pipeline / f"{safe}.parquet"


def write_partition(path: Path, frame: pd.DataFrame) -> int:
    """Write a partition (owner-only: raw and quarantined rows hold PII); returns bytes."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    write_secret(path, data)
    return len(data)


def read_partition(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: partition not materialized yet")
    return pd.read_parquet(path)
