"""A tamper-evident audit log: append-only, one canonical JSON record per line, each
holding the hash of the one before; signed checkpoints (Ed25519) of its size and head
hash are written to a second place, so that a rewritten or truncated log is caught even
if whoever rewrote it recomputed every hash.

Records carry names, ids and digests only: never a data value.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_etl.config import PlatformConfig
from secure_etl.security.files import (
    SECRET_MODE,
    private_dir,
    read_secret,
    write_atomic,
    write_secret,
)

GENESIS = "0" * 64
FIELDS = (
    "seq",
    "time",
    "actor",
    "action",
    "asset",
    "partition",
    "run_id",
    "inputs",
    "outputs",
    "key_ids",
    "prev",
)


def canonical(record: Mapping) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The checkpoint signing key (0600), created on first use with its public half
    beside it (``.pub``)."""
    path = Path(path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        write_secret(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_atomic(
            path.with_suffix(".pub"),
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    key = serialization.load_pem_private_key(read_secret(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


@dataclass
class AuditLog:
    path: Path
    checkpoint_dir: Path
    signing_key_path: Path
    checkpoint_every: int = 100

    def append(
        self,
        actor: str,
        action: str,
        asset: str = "",
        partition: str = "",
        run_id: str = "",
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        key_ids: list[str] | None = None,
    ) -> dict:
        """Append one record (under an exclusive lock: concurrent writers queue up)."""
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, SECRET_MODE)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            last = _last_record(handle)
            record = {
                "seq": (last["seq"] + 1) if last else 1,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "actor": actor,
                "action": action,
                "asset": asset,
                "partition": partition,
                "run_id": run_id,
                "inputs": dict(inputs or {}),
                "outputs": dict(outputs or {}),
                "key_ids": list(key_ids or []),
                "prev": last["hash"] if last else GENESIS,
            }
            record["hash"] = record_hash(record)
            handle.write(canonical(record) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
            if record["seq"] % self.checkpoint_every == 0:
                self._checkpoint(record, size)
        return record

    def checkpoint(self) -> dict | None:
        """Sign the log's current head now (e.g. at the end of a run)."""
        if not self.path.exists():
            return None
        with self.path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            last = _last_record(handle)
            size = handle.seek(0, os.SEEK_END)
        return self._checkpoint(last, size) if last else None

    def _checkpoint(self, record: dict, size: int) -> dict:
        key = load_signing_key(self.signing_key_path)
        body = {
            "records": record["seq"],
            "size": size,
            "head": record["hash"],
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        signed = {**body, "signature": base64.b64encode(key.sign(canonical(body))).decode()}
        write_atomic(self.checkpoint_dir / f"{record['seq']:012d}.json", canonical(signed))
        return signed


def platform_audit_log(config: PlatformConfig) -> AuditLog:
    """The configured platform's audit log."""
    state = config.resolved_state_dir()
    audit = config.audit
    return AuditLog(
        state / audit.path,
        state / audit.checkpoint_dir,
        state / audit.signing_key,
        audit.checkpoint_every,
    )


def verify_log(log: AuditLog) -> Verdict:
    return verify(log.path, log.checkpoint_dir, log.signing_key_path.with_suffix(".pub"))


def _last_record(handle) -> dict | None:
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return None
    position, tail = end, b""
    while position > 0 and tail.count(b"\n") < 2:
        step = min(4096, position)
        position -= step
        handle.seek(position)
        tail = handle.read(step) + tail
    handle.seek(0, os.SEEK_END)
    return json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    checkpoints: int
    problem: str = ""


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset after the line, line) for each line."""
    offset = 0
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, 1):
            offset += len(line)
            yield number, offset, line


def verify(path: Path, checkpoint_dir: Path | None, public_key_path: Path | None) -> Verdict:
    """Check every signed checkpoint's signature, recompute the chain, then compare
    each checkpoint with the chain. Names the first bad record (by line) or checkpoint."""
    path = Path(path)
    if not path.exists():
        return Verdict(False, 0, 0, f"{path}: no audit log")
    points: list[tuple[Path, dict]] = []
    if checkpoint_dir and Path(checkpoint_dir).is_dir():
        public = serialization.load_pem_public_key(Path(public_key_path).read_bytes())
        if not isinstance(public, Ed25519PublicKey):
            return Verdict(False, 0, 0, f"{public_key_path}: not an Ed25519 public key")
        for point in sorted(Path(checkpoint_dir).glob("*.json")):
            try:
                signed = json.loads(point.read_bytes())
                body = {k: signed[k] for k in ("records", "size", "head", "time")}
                public.verify(base64.b64decode(signed["signature"]), canonical(body))
            except (ValueError, KeyError, TypeError, InvalidSignature):
                return Verdict(False, 0, 0, f"{point}: checkpoint signature is not valid")
            points.append((point, body))
    wanted = {body["records"] for _, body in points}
    heads: dict[int, tuple[str, int]] = {}  # seq -> (hash, log size after it)
    previous, count = GENESIS, 0
    for number, offset, line in _lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError:
            return Verdict(False, count, 0, f"{where}: not a JSON record")
        if not isinstance(record, dict) or set(record) != {*FIELDS, "hash"}:
            return Verdict(False, count, 0, f"{where}: not an audit record")
        if canonical(record) + b"\n" != line:
            return Verdict(False, count, 0, f"{where}: not in canonical form (edited?)")
        if record["seq"] != count + 1:
            return Verdict(
                False,
                count,
                0,
                f"{where}: sequence {record['seq']} where {count + 1} was due "
                "(a record was removed, moved or inserted)",
            )
        if record["prev"] != previous:
            return Verdict(False, count, 0, f"{where}: does not follow the record before it")
        if record_hash(record) != record["hash"]:
            return Verdict(False, count, 0, f"{where}: its hash does not match (modified)")
        previous, count = record["hash"], count + 1
        if count in wanted:
            heads[count] = (previous, offset)
    for checked, (point, body) in enumerate(points):
        if body["records"] > count:
            return Verdict(
                False,
                count,
                checked,
                f"{path}: truncated: checkpoint {point.name} signed {body['records']} "
                f"records, the log has {count}",
            )
        if heads[body["records"]] != (body["head"], body["size"]):
            return Verdict(
                False,
                count,
                checked,
                f"{path}: record {body['records']} differs from checkpoint {point.name} "
                "(the log was rewritten)",
            )
    return Verdict(True, count, len(points))
