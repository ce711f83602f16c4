"""Encrypted column values: their format, and decrypting one (cryptography only, no
pyarrow: ``protect.ColumnCipher`` encrypts whole Arrow columns with these).

Encrypted values are self-describing text, ``enc:v1:<algorithm>:<key id>:<base64url>``:
AES-SIV (deterministic: equal values give equal ciphertexts, so the column stays
joinable) or AES-GCM with a random 96-bit nonce. The associated data binds the column
name, so a value moved to another column does not decrypt. Both keys are derived with
HKDF-SHA256 from the configured key, one per algorithm.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "enc:v1:"
SIV, GCM = "aes-siv", "aes-gcm"
KEY_BYTES = {SIV: 64, GCM: 32}  # AES-256-SIV takes two 256-bit keys


class DecryptError(ValueError):
    """A value that is not ours, was made with another key, or was tampered with."""


def derive_key(secret: bytes, algorithm: str) -> bytes:
    return HKDF(
        hashes.SHA256(), KEY_BYTES[algorithm], salt=None, info=f"secure_etl/{algorithm}".encode()
    ).derive(secret)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decrypt_value(text: str, column: str, keys: Mapping[str, bytes]) -> str:
    """The plaintext of one encrypted value of ``column``; ``keys`` maps key ids to key
    material. DecryptError if it is not ours, the key is unknown, or it was altered."""
    if not text.startswith(PREFIX):
        raise DecryptError("not an encrypted value")
    try:
        algorithm, key_id, payload = text[len(PREFIX) :].split(":", 2)
        data = unb64(payload)
    except ValueError:
        raise DecryptError("malformed encrypted value") from None
    if algorithm not in KEY_BYTES:
        raise DecryptError(f"unknown algorithm {algorithm!r}")
    if key_id not in keys:
        raise DecryptError(f"unknown key id {key_id!r}")
    key = derive_key(keys[key_id], algorithm)
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
