"""What a key provider is (the local key file, Vault transit): a leaf both implement."""

from __future__ import annotations

from typing import Protocol


class KeyUnwrapError(Exception):
    """A wrapped key that this provider cannot open (another master key, or altered)."""


class KeyProvider(Protocol):
    def wrap(self, key: bytes, key_id: str) -> str:
        """``key`` encrypted under the master key, as text; ``key_id`` is bound to it."""

    def unwrap(self, wrapped: str, key_id: str) -> bytes:
        """The key back; KeyUnwrapError if it does not authenticate."""
