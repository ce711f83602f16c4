"""``secure-etl keys pseudonym|decrypt``: every id of a key, each use audited (no Dagster)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secure_etl.cli.exits import EXIT_FAILED, EXIT_OK, Refused
from secure_etl.errors import UserError


def add_commands(commands) -> None:
    """Add this command family to the top-level ``commands``."""
    keys = commands.add_parser(
        "keys", help="use the pseudonym and encryption keys (every key id, old ones included)"
    )
    keys_commands = keys.add_subparsers(metavar="COMMAND")
    pseudonym = keys_commands.add_parser(
        "pseudonym",
        help="the pseudonyms of values (one per line on stdin) under every id of a key",
        description="Prints one JSON object per input line: key id -> pseudonym, for the "
        "current id and each previous one, so data written before a rotation can be found "
        "and verified. The use is recorded in the audit log (counts and key ids, no values).",
    )
    pseudonym.add_argument("key", metavar="KEY", help="the key's name in the config")
    pseudonym.add_argument(
        "--truncate", type=int, metavar="N", help="hex digits kept, as the pipeline does"
    )
    pseudonym.add_argument("--config", type=Path, help="platform config")
    pseudonym.set_defaults(handler=_keys_pseudonym)
    decrypt = keys_commands.add_parser(
        "decrypt",
        help="decrypt encrypted column values (one per line on stdin) with any id of a key",
        description="The key id in each value picks the secret: current or previous. "
        "The use is recorded in the audit log (counts and key ids, no values).",
    )
    decrypt.add_argument("key", metavar="KEY", help="the key's name in the config")
    decrypt.add_argument("--column", required=True, help="the column the values came from")
    decrypt.add_argument("--config", type=Path, help="platform config")
    decrypt.set_defaults(handler=_keys_decrypt)


def _key_ring(args: argparse.Namespace):
    from secure_etl.config import load_config
    from secure_etl.security.hmac_keys import KeyUnavailable, load_key_ring

    platform = load_config(args.config)
    if args.key not in platform.keys:
        raise UserError(f"no key {args.key!r} (configured: {', '.join(platform.keys) or 'none'})")
    try:
        ring = load_key_ring(args.key, platform.keys[args.key], platform.resolved_state_dir())
    except KeyUnavailable as err:
        raise UserError(str(err)) from None
    return platform, ring


def _audit_key_use(platform, action: str, key: str, ring, **fields) -> None:
    """Record a use of a key (ids, counts, intent: never a value); ``Refused`` if the
    audit log refuses it (its chain is broken)."""
    import getpass

    from secure_etl.security.audit import AuditChainBroken
    from secure_etl.security.audit_trail import platform_audit_log

    try:
        platform_audit_log(platform).append(
            actor=f"cli:{getpass.getuser()}",
            action=action,
            asset=f"keys/{key}",
            key_ids=sorted(ring),
            **fields,
        )
    except AuditChainBroken as err:
        raise Refused(f"audit log: {err}") from None


def _keys_pseudonym(args: argparse.Namespace) -> int:
    from secure_etl.config import MIN_PSEUDONYM_HEX

    # The pipeline's own HMAC (what Pseudonymiser wraps), without its pandas import.
    from secure_etl.etl.hmac_values import hex_many, key_pads

    if args.truncate is not None and not MIN_PSEUDONYM_HEX <= args.truncate <= 64:
        raise UserError(f"--truncate must be between {MIN_PSEUDONYM_HEX} and 64")
    platform, ring = _key_ring(args)
    # Recorded before the first value is printed: a killed process leaves the record.
    intent = {"intent": "print the pseudonyms of values read from stdin"}
    _audit_key_use(platform, "key.pseudonym.begin", args.key, ring, inputs=intent)
    pads = {key_id: key_pads(key.secret) for key_id, key in ring.items()}
    count = 0
    for line in sys.stdin:
        value = line.rstrip("\n").encode("utf-8")
        digests = {k: hex_many(p, [value])[0][: args.truncate] for k, p in pads.items()}
        print(json.dumps(digests), flush=True)
        count += 1
    outcome = {"values": str(count), "failed": "0"}
    _audit_key_use(platform, "key.pseudonym", args.key, ring, outputs=outcome)
    return EXIT_OK


def _keys_decrypt(args: argparse.Namespace) -> int:
    from secure_etl.etl.value_cipher import DecryptError, decrypt_value

    platform, ring = _key_ring(args)
    # Recorded before the first plaintext is printed: a killed process leaves the record.
    intent = {"intent": "print the plaintext of values read from stdin", "column": args.column}
    _audit_key_use(platform, "key.decrypt.begin", args.key, ring, inputs=intent)
    secrets = {key_id: key.secret for key_id, key in ring.items()}
    count = failed = 0
    for number, line in enumerate(sys.stdin, 1):
        count += 1
        try:
            print(decrypt_value(line.strip(), args.column, secrets), flush=True)
        except DecryptError as err:
            failed += 1
            print(f"secure-etl: line {number}: {err}", file=sys.stderr)
            print("", flush=True)  # keep the output aligned with the input
    outcome = {"values": str(count), "failed": str(failed)}
    _audit_key_use(platform, "key.decrypt", args.key, ring, outputs=outcome)
    return EXIT_FAILED if failed else EXIT_OK
