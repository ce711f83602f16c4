"""Key wrapping: data keys are wrapped (encrypted) by a master key that never leaves its
provider. The interface is two calls, so a KMS or Vault transit provider fits beside the
local key file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_etl.config import PlatformConfig
from secure_etl.security.files import read_secret, write_secret
from secure_etl.security.key_provider import KeyProvider, KeyUnwrapError

__all__ = ["KeyProvider", "KeyUnwrapError", "LocalKeyFile", "provider_for"]


class LocalKeyFile:
    """A 256-bit master key in an owner-only file (created on first use; a file others
    can read is refused); data keys are wrapped with AES-256-GCM, the key id as
    associated data."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"{self.path}: no master key")
            write_secret(self.path, os.urandom(32))
        master = read_secret(self.path)  # refuses a file others can read
        if len(master) != 32:
            raise ValueError(f"{self.path}: a master key is 32 bytes, this has {len(master)}")
        self._aead = AESGCM(master)

    def wrap(self, key: bytes, key_id: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, key, key_id.encode())).decode()

    def unwrap(self, wrapped: str, key_id: str) -> bytes:
        try:
            data = base64.b64decode(wrapped)
            return self._aead.decrypt(data[:12], data[12:], key_id.encode())
        except (InvalidTag, ValueError):
            raise KeyUnwrapError(f"{self.path}: cannot unwrap the key for {key_id!r}") from None


def provider_for(platform: PlatformConfig) -> KeyProvider:
    """The configured key provider: the local master-key file or Vault transit."""
    kms = platform.kms
    if kms.type == "vault_transit":
        from secure_etl.security.vault_transit import VaultTransit

        return VaultTransit.from_config(kms)
    path = Path(kms.path)
    return LocalKeyFile(path if path.is_absolute() else platform.resolved_state_dir() / path)
