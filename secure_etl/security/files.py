"""Writing files atomically, secrets with mode 0600 from the first byte."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SECRET_MODE = 0o600


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call: threads of one process may write the same file at once.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed or (never) widened it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key or other secret, readable by its owner only."""
    write_atomic(path, data, SECRET_MODE)


class InsecureSecretFile(Exception):
    """A secret file that others can read or write."""


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can access."""
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureSecretFile(
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; "
            f"run: chmod 600 {path}"
        )
    return path.read_bytes()
