"""Where each stage of a pipeline keeps a partition: one Parquet file, written atomically."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from secure_etl.security.files import SECRET_MODE, write_secret

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


def write_partition_chunks(path: Path, chunks: Iterable[pd.DataFrame]) -> tuple[int, int]:
    """Write a partition chunk by chunk (memory stays bounded by one chunk), owner-only,
    atomically; returns (rows, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE)
    rows, writer = 0, None
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
                rows += len(chunk)
            if writer is None:
                raise ValueError("the source returned no rows and no schema")
            writer.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows, path.stat().st_size


def read_partition(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: partition not materialized yet")
    return pd.read_parquet(path)
