"""HMAC-SHA256 of one Arrow column, in process or in worker processes: a small module,
so that a worker that only hashes imports nothing else (hashlib and pyarrow)."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from secure_etl.etl.hmac_values import BLOCK, digests

_SAMPLE = 2048


def _digests_as_hex(hashed: list[bytes], validity: pa.Array | None) -> pa.Array:
    """32-byte digests -> 64-character lowercase hex strings, built as one Arrow buffer
    (no Python string per value)."""
    text = b"".join(hashed).hex().encode("ascii")  # one C call for all of them
    offsets = np.arange(0, 64 * (len(hashed) + 1), 64, dtype=np.int32)
    hexed = pa.Array.from_buffers(
        pa.string(), len(hashed), [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )
    if validity is None:
        return hexed
    return pc.if_else(validity, hexed, pa.scalar(None, pa.string()))


def hmac_column(pads: tuple[bytes, bytes], array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column's values (their UTF-8 text) replaced by their HMACs (hex); nulls stay
    null. When a sample shows many repeated values, each distinct value is hashed once."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
    data = text.cast(pa.binary())
    sample = data.slice(0, _SAMPLE)
    if len(data) > _SAMPLE and pc.count_distinct(sample).as_py() * 2 <= len(sample):
        encoded = pc.dictionary_encode(data)
        dictionary = encoded.dictionary
        hashed = _digests_as_hex(digests(pads, dictionary.to_pylist()), None)
        return pc.take(hashed, encoded.indices)
    validity = pc.is_valid(data) if data.null_count else None
    return _digests_as_hex(digests(pads, data.to_pylist()), validity)


# --- worker processes ---------------------------------------------------------------------
# A big partition is hashed in worker processes, one per CPU, while the parent reads and
# writes Parquet. They are plain subprocesses (``python -m secure_etl.etl.hmac_column``)
# spoken to over pipes, not multiprocessing: nothing of the parent (its __main__, its
# threads) is re-imported or forked. A request is the two key pads, then one Arrow IPC
# stream of one batch (a column of values); the answer is one IPC stream of one batch.

_PADS = 2 * BLOCK
_VALUES = pa.schema([("v", pa.binary())])
_HASHES = pa.schema([("h", pa.string())])


class HashWorkers:
    """``workers`` subprocesses hashing columns; ``submit`` returns a Future."""

    def __init__(self, workers: int) -> None:
        self._idle: queue.Queue[subprocess.Popen] = queue.Queue()
        self._procs = []
        for _ in range(workers):
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "secure_etl.etl.hmac_column"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._procs.append(proc)
            self._idle.put(proc)
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="hmac-io")

    def submit(self, pads: tuple[bytes, bytes], array: pa.Array) -> Future:
        return self._threads.submit(self._ask, pads, array)

    def _ask(self, pads: tuple[bytes, bytes], array: pa.Array) -> pa.Array:
        proc = self._idle.get()
        try:
            text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
            proc.stdin.write(pads[0] + pads[1])
            with pa.ipc.new_stream(proc.stdin, _VALUES) as writer:
                writer.write_batch(pa.record_batch([text.cast(pa.binary())], schema=_VALUES))
            proc.stdin.flush()
            answer = pa.ipc.open_stream(proc.stdout).read_all()
        except (OSError, pa.ArrowInvalid) as err:
            raise RuntimeError(f"HMAC worker {proc.pid} failed: {err}") from None
        finally:
            # Back in the queue even when broken: the next request fails fast on it
            # instead of waiting for a worker that never comes back.
            self._idle.put(proc)
        return answer.column(0).combine_chunks()

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


def _serve(stdin, stdout) -> None:
    """The worker's loop: answer requests until the parent closes the pipe."""
    while pads := stdin.read(_PADS):
        if len(pads) != _PADS:
            raise SystemExit("HMAC worker: truncated request")
        values = pa.ipc.open_stream(stdin).read_all().column(0)
        hashed = hmac_column((pads[:BLOCK], pads[BLOCK:]), values)
        with pa.ipc.new_stream(stdout, _HASHES) as writer:
            writer.write_batch(pa.record_batch([hashed], schema=_HASHES))
        stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
