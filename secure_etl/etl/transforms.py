"""Row validation, keyed pseudonymisation and lineage columns, applied to a partition in
bounded batches (Arrow tables), so memory does not grow with the partition."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from secure_etl.etl import filters, quality, storage
from secure_etl.etl.hmac_column import HashWorkers, hmac_column
from secure_etl.etl.hmac_values import hex_many, key_pads
from secure_etl.etl.protect import ColumnCipher, mask_column

KEY_ID_COLUMN = "_pseudonym_key_id"
METADATA_COLUMNS = ("_run_id", "_pipeline_version", "_processed_at", KEY_ID_COLUMN)
# A source's record that is not a row (an API's string or null where an object belongs),
# as JSON text: its row has no key, so it is quarantined; valid rows leave the column out.
UNPARSED_COLUMN = "_unparsed_record"


PARALLEL_MIN_ROWS = 200_000  # below this, starting worker processes costs more than it saves


class Pseudonymiser:
    """HMAC-SHA256 (RFC 2104) of each value's UTF-8 text, as hex, with one key."""

    def __init__(self, secret: bytes) -> None:
        self.pads = key_pads(secret)

    def hex_many(self, values: Iterable[bytes | None]) -> list[str | None]:
        return hex_many(self.pads, values)

    def column(self, array: pa.Array | pa.ChunkedArray) -> pa.Array:
        return hmac_column(self.pads, array)


def hmac_hex(values: Iterable[object], secret: bytes) -> list[str | None]:
    """HMAC-SHA256 (hex) of each value's UTF-8 text; missing values stay missing."""
    return Pseudonymiser(secret).hex_many(
        None if _missing(v) else str(v).encode("utf-8") for v in values
    )


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


