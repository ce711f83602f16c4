"""HMAC-SHA256 of byte strings with the key's padded blocks computed once: hashlib only,
so ``secure-etl keys pseudonym`` hashes as the pipeline does without loading pyarrow
(``hmac_column`` applies these to Arrow columns), and a hash worker process
(``python -m secure_etl.etl.hmac_values``) stays a few MiB."""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable
from hashlib import sha256

BLOCK = 64  # SHA-256 block size


def key_pads(secret: bytes) -> tuple[bytes, bytes]:
    """RFC 2104's inner and outer padded keys."""
    key = sha256(secret).digest() if len(secret) > BLOCK else secret
    key = key.ljust(BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hex_many(pads: tuple[bytes, bytes], values: Iterable[bytes | None]) -> list[str | None]:
    """HMAC-SHA256 as hex per value (None stays None)."""
    values = list(values)
    hashed = digests(pads, values)
    return [None if v is None else d.hex() for v, d in zip(values, hashed, strict=True)]


def digests(pads: tuple[bytes, bytes], values: list[bytes | None]) -> list[bytes]:
    """HMAC-SHA256 per value; the keyed inner and outer SHA-256 states are computed once
    and copied per value (two copies and two updates instead of re-keying)."""
    inner, outer = sha256(pads[0]).copy, sha256(pads[1]).copy
    out: list[bytes] = []
    append = out.append
    empty = bytes(32)
    for value in values:
        if value is None:
            append(empty)  # a placeholder: masked out as null afterwards
            continue
        i = inner()
        i.update(value)
        o = outer()
        o.update(i.digest())
        append(o.digest())
    return out


def _read(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise SystemExit("HMAC worker: truncated request")
    return data


def serve(stdin, stdout) -> None:
    """A hash worker's loop (see ``hmac_column.HashWorkers``): per request the two pads,
    a count, count + 1 native int32 offsets and the data; answers the digests, 32 bytes
    each. Ends when the parent closes the pipe."""
    while pads := stdin.read(2 * BLOCK):
        if len(pads) != 2 * BLOCK:
            raise SystemExit("HMAC worker: truncated request")
        (count,) = struct.unpack("=I", _read(stdin, 4))
        offsets = array("i")
        offsets.frombytes(_read(stdin, offsets.itemsize * (count + 1)))
        data = memoryview(_read(stdin, offsets[count]))
        inner, outer = sha256(pads[:BLOCK]).copy, sha256(pads[BLOCK:]).copy
        out = bytearray()
        for k in range(count):
            i = inner()
            i.update(data[offsets[k] : offsets[k + 1]])
            o = outer()
            o.update(i.digest())
            out += o.digest()
        stdout.write(out)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
