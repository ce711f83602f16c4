"""HMAC-SHA256 of one Arrow column: a small module, so that a worker process that only
hashes imports nothing else (hashlib and pyarrow)."""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import sha256

import pyarrow as pa
import pyarrow.compute as pc

BLOCK = 64  # SHA-256 block size


def key_pads(secret: bytes) -> tuple[bytes, bytes]:
    """RFC 2104's inner and outer padded keys."""
    key = sha256(secret).digest() if len(secret) > BLOCK else secret
    key = key.ljust(BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hex_many(pads: tuple[bytes, bytes], values: Iterable[bytes | None]) -> list[str | None]:
    """HMAC-SHA256 as hex per value; the keyed inner and outer SHA-256 states are computed
    once and copied per value (two copies and two updates instead of re-keying)."""
    inner, outer = sha256(pads[0]).copy, sha256(pads[1]).copy
    out: list[str | None] = []
    append = out.append
    for value in values:
        if value is None:
            append(None)
            continue
        i = inner()
        i.update(value)
        o = outer()
        o.update(i.digest())
        append(o.hexdigest())
    return out


def hmac_column(pads: tuple[bytes, bytes], array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column's values (their UTF-8 text) replaced by their HMACs; nulls stay null.
    Repeated values are hashed once, so a column with few distinct values costs little."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
    data = text.cast(pa.binary())
    encoded = pc.dictionary_encode(data)
    if len(encoded.dictionary) * 2 <= len(data):
        hashed = pa.array(hex_many(pads, encoded.dictionary.to_pylist()), pa.string())
        return pc.take(hashed, encoded.indices)
    return pa.array(hex_many(pads, data.to_pylist()), pa.string())