class SeenKeys:
    """Remembers the keys of a partition across batches, in 8 bytes a key: integer keys
    as themselves, other keys as a 64-bit hash (two distinct keys share one with odds
    about n²/2⁶⁵, which would quarantine a good row, never load a duplicate).

    The keys are kept as a few sorted runs, a run merged with the one before it when it
    grows as large (so each key is merged about log₂(batches) times, not once per
    batch, and a batch is looked up in at most that many runs)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, each at least twice the next one
        self._low: int | None = None  # the smallest and largest key kept
        self._high: int | None = None

    def repeated(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """For each non-null key: was it seen before, in this batch or an earlier one."""
        if pa.types.is_integer(keys.type):
            prints = pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
        else:
            prints = pd.util.hash_array(
                pc.cast(keys, pa.string()).to_numpy(zero_copy_only=False).astype(object)
            )
        if not len(prints):
            return np.zeros(0, dtype=bool)
        order = np.argsort(prints, kind="stable")
        ordered = prints[order]
        # within the batch: a key equal to the one before it in sorted order, which the
        # stable sort puts after its first occurrence
        repeat = np.zeros(len(ordered), dtype=bool)
        repeat[1:] = ordered[1:] == ordered[:-1]
        low, high = int(ordered[0]), int(ordered[-1])
        if self._low is not None and low <= self._high and high >= self._low:
            for run in self._runs:  # keys ascending: the lookups walk each run once
                at = np.minimum(np.searchsorted(run, ordered), len(run) - 1)
                repeat |= run[at] == ordered
        fresh = ordered[~repeat]
        if len(fresh):
            self._low = low if self._low is None else min(self._low, low)
            self._high = high if self._high is None else max(self._high, high)
            self._runs.append(fresh)
            while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
                last = self._runs.pop()
                merged = np.concatenate([self._runs.pop(), last])
                merged.sort(kind="stable")  # two sorted runs: timsort merges them linearly
                self._runs.append(merged)
        seen = np.empty(len(prints), dtype=bool)
        seen[order] = repeat
        return seen


def split_valid(table: pa.Table, key_column: str, seen: SeenKeys) -> tuple[pa.Table, pa.Table]:
    """Rows fit to load, and the rest (no key, or a key seen earlier in the partition)."""
    keys = table[key_column]
    missing = pc.is_null(keys).to_numpy(zero_copy_only=False)
    bad = missing.copy()
    present = ~missing
    bad[present] = seen.repeated(keys.filter(pa.array(present)))
    valid = table.filter(pa.array(~bad))
    if UNPARSED_COLUMN in valid.column_names:
        valid = valid.drop_columns([UNPARSED_COLUMN])
    return valid, table.filter(pa.array(bad))


@dataclass(frozen=True)
class PseudonymiseStep:
    columns: Sequence[str]
    pseudonymiser: Pseudonymiser
    key_id: str
    truncate: int | None = None  # hex digits kept (the config enforces the floor)


@dataclass(frozen=True)
class EncryptStep:
    columns: Sequence[str]
    cipher: ColumnCipher


@dataclass(frozen=True)
class MaskStep:
    columns: Sequence[str]
    style: str
    keep: int = 4


@dataclass(frozen=True)
class DropStep:
    columns: Sequence[str]


@dataclass(frozen=True)
class FilterStep:
    condition: filters.Condition


Step = PseudonymiseStep | EncryptStep | MaskStep | DropStep | FilterStep


@dataclass(frozen=True)
class Lineage:
    run_id: str
    pipeline_version: str
    processed_at: dt.datetime


def pseudonymise(table: pa.Table, steps: Sequence[Step]) -> pa.Table:
    """Apply the steps now (filters first, then each column's transform)."""
    return transform_later(table, steps, None)[0]()


def transform_later(
    table: pa.Table, steps: Sequence[Step], workers: HashWorkers | None
) -> tuple[Callable[[], pa.Table], int]:
    """Filter ``table``, start its column transforms (hashing in ``workers`` if given)
    and return the function that waits for the result, with the number of rows the
    filters dropped: the caller can read the next batch meanwhile."""
    before = table.num_rows
    for step in steps:
        if isinstance(step, FilterStep):
            table = filters.apply(table, step.condition)
    jobs, dropped = [], []
    for step in steps:
        if isinstance(step, FilterStep):
            continue
        for column in step.columns:
            index = table.schema.get_field_index(column)
            if index < 0:
                raise KeyError(
                    f"{type(step).__name__.removesuffix('Step').lower()}: no column {column!r} "
                    f"(have {', '.join(table.column_names)})"
                )
            if isinstance(step, DropStep):
                dropped.append(column)
                continue
            values = table.column(index).combine_chunks()
            if isinstance(step, PseudonymiseStep) and workers:
                future = workers.submit(step.pseudonymiser.pads, values)
                jobs.append((index, column, lambda f=future, s=step: _truncate(f.result(), s)))
                continue
            if isinstance(step, PseudonymiseStep):
                done = _truncate(hmac_column(step.pseudonymiser.pads, values), step)
            elif isinstance(step, EncryptStep):
                done = step.cipher.column(values, column)
            else:
                done = mask_column(values, step.style, step.keep)
            jobs.append((index, column, lambda done=done: done))
    key_ids = ",".join(s.key_id for s in steps if isinstance(s, PseudonymiseStep))

    def result() -> pa.Table:
        out = table
        for index, column, transformed in jobs:
            out = out.set_column(index, column, transformed())
        out = out.drop_columns(dropped)
        return out.append_column(KEY_ID_COLUMN, _constant(key_ids, out.num_rows))

    return result, before - table.num_rows


def _truncate(digests: pa.Array, step: PseudonymiseStep) -> pa.Array:
    if step.truncate is None:
        return digests
    return pc.utf8_slice_codeunits(digests, 0, step.truncate)


def add_metadata(table: pa.Table, lineage: Lineage) -> pa.Table:
    at = pa.scalar(lineage.processed_at.astimezone(dt.UTC), pa.timestamp("us", "UTC"))
    return (
        table.append_column("_run_id", _constant(lineage.run_id, table.num_rows))
        .append_column("_pipeline_version", _constant(lineage.pipeline_version, table.num_rows))
        .append_column(
            "_processed_at",
            pa.array([at.value], at.type).take(np.zeros(table.num_rows, dtype=np.int32)),
        )
    )


def _constant(value: str, rows: int) -> pa.Array:
    return pa.array([value], pa.string()).take(np.zeros(rows, dtype=np.int32))


@dataclass(frozen=True)
class TransformResult:
    rows: int
    quarantined: int
    filtered: int = 0


def hex_columns(steps: Sequence[Step]) -> list[str]:
    """The columns the steps leave as hex pseudonyms (written uncompressed)."""
    return [c for s in steps if isinstance(s, PseudonymiseStep) for c in s.columns]


def lengths_record(raw: quality.LengthTally, hashed: quality.LengthTally) -> dict:
    """The value lengths of the raw and hashed text columns, kept beside the hashed file
    (counts file) for the leak check."""
    return {"lengths": {"raw": raw.as_json(), "hashed": hashed.as_json()}}


def transform_partition(
    raw: Path | storage.StoredFile,
    hashed: Path | storage.StoredFile,
    quarantine: Path | storage.StoredFile,
    key_column: str,
    steps: Sequence[Step],
    lineage: Lineage,
    batch_rows: int = 100_000,
    workers: int | None = None,
    crypto: storage.ParquetCrypto | None = None,
) -> TransformResult:
    """raw -> hashed (valid rows, pseudonymised, with lineage columns) and quarantine
    (the rest, or no file when there is none), one batch at a time. ``crypto`` reads
    raw and writes quarantine (both hold PII) encrypted. A partition of
    ``PARALLEL_MIN_ROWS`` or more is hashed by ``workers`` processes (default: one per
    CPU) while this one reads and writes the next batches."""
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    hashing = any(isinstance(step, PseudonymiseStep) for step in steps)
    parallel = workers > 1 and hashing and storage.partition_rows(raw, crypto) >= PARALLEL_MIN_ROWS
    with HashWorkers(workers) if parallel else contextlib.nullcontext() as pool:
        return _transform(
            raw, hashed, quarantine, key_column, steps, lineage, batch_rows, pool, crypto
        )


def _transform(raw, hashed, quarantine, key_column, steps, lineage, batch_rows, pool, crypto):
    seen = SeenKeys()
    raw_lengths, hashed_lengths = quality.LengthTally(), quality.LengthTally()
    filtered = 0
    rejected: storage.PartitionWriter | None = None
    with storage.PartitionWriter(hashed, incompressible=hex_columns(steps)) as valid_out:
        try:
            tables = storage.iter_partition(raw, batch_rows=batch_rows, crypto=crypto)
            first = next(tables, None)
            if first is None:  # an empty partition still has its columns
                first = storage.partition_schema(raw, crypto).empty_table()
            in_flight: list[Callable[[], pa.Table]] = []
            for table in itertools.chain([first], tables):
                raw_lengths.add(table)
                valid, bad = split_valid(table, key_column, seen)
                if bad.num_rows:
                    rejected = rejected or storage.PartitionWriter(quarantine, crypto)
                    rejected.write(bad)
                pending, dropped = transform_later(valid, steps, pool)
                filtered += dropped
                in_flight.append(pending)
                if len(in_flight) > 1:  # two batches in flight: the workers never wait
                    out = add_metadata(in_flight.pop(0)(), lineage)
                    valid_out.write(out)
                    hashed_lengths.add(out)
            for pending in in_flight:
                out = add_metadata(pending(), lineage)
                valid_out.write(out)
                hashed_lengths.add(out)
            rows, _ = valid_out.commit()
            quarantined = rejected.commit()[0] if rejected else 0
        except BaseException:
            if rejected:
                rejected.abort()
            raise
    if not rejected:
        quarantine.unlink(missing_ok=True)  # a previous run's rejects are not this run's
    storage.write_counts(
        hashed,
        {
            "quarantined": quarantined,
            "filtered": filtered,
            **lengths_record(raw_lengths, hashed_lengths),
        },
    )
    return TransformResult(rows, quarantined, filtered)
