"""A tamper-evident audit log: append-only, one canonical JSON record per line, each
holding the hash of the one before; signed checkpoints (Ed25519) of its size and head
hash are written to a second place, so that a rewritten or truncated log is caught even
if whoever rewrote it recomputed every hash.

Nothing is signed over a broken chain: a checkpoint first verifies every record since
the one before it. The first checkpoint also writes a record saying checkpoints are on,
so a log that has it and a checkpoint store that is gone or empty fails verification.
A line cut short by a killed writer (no newline, not a record) is terminated by the next
append, which chains to the last whole record; the verifier names such torn lines and
passes over them, since a fragment cannot stand in for a record.

Records carry names, ids and digests only: never a data value.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_etl.security.files import (
    SECRET_MODE,
    private_dir,
    read_secret,
    tighten_open_file,
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
# Records also name the host that wrote them (logs from before that verify without it).
CHECKPOINTS_ON = "audit.checkpoints"  # written once, with the first checkpoint
PIN_PREFIX = "ed25519:"
BLOCK = 1 << 16
_TORN_START = b'{"action":"'  # how every canonical record begins


class AuditChainBroken(Exception):
    """The log does not verify since its last checkpoint: nothing was signed over it."""


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


def key_pin(public: Ed25519PublicKey) -> str:
    """The key itself as one short string for the config: ``ed25519:<64 hex digits>``."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PIN_PREFIX + raw.hex()


def pinned_key(pin: str) -> Ed25519PublicKey:
    """The public key a pin names: ``ed25519:<hex>``, or the path of a PEM file.
    ValueError (naming it) when it is neither."""
    if pin.startswith(PIN_PREFIX):
        try:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(pin[len(PIN_PREFIX) :]))
        except ValueError:
            raise ValueError(f"{pin[:80]!r}: not ed25519: and 64 hex digits") from None
    try:
        data = Path(pin).read_bytes()
    except OSError as err:
        raise ValueError(f"{pin}: not a readable PEM public key ({err.strerror or err})") from None
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if not data.strip():
            what = "the file is empty"
        elif b"PRIVATE KEY" + b"-----" in data:  # two parts: no key marker in the repository
            what = "it holds a private key: give the public one"
        elif b"-----BEGIN " in data:
            what = "it holds another kind of PEM block"
        else:
            what = "it is not PEM text"
        raise ValueError(
            f"{pin}: not a PEM public key ({what}); give the .pub file or ed25519:<64 hex>"
        ) from None
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError(f"{pin}: not an Ed25519 public key")
    return public


def record_fields(
    actor: str,
    action: str,
    asset: str = "",
    partition: str = "",
    run_id: str = "",
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    key_ids: list[str] | None = None,
) -> dict:
    """The fields of a record as a writer gives them (``next_record`` adds the chain's)."""
    return {
        "actor": actor,
        "action": action,
        "asset": asset,
        "partition": partition,
        "run_id": run_id,
        "inputs": dict(inputs or {}),
        "outputs": dict(outputs or {}),
        "key_ids": list(key_ids or []),
    }


