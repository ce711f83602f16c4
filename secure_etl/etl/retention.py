"""Retention: a raw partition (and its quarantined rows; both hold PII) is deleted once
the warehouse load of the same partition has succeeded and a grace period has passed;
hashed partitions follow their own policy (kept, or deleted after some days)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from secure_etl.etl import storage
from secure_etl.security.files import write_secret


def loaded_marker(hashed: Path) -> Path:
    return hashed.with_name(hashed.name + ".loaded.json")


def mark_loaded(hashed: Path, destination: str, rows: int, at: dt.datetime) -> None:
    """Written by a successful load: when, where, how many rows."""
    record = {"loaded_at": at.isoformat(), "destination": destination, "rows": rows}
    write_secret(loaded_marker(hashed), json.dumps(record, sort_keys=True).encode())


@dataclass(frozen=True)
class Deleted:
    stage: str
    partition: str
    path: Path
    bytes: int


def _loaded_at(hashed: Path) -> dt.datetime | None:
    marker = loaded_marker(hashed)
    if not marker.exists():
        return None
    return dt.datetime.fromisoformat(json.loads(marker.read_bytes())["loaded_at"])


def apply_retention(
    state: Path,
    pipeline: str,
    raw_grace: dt.timedelta,
    hashed_keep: dt.timedelta | None,
    now: dt.datetime,
) -> list[Deleted]:
    """Delete what the policy says may go; returns what was deleted."""
    deleted: list[Deleted] = []
    raw_dir = storage.partition_file(state, "raw", pipeline, "x").parent
    for raw in sorted(raw_dir.glob("*.parquet")) if raw_dir.is_dir() else []:
        partition = storage.partition_of(raw)
        hashed = storage.partition_file(state, "hashed", pipeline, partition)
        loaded_at = _loaded_at(hashed)
        if loaded_at is None or now - loaded_at < raw_grace:
            continue  # not loaded yet, or still within the grace period
        for stage in ("raw", "quarantine"):
            path = storage.partition_file(state, stage, pipeline, partition)
            if path.exists():
                size = path.stat().st_size
                path.unlink()
                deleted.append(Deleted(stage, partition, path, size))
    if hashed_keep is not None:
        hashed_dir = storage.partition_file(state, "hashed", pipeline, "x").parent
        for hashed in sorted(hashed_dir.glob("*.parquet")) if hashed_dir.is_dir() else []:
            loaded_at = _loaded_at(hashed)
            if loaded_at is None or now - loaded_at < hashed_keep:
                continue
            size = hashed.stat().st_size
            for path in (hashed, storage.counts_file(hashed), loaded_marker(hashed)):
                path.unlink(missing_ok=True)
            deleted.append(Deleted("hashed", storage.partition_of(hashed), hashed, size))
    return deleted
