"""Retention: a raw partition (and its quarantined rows; both hold PII) is deleted once
the warehouse load of the same partition has succeeded and a grace period has passed;
hashed partitions follow their own policy (kept, or deleted after some days). The files
and the load markers are in the platform's ``Storage`` (a directory or a bucket)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from secure_etl.etl import storage
from secure_etl.etl.storage import Storage, StoredFile, as_file


def loaded_marker(hashed: Path | StoredFile) -> Path | StoredFile:
    return hashed.with_name(hashed.name + ".loaded.json")


def mark_loaded(hashed: Path | StoredFile, destination: str, rows: int, at: dt.datetime) -> None:
    """Written by a successful load: when, where, how many rows."""
    record = {"loaded_at": at.isoformat(), "destination": destination, "rows": rows}
    as_file(loaded_marker(hashed)).write_secret(json.dumps(record, sort_keys=True).encode())


@dataclass(frozen=True)
class Deleted:
    stage: str
    partition: str
    path: StoredFile
    bytes: int


def _loaded_at(hashed: StoredFile) -> dt.datetime | None:
    marker = as_file(loaded_marker(hashed))
    if not marker.exists():
        return None
    return dt.datetime.fromisoformat(json.loads(marker.read_bytes())["loaded_at"])


def apply_retention(
    state: Path | Storage,
    pipeline: str,
    raw_grace: dt.timedelta,
    hashed_keep: dt.timedelta | None,
    now: dt.datetime,
) -> list[Deleted]:
    """Delete what the policy says may go; returns what was deleted. ``state`` is the
    storage (a state directory: its default local storage)."""
    store = state if isinstance(state, Storage) else Storage.local(state)
    deleted: list[Deleted] = []
    for raw in store.partitions("raw", pipeline):
        partition = storage.partition_of(raw)
        loaded_at = _loaded_at(store.file("hashed", pipeline, partition))
        if loaded_at is None or now - loaded_at < raw_grace:
            continue  # not loaded yet, or still within the grace period
        for stage in ("raw", "quarantine"):
            path = store.file(stage, pipeline, partition)
            if path.exists():
                size = path.size()
                path.unlink()
                deleted.append(Deleted(stage, partition, path, size))
    if hashed_keep is not None:
        for hashed in store.partitions("hashed", pipeline):
            loaded_at = _loaded_at(hashed)
            if loaded_at is None or now - loaded_at < hashed_keep:
                continue
            size = hashed.size()
            for path in (hashed, storage.counts_file(hashed), loaded_marker(hashed)):
                as_file(path).unlink(missing_ok=True)
            deleted.append(Deleted("hashed", storage.partition_of(hashed), hashed, size))
    return deleted
