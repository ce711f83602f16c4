"""Extract, pseudonymise and load a partition in one pass, the three overlapped: a thread
reads the source, worker processes hash, the destination takes the hashed batches as
they come. The raw, quarantine and hashed files are written on the way, exactly as the
staged assets write them, and appear only if the whole pass succeeds; the load is one
transaction, so a failure anywhere leaves the destination and the files as they were.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from secure_etl.etl import quality, storage
from secure_etl.etl.hmac_column import HashWorkers
from secure_etl.etl.transforms import (
    PARALLEL_MIN_ROWS,
    Lineage,
    PseudonymiseStep,
    SeenKeys,
    Step,
    add_metadata,
    hex_columns,
    lengths_record,
    split_valid,
    transform_later,
)

# Takes the hashed batches (and their schema) and returns the rows it loaded.
Loader = Callable[[Iterator[pa.Table], pa.Schema], int]


@dataclass(frozen=True)
class OnePassResult:
    raw_rows: int
    raw_bytes: int
    rows: int
    quarantined: int
    loaded: int
    filtered: int = 0


class _Prefetch:
    """Iterate ``chunks`` in a thread, ``depth`` chunks ahead (the source's I/O and
    decoding overlap with the rest); errors are raised in the consumer. After ``close``
    the thread stops at its next item, and a consumer waiting for one sees the end."""

    _END = object()

    def __init__(self, chunks: Iterable, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(chunks,), daemon=True)
        self._thread.start()

    def _offer(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks: Iterable) -> None:
        try:
            for chunk in chunks:
                if isinstance(chunk, pd.DataFrame):
                    chunk = pa.Table.from_pandas(chunk, preserve_index=False)
                if not self._offer(chunk):
                    return
            self._offer(self._END)
        except BaseException as err:  # handed to the consumer
            self._offer(err)

    def __iter__(self) -> Iterator[pa.Table]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self, timeout: float | None = 5) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=timeout)


def run_one_pass(
    chunks: Iterable[pa.Table | pd.DataFrame],
    raw: Path | storage.StoredFile,
    hashed: Path | storage.StoredFile,
    quarantine: Path | storage.StoredFile,
    key_column: str,
    steps: list[Step],
    lineage: Lineage,
    load: Loader | None,
    workers: int | None = None,
    crypto: storage.ParquetCrypto | None = None,
) -> OnePassResult:
    """Run the pass. With ``load`` the destination consumes the batches as they are
    made; without (a destination that loads files only), the hashed file is complete
    when this returns and the caller loads it."""
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    prefetch = _Prefetch(chunks)
    raw_out = storage.PartitionWriter(raw, crypto)
    hashed_out = storage.PartitionWriter(hashed, incompressible=hex_columns(steps))
    rejected: list[storage.PartitionWriter] = []
    counts = {"quarantined": 0, "filtered": 0}
    hashing = any(isinstance(step, PseudonymiseStep) for step in steps)
    pool: HashWorkers | None = None
    seen = SeenKeys()
    raw_lengths, hashed_lengths = quality.LengthTally(), quality.LengthTally()

    def hashed_batches() -> Iterator[pa.Table]:
        nonlocal pool
        in_flight: list[Callable[[], pa.Table]] = []
        for table in prefetch:
            raw_out.write(table)
            raw_lengths.add(table)
            if pool is None and workers > 1 and hashing and raw_out.rows >= PARALLEL_MIN_ROWS / 4:
                pool = HashWorkers(workers)  # a big partition: start the workers
            valid, bad = split_valid(table, key_column, seen)
            if bad.num_rows:
                if not rejected:
                    rejected.append(storage.PartitionWriter(quarantine, crypto))
                rejected[0].write(bad)
                counts["quarantined"] += bad.num_rows
            pending, dropped = transform_later(valid, steps, pool)
            counts["filtered"] += dropped
            in_flight.append(pending)
            if len(in_flight) > 1:
                out = add_metadata(in_flight.pop(0)(), lineage)
                hashed_out.write(out)
                hashed_lengths.add(out)
                yield out
        for pending in in_flight:
            out = add_metadata(pending(), lineage)
            hashed_out.write(out)
            hashed_lengths.add(out)
            yield out

    # The batches are made in a thread of their own (raw and hashed Parquet writes,
    # repeated keys, tallies, waiting for the hash workers) while this one hands them
    # to the destination (COPY encoding and sending): the C++ halves of both release
    # the GIL, so on two cores they overlap.
    producer = _Prefetch(hashed_batches())
    try:
        batches = iter(producer)
        first = next(batches, None)
        if first is None:  # no rows: the partition still has its columns (raw's schema)
            if raw_out.schema is None:
                raise ValueError(f"{raw}: the source returned no rows and no schema")
            empty = add_metadata(
                transform_later(raw_out.schema.empty_table(), steps, None)[0](), lineage
            )
            hashed_out.write(empty)
            first = empty
        if load:
            loaded = load(itertools.chain([first], batches), first.schema)
        else:
            loaded = sum(0 for _ in batches)
        if next(batches, None) is not None:  # the files are complete only with every batch
            raise RuntimeError("the destination stopped taking batches before the last one")
        raw_rows, raw_bytes = raw_out.commit()
        rows, _ = hashed_out.commit()
        if rejected:
            rejected[0].commit()
        else:
            quarantine.unlink(missing_ok=True)
        storage.write_counts(hashed, {**counts, **lengths_record(raw_lengths, hashed_lengths)})
    except BaseException:
        _stop(prefetch, producer)  # nothing writes any more
        for writer in (raw_out, hashed_out, *rejected):
            with contextlib.suppress(Exception):
                writer.abort()
        raise
    finally:
        _stop(prefetch, producer)
        if pool:
            pool.close()
    return OnePassResult(
        raw_rows, raw_bytes, rows, counts["quarantined"], loaded, counts["filtered"]
    )


def _stop(source: _Prefetch, producer: _Prefetch) -> None:
    """Stop the producer of the batches and the source's reader under it: the source
    first (the producer may wait for its next chunk), then the producer, waited for
    until it has finished what it was doing (a write into a file, a hash request)."""
    producer._stop.set()
    source.close()
    producer.close(timeout=None)
