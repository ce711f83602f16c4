"""The platform's audit trail, whichever backend keeps it: the local file (``audit.py``,
the default) or a PostgreSQL table many machines append to (``audit_postgres.py``, loaded
only when configured). Both have the same calls; this module is where they meet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secure_etl.config import PlatformConfig
from secure_etl.security.audit import (
    PIN_PREFIX,
    AuditLog,
    Verdict,
    pinned_key,
    verify,
)

if TYPE_CHECKING:
    from secure_etl.security.audit_postgres import PostgresAuditLog


def platform_audit_log(config: PlatformConfig) -> AuditLog | PostgresAuditLog:
    """The configured platform's audit log: the local file (the default) or a
    PostgresAuditLog (``audit.backend: postgres``), which has the same calls."""
    state = config.resolved_state_dir()
    audit = config.audit
    pin = audit.public_key
    if pin and not pin.startswith(PIN_PREFIX):
        pin = str(state / pin)
    if audit.postgres is not None:
        # The driver loads only for this backend: `audit verify` on a file stays light.
        from secure_etl.security.audit_postgres import postgres_audit_log

        return postgres_audit_log(
            audit.postgres,
            state / audit.checkpoint_dir,
            state / audit.signing_key,
            audit.checkpoint_every,
            pin,
        )
    return AuditLog(
        state / audit.path,
        state / audit.checkpoint_dir,
        state / audit.signing_key,
        audit.checkpoint_every,
        pin,
    )


def verify_log(log: AuditLog | PostgresAuditLog) -> Verdict:
    """Verify a platform's log with its pinned key, else (unpinned) the ``.pub`` beside
    its signing key."""
    if log.public_key:
        try:
            public: Ed25519PublicKey | Path = pinned_key(log.public_key)
        except ValueError as err:
            return Verdict(False, 0, 0, f"audit.public_key: {err}")
    else:
        public = log.signing_key_path.with_suffix(".pub")
    if not isinstance(log, AuditLog):
        return log.verify(None, public)
    return verify(log.path, log.checkpoint_dir, public)


def read_records(log: AuditLog | PostgresAuditLog) -> Iterator[dict]:
    """The log's records, oldest first, without checking them (``verify`` does that):
    lines that do not parse (a torn write) are passed over; no log, no records."""
    if not isinstance(log, AuditLog):
        yield from log.records()
        return
    if not log.path.exists():
        return
    for line in log.path.open("rb"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record
