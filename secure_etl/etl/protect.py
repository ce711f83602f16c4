"""Column encryption and masking.

Encrypted values are self-describing text, ``enc:v1:<algorithm>:<key id>:<base64url>``:
AES-SIV (deterministic: equal values give equal ciphertexts, so the column stays
joinable) or AES-GCM with a random 96-bit nonce. The associated data binds the column
name, so a value moved to another column does not decrypt. Both keys are derived with
HKDF-SHA256 from the configured key, one per algorithm.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "enc:v1:"
SIV, GCM = "aes-siv", "aes-gcm"
_KEY_BYTES = {SIV: 64, GCM: 32}  # AES-256-SIV takes two 256-bit keys


class DecryptError(ValueError):
    """A value that is not ours, was made with another key, or was tampered with."""


def _derive(secret: bytes, algorithm: str) -> bytes:
    return HKDF(
        hashes.SHA256(), _KEY_BYTES[algorithm], salt=None, info=f"secure_etl/{algorithm}".encode()
    ).derive(secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
        key = _derive(self.secret, self.algorithm)
        head = f"{PREFIX}{self.algorithm}:{self.key_id}:"
        bound = [column.encode()]
        out: list[str | None] = []
        if self.deterministic:
            siv = AESSIV(key)
            for value in text.cast(pa.binary()).to_pylist():
                out.append(None if value is None else head + _b64(siv.encrypt(value, bound)))
        else:
            gcm = AESGCM(key)
            for value in text.cast(pa.binary()).to_pylist():
                if value is None:
                    out.append(None)
                    continue
                nonce = os.urandom(12)
                out.append(head + _b64(nonce + gcm.encrypt(nonce, value, bound[0])))
        return pa.array(out, pa.string())


def decrypt_value(text: str, column: str, keys: Mapping[str, bytes]) -> str:
    """The plaintext of one encrypted value of ``column``; ``keys`` maps key ids to key
    material. DecryptError if it is not ours, the key is unknown, or it was altered."""
    if not text.startswith(PREFIX):
        raise DecryptError("not an encrypted value")
    try:
        algorithm, key_id, payload = text[len(PREFIX) :].split(":", 2)
        data = _unb64(payload)
    except ValueError:
        raise DecryptError("malformed encrypted value") from None
    if algorithm not in _KEY_BYTES:
        raise DecryptError(f"unknown algorithm {algorithm!r}")
    if key_id not in keys:
        raise DecryptError(f"unknown key id {key_id!r}")
    key = _derive(keys[key_id], algorithm)
    try:
        if algorithm == SIV:
            plain = AESSIV(key).decrypt(data, [column.encode()])
        else:
            plain = AESGCM(key).decrypt(data[:12], data[12:], column.encode())
    except (InvalidTag, ValueError):
        raise DecryptError(
            f"{column}: the value does not authenticate (altered, wrong key or wrong column)"
        ) from None
    return plain.decode()


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
