"""Column encryption and masking, on Arrow columns.

The encrypted-value format and the decryption of one value are in ``value_cipher.py``
(no pyarrow there, so ``secure-etl keys decrypt`` starts without it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from secure_etl.etl.value_cipher import GCM, PREFIX, SIV, b64, derive_key


@dataclass(frozen=True)
class ColumnCipher:
    secret: bytes
    key_id: str
    deterministic: bool

    @property
    def algorithm(self) -> str:
        return SIV if self.deterministic else GCM

    def column(self, array: pa.Array | pa.ChunkedArray, column: str) -> pa.Array:
        """Every value (its UTF-8 text) encrypted; nulls stay null."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
        key = derive_key(self.secret, self.algorithm)
        head = f"{PREFIX}{self.algorithm}:{self.key_id}:"
        bound = [column.encode()]
        out: list[str | None] = []
        if self.deterministic:
            siv = AESSIV(key)
            for value in text.cast(pa.binary()).to_pylist():
                out.append(None if value is None else head + b64(siv.encrypt(value, bound)))
        else:
            gcm = AESGCM(key)
            for value in text.cast(pa.binary()).to_pylist():
                if value is None:
                    out.append(None)
                    continue
                nonce = os.urandom(12)
                out.append(head + b64(nonce + gcm.encrypt(nonce, value, bound[0])))
        return pa.array(out, pa.string())


def mask_column(array: pa.Array | pa.ChunkedArray, style: str, keep: int = 4) -> pa.Array:
    """Values for non-production targets: ``keep_last`` shows the last ``keep``
    characters after a fixed ``****`` (a value not longer than ``keep`` is all masked),
    ``email_domain`` keeps ``*@domain`` (no ``@``: all masked), ``null`` drops them."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if style == "null":
        return pa.nulls(len(array), pa.string())
    text = array if pa.types.is_string(array.type) else pc.cast(array, pa.string())
    if style == "email_domain":
        has_at = pc.match_substring(text, "@")
        masked = pc.replace_substring_regex(text, r"^[^@]*@", "*@")
        return pc.if_else(has_at, masked, pa.scalar("****"))
    if style == "keep_last":
        if keep == 0:
            return pc.if_else(pc.is_valid(text), pa.scalar("****"), pa.scalar(None, pa.string()))
        tail = pc.utf8_slice_codeunits(text, -keep)
        masked = pc.binary_join_element_wise("****", tail, "")
        return pc.if_else(pc.greater(pc.utf8_length(text), keep), masked, pa.scalar("****"))
    raise ValueError(f"unknown mask style {style!r}")