@dataclass
class AuditLog:
    path: Path
    checkpoint_dir: Path
    signing_key_path: Path
    checkpoint_every: int = 100
    public_key: str | None = None  # the pin (``ed25519:<hex>`` or a PEM path), if any

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
        """Append one record (under an exclusive lock: concurrent writers queue up), and
        return once it is durable. Records the threads of this process append at the
        same time are written together, under one lock and one fsync.
        Every ``checkpoint_every`` records the head is signed; AuditChainBroken (after the
        record is written) if the chain since the last checkpoint does not verify."""
        fields = record_fields(actor, action, asset, partition, run_id, inputs, outputs, key_ids)
        return _group_for(self).append(self, fields)

    def _append_batch(self, batch: list[_Pending]) -> None:
        try:
            with self._locked() as handle:
                records = _write_all(handle, [pending.fields for pending in batch])
                for pending, record in zip(batch, records, strict=True):
                    pending.record = record
                crossing = [
                    p for p in batch if records and p.record["seq"] % self.checkpoint_every == 0
                ]
                if crossing:
                    try:
                        self._sign(handle)
                    except AuditChainBroken as err:
                        crossing[0].error = err
        except BaseException as err:
            for pending in batch:
                if pending.record is None:
                    pending.error = err
            raise
        finally:
            for pending in batch:
                pending.done = True

    def checkpoint(self) -> dict | None:
        """Sign the log's current head now (e.g. at the end of a run); AuditChainBroken if
        the chain since the last checkpoint does not verify."""
        if not self.path.exists():
            return None
        with self._locked() as handle:
            return self._sign(handle)

    def _locked(self) -> BinaryIO:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, SECRET_MODE)
        tighten_open_file(fd, self.path)
        handle = os.fdopen(fd, "r+b")
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        return handle

    def _sign(self, handle: BinaryIO) -> dict | None:
        if _tail(handle)[0] is None:
            return None  # an empty log: nothing to sign
        key = signing_key(self)
        last_point = last_checkpoint(self.checkpoint_dir, key.public_key())
        announced = _verify_since(handle, self.path, last_point)
        if last_point is None:
            refuse_a_lost_store(self.path, self.checkpoint_dir, announced)
            _write(handle, **checkpoints_on(str(self.checkpoint_dir), key))
        last, size = _tail(handle)
        if last_point and last_point["records"] == last["seq"]:
            return last_point  # nothing new since
        signed = sign_checkpoint(key, last["seq"], size, last["hash"])
        return write_checkpoint(self.checkpoint_dir, signed)


def signing_key(log) -> Ed25519PrivateKey:
    """The log's checkpoint signing key; AuditChainBroken if it is not the pinned one."""
    key = load_signing_key(log.signing_key_path)
    public = key.public_key()
    try:
        pinned = pinned_key(log.public_key) if log.public_key else public
    except ValueError as err:
        raise AuditChainBroken(f"audit.public_key: {err}") from None
    if key_pin(pinned) != key_pin(public):
        raise AuditChainBroken(
            f"{log.signing_key_path}: not the key audit.public_key pins: refusing to sign"
        )
    return key


def refuse_a_lost_store(log: object, store: object, announced: int) -> None:
    """AuditChainBroken if the log ``announced`` checkpoints that ``store`` lost."""
    if announced:
        raise AuditChainBroken(
            f"{log}: checkpoints were written (record {announced}), but "
            f"{store} has none: restore it; nothing is signed until then"
        )


def checkpoints_on(store: str, key: Ed25519PrivateKey) -> dict:
    """The fields of the record that says checkpoints are on (written with the first)."""
    return {
        "actor": "audit",
        "action": CHECKPOINTS_ON,
        "outputs": {"checkpoint_dir": store, "public_key": key_pin(key.public_key())},
    }


