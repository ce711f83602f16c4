"""HMAC-SHA256 of one Arrow column, in process or in worker processes (which run
``hmac_values``: hashlib only)."""

from __future__ import annotations

import contextlib
import queue
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from secure_etl.etl.hmac_values import digests

_SAMPLE = 2048


def _digests_as_hex(digests: bytes, validity: pa.Array | None) -> pa.Array:
    """Concatenated 32-byte digests -> 64-character lowercase hex strings, built as one
    Arrow buffer (no Python string per value)."""
    count = len(digests) // 32
    text = digests.hex().encode("ascii")  # one C call for all of them
    offsets = np.arange(0, 64 * (count + 1), 64, dtype=np.int32)
    hexed = pa.Array.from_buffers(
        pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )
    if validity is None:
        return hexed
    return pc.if_else(validity, hexed, pa.scalar(None, pa.string()))


def _to_hash(array: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, Callable[[bytes], pa.Array]]:
    """The values to hash (their UTF-8 text as binary) and how their concatenated digests
    become the column: when a sample shows many repeated values, only the distinct ones
    are hashed; nulls stay null."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
    data = text.cast(pa.binary())
    sample = data.slice(0, _SAMPLE)
    if len(data) > _SAMPLE and pc.count_distinct(sample).as_py() * 2 <= len(sample):
        encoded = pc.dictionary_encode(data)
        return encoded.dictionary, lambda d: pc.take(_digests_as_hex(d, None), encoded.indices)
    validity = pc.is_valid(data) if data.null_count else None
    return data, lambda d: _digests_as_hex(d, validity)


def hmac_column(pads: tuple[bytes, bytes], array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column's values (their UTF-8 text) replaced by their HMACs (hex); nulls stay
    null. When a sample shows many repeated values, each distinct value is hashed once."""
    values, finish = _to_hash(array)
    return finish(b"".join(digests(pads, values.to_pylist())))


def _frame(values: pa.Array) -> tuple[bytes, bytes, pa.Buffer | bytes]:
    """A binary array as the worker reads it: count, offsets (native int32, from 0), data."""
    count = len(values)
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, count + 1, values.offset * 4)
    start, end = int(offsets[0]), int(offsets[-1])
    data = data_buffer[start:end] if data_buffer is not None and end > start else b""
    return struct.pack("=I", count), (offsets - start).astype(np.int32).tobytes(), data


# --- worker processes ---------------------------------------------------------------------
# A big partition is hashed in worker processes, one per CPU, while the parent reads and
# writes Parquet. They are plain subprocesses (``python -m secure_etl.etl.hmac_values``,
# hashlib only: a few MiB each) spoken to over pipes, not multiprocessing: nothing of the
# parent (its __main__, its threads) is re-imported or forked. A request is the two key
# pads and a binary column as count, offsets and data; the answer its digests, 32 bytes
# each (the parent makes them hex and puts the nulls back).


class HashWorkers:
    """``workers`` subprocesses hashing columns; ``submit`` returns a Future."""

    def __init__(self, workers: int) -> None:
        self._idle: queue.Queue[subprocess.Popen] = queue.Queue()
        self._procs = []
        for _ in range(workers):
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "secure_etl.etl.hmac_values"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._procs.append(proc)
            self._idle.put(proc)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="hmac-io")

    def submit(self, pads: tuple[bytes, bytes], array: pa.Array) -> Future:
        return self._threads.submit(self._ask, pads, array)

    def _ask(self, pads: tuple[bytes, bytes], array: pa.Array) -> pa.Array:
        values, finish = _to_hash(array)
        count, offsets, data = _frame(values)
        proc = self._idle.get()
        try:
            for part in (pads[0], pads[1], count, offsets, data):
                proc.stdin.write(part)
            proc.stdin.flush()
            answer = proc.stdout.read(32 * len(values))
            if len(answer) != 32 * len(values):
                raise OSError("the worker ended")
        except OSError as err:
            raise RuntimeError(f"HMAC worker {proc.pid} failed: {err}") from None
        finally:
            # Back in the queue even when broken: the next request fails fast on it
            # instead of waiting for a worker that never comes back.
            self._idle.put(proc)
        return finish(answer)

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        for proc in self._procs:
            with contextlib.suppress(OSError):  # a dead worker's pipe is already broken
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> HashWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
