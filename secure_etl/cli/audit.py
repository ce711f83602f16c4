"""``secure-etl audit verify``: the audit log's hash chain and signed checkpoints (no Dagster)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from secure_etl.cli.exits import EXIT_FAILED, EXIT_OK
from secure_etl.errors import UserError


def add_commands(commands) -> None:
    """Add this command family to the top-level ``commands``."""
    audit = commands.add_parser("audit", help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify",
        help="recompute the audit log's hash chain and check its signed checkpoints",
        description="Exit 0 when the log verifies, 1 when it does not (the first bad "
        "record or checkpoint is named), 2 on unusable input.",
    )
    verify.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="a log file (default: the configured platform's log, its file or its table)",
    )
    verify.add_argument("--checkpoints", type=Path, metavar="DIR", help="checkpoint directory")
    verify.add_argument("--public-key", type=Path, metavar="PEM", help="checkpoint public key")
    verify.add_argument("--config", type=Path, help="platform config")
    verify.set_defaults(handler=_audit_verify)


def _audit_verify(args: argparse.Namespace) -> int:
    from secure_etl.cli.state import no_state_note
    from secure_etl.config import load_config
    from secure_etl.security.audit import key_pin, pinned_key, verify
    from secure_etl.security.audit_trail import platform_audit_log

    platform = load_config(args.config)
    log = platform_audit_log(platform)
    shared = args.path is None and platform.audit.backend != "file"
    path = args.path or log.path
    if args.path is None:
        print(f"audit log: {path}")
    else:
        _check_log_file(args.path)
    if args.checkpoints is not None and not args.checkpoints.is_dir():
        what = "is not a directory" if args.checkpoints.exists() else "does not exist"
        raise UserError(f"--checkpoints {args.checkpoints}: {what} (give the checkpoint directory)")
    pin = str(args.public_key) if args.public_key else log.public_key
    if pin is None:
        # The key beside the log is the one a forger would replace: never trust it here.
        beside = log.signing_key_path.with_suffix(".pub")
        hint = ""
        try:
            hint = f"; the key at {beside} is {key_pin(pinned_key(str(beside)))}"
        except ValueError:
            pass
        print(
            "FAILED: the checkpoint public key is not pinned: set audit.public_key in the "
            f"config or give --public-key{hint} (pin it only if you know it is yours)"
        )
        return EXIT_FAILED
    try:
        public = pinned_key(pin)
    except ValueError as err:
        raise UserError(
            f"{'--public-key' if args.public_key else 'audit.public_key'}: {err}"
        ) from None
    if shared:
        verdict = log.verify(args.checkpoints, public)
    else:
        verdict = verify(path, args.checkpoints or log.checkpoint_dir, public)
    if verdict.torn:
        lines = ", ".join(map(str, verdict.torn))
        print(f"note: {path}: line {lines}: a write cut short (its process was killed), skipped")
    if verdict.ok:
        print(f"ok: {verdict.records} records, {verdict.checkpoints} signed checkpoints")
        return EXIT_OK
    note = no_state_note(platform, args.config) if not shared and not path.exists() else None
    if note:
        print(f"secure-etl: {note}", file=sys.stderr)
    print(f"FAILED: {verdict.problem}")
    return EXIT_FAILED


def _check_log_file(path: Path) -> None:
    """Refuse a PATH that cannot be an audit log (exit 2); a log whose records do not
    verify is a failed verification instead (exit 1)."""
    if not path.exists():
        raise UserError(f"{path}: does not exist (give the audit log's path)")
    if path.is_dir():
        raise UserError(f"{path}: is a directory (give the audit log's path)")
    try:
        with path.open("rb") as handle:
            start = handle.read(1)
    except OSError as err:
        raise UserError(f"{path}: cannot read it: {err.strerror or err}") from None
    if not start:
        raise UserError(f"{path}: is empty: not an audit log (it starts with a record)")
    if start != b"{":
        raise UserError(f"{path}: not an audit log (one JSON record a line)")