def sign_checkpoint(key: Ed25519PrivateKey, records: int, size: int, head: str) -> dict:
    """A signed checkpoint of the head ``records`` (the log ``size`` long after it)."""
    body = {
        "records": records,
        "size": size,
        "head": head,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return {**body, "signature": base64.b64encode(key.sign(canonical(body))).decode()}


def write_checkpoint(checkpoint_dir: Path, signed: dict) -> dict:
    """Write a signed checkpoint into ``checkpoint_dir``, named by the records it signs."""
    write_atomic(Path(checkpoint_dir) / checkpoint_name(signed["records"]), canonical(signed))
    return signed


def last_checkpoint(checkpoint_dir: Path, public: Ed25519PublicKey) -> dict | None:
    """The body of the newest checkpoint; AuditChainBroken if this key did not sign it."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    points = sorted(checkpoint_dir.glob("*.json"))
    if not points:
        return None
    try:
        body = signed_body(points[-1].read_bytes(), public)
    except OSError:
        body = None
    if body is None or points[-1].name != checkpoint_name(body["records"]):
        raise AuditChainBroken(f"{points[-1]}: not a checkpoint this key signed under its name")
    return body


def _write(handle: BinaryIO, **fields) -> dict:
    """Append the next record to the locked log and make it durable."""
    return _write_all(handle, [fields])[0]


def _write_all(handle: BinaryIO, batch: list[dict]) -> list[dict]:
    """Append the next records to the locked log, chained, and make them durable (one
    write, one fsync)."""
    last, _ = _tail(handle)
    records, lines = [], []
    for fields in batch:
        record = next_record(last, **fields)
        records.append(record)
        lines.append(canonical(record) + b"\n")
        last = record
    handle.write(b"".join(lines))
    handle.flush()
    os.fsync(handle.fileno())
    return records


def next_record(last: Mapping | None, **fields) -> dict:
    """The record that follows ``last`` (None: the first), its hash included."""
    record = {
        "seq": (last["seq"] + 1) if last else 1,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        "host": socket.gethostname(),  # which machine wrote it, when many write one chain
        "asset": "",
        "partition": "",
        "run_id": "",
        "inputs": {},
        "outputs": {},
        "key_ids": [],
        **fields,
        "prev": last["hash"] if last else GENESIS,
    }
    record["hash"] = record_hash(record)
    return record


@dataclass
class _Pending:
    fields: dict
    done: bool = False
    record: dict | None = None
    error: BaseException | None = None


class _GroupCommit:
    """The appends of one process's threads to one log, written in batches: the thread
    that gets to write takes every record waiting (in order), so N threads appending at
    once cost one lock and one fsync, not N; each returns once its record is durable."""

    def __init__(self) -> None:
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()

    def append(self, log: AuditLog, fields: dict) -> dict:
        pending = _Pending(fields)
        with self._queue_lock:
            self._queue.append(pending)
        with self._writer:
            if not pending.done:  # no writer took it yet: take it and all waiting
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                log._append_batch(batch)
        if pending.error is not None:
            raise pending.error
        assert pending.record is not None
        return pending.record


_GROUPS: dict[tuple, _GroupCommit] = {}
_GROUPS_LOCK = threading.Lock()


def _group_for(log: AuditLog) -> _GroupCommit:
    key = (
        str(log.path),
        str(log.checkpoint_dir),
        str(log.signing_key_path),
        log.checkpoint_every,
        log.public_key,
    )
    with _GROUPS_LOCK:
        return _GROUPS.setdefault(key, _GroupCommit())


def _tail(handle: BinaryIO) -> tuple[dict | None, int]:
    """The last whole record of the locked log and the offset after its line. A tail cut
    short (no newline) is terminated first, so the next record starts on a line of its own."""
    end = handle.seek(0, os.SEEK_END)
    if end:
        handle.seek(end - 1)
        if handle.read(1) != b"\n":
            handle.write(b"\n")
            handle.flush()
            end += 1
    for offset, line in _lines_backwards(handle, end):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line: the record before it is the head
        if isinstance(record, dict) and {"seq", "hash"} <= set(record):
            handle.seek(0, os.SEEK_END)
            return record, offset + len(line)
    handle.seek(0, os.SEEK_END)
    return None, 0


def _lines_backwards(handle: BinaryIO, end: int, block: int = BLOCK) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its newline) of each line before ``end``, the last first.
    Reads blocks backwards and touches each byte once, however long a line is."""
    pieces: list[bytes] = []
    position = line_end = end
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        chunk = handle.read(step)
        stop = len(chunk)
        while True:
            # Search below the current line's own last byte: its newline ends it.
            cut = chunk.rfind(b"\n", 0, min(stop, line_end - 1 - position))
            if cut < 0:
                pieces.append(chunk[:stop])
                break
            pieces.append(chunk[cut + 1 : stop])
            line_end, stop = position + cut + 1, cut + 1
            yield line_end, b"".join(reversed(pieces))
            pieces = []
    if line_end > 0:
        yield 0, b"".join(reversed(pieces))


def checkpoint_name(records: object) -> str:
    return f"{records:012d}.json" if isinstance(records, int) else ""


def signed_body(data: bytes, public: Ed25519PublicKey) -> dict | None:
    """The body of a signed checkpoint whose signature verifies, else None."""
    try:
        signed = json.loads(data)
        body = {k: signed[k] for k in ("records", "size", "head", "time")}
        public.verify(base64.b64decode(signed["signature"]), canonical(body))
    except (OSError, ValueError, KeyError, TypeError, InvalidSignature):
        return None
    return body


def check_line(line: bytes, previous: str, count: int) -> tuple[dict | None, str]:
    """The record on ``line`` if it is the next link of the chain, else why not."""
    if not line.endswith(b"\n"):
        line += b"\n"  # a whole record whose newline a killed writer did not write
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not a JSON record"
    if not isinstance(record, dict) or set(record) - {"host"} != {*FIELDS, "hash"}:
        return None, "not an audit record"
    if canonical(record) + b"\n" != line:
        return None, "not in canonical form (edited?)"
    if record["seq"] != count + 1:
        return None, (
            f"sequence {record['seq']} where {count + 1} was due "
            "(a record was removed, moved or inserted)"
        )
    if record["prev"] != previous:
        return None, "does not follow the record before it"
    if record_hash(record) != record["hash"]:
        return None, "its hash does not match (modified)"
    return record, ""


def _is_torn(line: bytes) -> bool:
    """A record cut short by a killed writer: the start of one, and not JSON."""
    text = line.rstrip(b"\n")
    if not text or not (text.startswith(_TORN_START) or _TORN_START.startswith(text)):
        return False
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def _verify_since(handle: BinaryIO, path: Path, point: dict | None) -> int:
    """Verify the locked log from the checkpoint ``point`` (or from the start) to its end;
    AuditChainBroken naming the first bad line. Returns the seq of the checkpoints-on
    record if one was read, else 0."""
    previous, count, start = GENESIS, 0, 0
    if point:
        end = handle.seek(0, os.SEEK_END)
        head = next(_lines_backwards(handle, min(point["size"], end)), (0, b""))[1]
        try:
            signed = json.loads(head) if point["size"] <= end else {}
        except ValueError:
            signed = {}
        if not isinstance(signed, dict) or (signed.get("seq"), signed.get("hash")) != (
            point["records"],
            point["head"],
        ):
            raise AuditChainBroken(
                f"{path}: record {point['records']} is not the one its last checkpoint "
                "signed (rewritten or truncated): refusing to sign"
            )
        previous, count, start = point["head"], point["records"], point["size"]
    handle.seek(start)
    announced = 0
    for line in handle:
        record, problem = check_line(line, previous, count)
        if record is None:
            if _is_torn(line):
                continue
            raise AuditChainBroken(
                f"{path}: record after {count}: {problem}: refusing to sign a broken chain"
            )
        if record["action"] == CHECKPOINTS_ON:
            announced = record["seq"]
        previous, count = record["hash"], count + 1
    handle.seek(0, os.SEEK_END)
    return announced


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    checkpoints: int
    problem: str = ""
    torn: tuple[int, ...] = ()  # line numbers of writes cut short, passed over


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset after the line, line) for each line."""
    offset = 0
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, 1):
            offset += len(line)
            yield number, offset, line


def verify(
    path: Path,
    checkpoint_dir: Path | None,
    public_key: Ed25519PublicKey | Path | None,
) -> Verdict:
    """Check every signed checkpoint's signature, recompute the chain, then compare
    each checkpoint with the chain. Names the first bad record (by line) or checkpoint.
    A log that says checkpoints are on fails when the checkpoint store has none."""
    path = Path(path)
    if not path.exists():
        return Verdict(False, 0, 0, f"{path}: no audit log")
    if checkpoint_dir and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        return Verdict(False, 0, 0, f"{checkpoint_dir}: not a checkpoint directory")
    lines = ((f"{path}:{number}", offset, line) for number, offset, line in _lines(path))
    documents = checkpoint_files(checkpoint_dir)
    return verify_chain(lines, str(path), documents, str(checkpoint_dir), public_key, tearable=True)


def checkpoint_files(checkpoint_dir: Path | None) -> list[tuple[str, str, bytes]]:
    """(where, name, signed bytes) of each checkpoint file, oldest first."""
    files = sorted(Path(checkpoint_dir).glob("*.json")) if checkpoint_dir else []
    documents = []
    for point in files:
        try:
            documents.append((str(point), point.name, point.read_bytes()))
        except OSError:
            documents.append((str(point), point.name, b""))  # not valid: named below
    return documents


def verify_chain(
    lines: Iterable[tuple[str, int, bytes]],
    log: str,
    documents: Iterable[tuple[str, str, bytes]],
    store: str,
    public_key: Ed25519PublicKey | Path | None,
    tearable: bool = False,
) -> Verdict:
    """``verify`` over any store of records and of checkpoints: ``lines`` are (where, the
    log's size after it, the canonical record with a newline), oldest first, ``log``
    names them; ``documents`` are the signed checkpoints as (where, name, bytes), kept in
    ``store``. Only a ``tearable`` log (a file: ``where`` ends in its line number) can
    hold a write cut short."""
    points: list[tuple[str, dict]] = []
    for where, name, data in documents:
        if public_key is None:
            return Verdict(False, 0, 0, "no checkpoint public key to check the checkpoints")
        if isinstance(public_key, Path):
            try:
                public_key = pinned_key(str(public_key))
            except ValueError as err:
                return Verdict(False, 0, 0, str(err))
        body = signed_body(data, public_key)
        if body is None:
            return Verdict(False, 0, 0, f"{where}: checkpoint signature is not valid")
        if name != checkpoint_name(body["records"]):
            # An older checkpoint copied over a newer one would hide a rollback.
            return Verdict(False, 0, 0, f"{where}: signs record {body['records']}, not its name")
        points.append((name, body))
    wanted = {body["records"] for _, body in points}
    heads: dict[int, tuple[str, int]] = {}  # seq -> (hash, log size after it)
    previous, count, torn, announced = GENESIS, 0, [], ""
    for where, offset, line in lines:
        record, problem = check_line(line, previous, count)
        if record is None:
            if tearable and _is_torn(line):
                torn.append(int(where.rsplit(":", 1)[-1]))
                continue
            return Verdict(False, count, 0, f"{where}: {problem}", tuple(torn))
        if record["action"] == CHECKPOINTS_ON and not announced:
            announced = where
        previous, count = record["hash"], count + 1
        if count in wanted:
            heads[count] = (previous, offset)
    if announced and not points:
        return Verdict(
            False,
            count,
            0,
            f"{announced}: checkpoints have been written since this record, but "
            f"{store} has none (deleted or emptied)",
            tuple(torn),
        )
    for checked, (point, body) in enumerate(points):
        if body["records"] > count:
            return Verdict(
                False,
                count,
                checked,
                f"{log}: truncated: checkpoint {point} signed {body['records']} "
                f"records, the log has {count}",
                tuple(torn),
            )
        if heads[body["records"]] != (body["head"], body["size"]):
            return Verdict(
                False,
                count,
                checked,
                f"{log}: record {body['records']} differs from checkpoint {point} "
                "(the log was rewritten)",
                tuple(torn),
            )
    return Verdict(True, count, len(points), torn=tuple(torn))
