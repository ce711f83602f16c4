"""Keys for pseudonymisation: from the environment, or a 0600 key file."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from secure_etl.config import HmacKeyConfig, KeySource
from secure_etl.security.files import InsecureSecretFile, read_secret, write_secret

MIN_KEY_BYTES = 16


class KeyUnavailable(Exception):
    """A key that is missing, unreadable or too short; the message says where it looked."""


@dataclass(frozen=True)
class HmacKey:
    """A secret with its id; ``fingerprint`` identifies the secret without revealing it."""

    key_id: str
    secret: bytes = b""

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(b"secure_etl key fingerprint\0" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the secret
        return f"HmacKey(key_id={self.key_id!r}, fingerprint={self.fingerprint!r})"


def load_hmac_key(name: str, config: HmacKeyConfig, state_dir: Path) -> HmacKey:
    """The current secret of key ``name``, with its key id (``id``, default the name).
    The env variable wins (base64 or hex); else the key file, created if allowed."""
    key_id = config.id or name
    return HmacKey(key_id, _load_secret(f"key {name!r}", config, state_dir, config.create))


def load_key_ring(name: str, config: HmacKeyConfig, state_dir: Path) -> dict[str, HmacKey]:
    """Every secret of key ``name`` by key id: the current one and those under
    ``previous`` (rotated out, kept to verify or read what was written with them)."""
    ring = {key.key_id: key for key in [load_hmac_key(name, config, state_dir)]}
    for key_id, source in config.previous.items():
        label = f"key {name!r} previous id {key_id!r}"
        ring[key_id] = HmacKey(key_id, _load_secret(label, source, state_dir, create=False))
    return ring


def _load_secret(label: str, source: KeySource, state_dir: Path, create: bool) -> bytes:
    if source.env and os.environ.get(source.env):
        return _decode(os.environ[source.env], f"${source.env}")
    if not source.file:
        raise KeyUnavailable(f"{label}: environment variable {source.env} is not set")
    path = Path(source.file)
    path = path if path.is_absolute() else state_dir / path
    if not path.exists():
        if not create:
            where = f"${source.env} is not set and " if source.env else ""
            raise KeyUnavailable(f"{label}: {where}key file {path} does not exist")
        write_secret(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
    try:
        raw = read_secret(path)
    except InsecureSecretFile as err:
        raise KeyUnavailable(f"{label}: {err}") from None
    return _decode(raw.decode("ascii", "replace"), str(path))


def _decode(text: str, where: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            secret = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(secret) < MIN_KEY_BYTES:
            raise KeyUnavailable(
                f"{where}: the key has {len(secret)} bytes, at least 16 are needed"
            )
        return secret
    raise KeyUnavailable(f"{where}: the key is neither hex nor base64")


def insecure_key_files(
    keys: dict[str, HmacKeyConfig], extra: list[Path], state_dir: Path
) -> list[str]:
    """Key files that exist but others can read or write: refused at start-up, before any
    run uses them."""
    sources = [s for k in keys.values() for s in [k, *k.previous.values()]]
    paths = [Path(s.file) for s in sources if s.file] + list(extra)
    problems = []
    for path in paths:
        path = path if path.is_absolute() else state_dir / path
        if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(
                f"{path}: mode {stat.S_IMODE(path.stat().st_mode):04o} lets others read it; "
                f"run: chmod 600 {path}"
            )
    return problems
