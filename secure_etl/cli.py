"""The ``secure-etl`` command.

Certificate commands import no Dagster, so they start fast; each command imports what it
needs when it runs (``demo`` is the only one that loads Dagster).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secure_etl import cli_certs
from secure_etl.errors import UserError, escape_controls

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_UNUSABLE
    try:
        return args.handler(args)
    except UserError as err:
        print(f"secure-etl: {escape_controls(str(err))}", file=sys.stderr)
        return EXIT_UNUSABLE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-etl", description="Secure ETL with automated certificate management."
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    certs = commands.add_parser("certs", help="inspect and manage certificates")
    certs_commands = certs.add_subparsers(metavar="COMMAND")
    inspect = certs_commands.add_parser(
        "inspect",
        help="check a PEM certificate chain (leaf first)",
        description="Exit 0 when every check passes, 1 when any fails, 2 on unusable input.",
    )
    inspect.add_argument("path", type=Path, help="PEM file: the leaf, then intermediates")
    inspect.add_argument(
        "--domain",
        "-d",
        action="append",
        default=[],
        metavar="D",
        help="a DNS name or IP address the certificate must cover (repeatable)",
    )
    inspect.add_argument(
        "--use", choices=["server", "client"], help="check the extended key usage fits this use"
    )
    inspect.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="PEM",
        help="trusted roots (default: the system trust store)",
    )
    inspect.add_argument(
        "--min-days",
        type=float,
        default=0.0,
        metavar="N",
        help="fail the expiry check with fewer than N days left (default 0)",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_certs_inspect)
    cli_certs.add_commands(commands, certs_commands)

    demo = commands.add_parser(
        "demo", help="materialize the whole graph in-process and print a summary"
    )
    demo.add_argument(
        "--partitions",
        type=int,
        default=1,
        metavar="N",
        help="how many of the latest complete hourly partitions (default 1)",
    )
    demo.add_argument(
        "--config",
        type=Path,
        help="platform config (default: $SECURE_ETL_CONFIG or the bundled offline demo)",
    )
    demo.set_defaults(handler=_demo)

    audit = commands.add_parser("audit", help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify",
        help="recompute the audit log's hash chain and check its signed checkpoints",
        description="Exit 0 when the log verifies, 1 when it does not (the first bad "
        "record or checkpoint is named), 2 on unusable input.",
    )
    verify.add_argument(
        "path", nargs="?", type=Path, help="the log (default: the configured platform's)"
    )
    verify.add_argument("--checkpoints", type=Path, metavar="DIR", help="checkpoint directory")
    verify.add_argument("--public-key", type=Path, metavar="PEM", help="checkpoint public key")
    verify.add_argument("--config", type=Path, help="platform config")
    verify.set_defaults(handler=_audit_verify)

    status = commands.add_parser(
        "status",
        help="the health report: pipelines, certificates, data quality, security",
        description="Reads the Dagster instance ($DAGSTER_HOME, else ./.dagster_home as "
        "`make demo` leaves it), the certificate store and the audit log. Exit 0 when "
        "nothing needs attention, 1 when something does, 2 on unusable input.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--prometheus", type=Path, metavar="FILE", help="also write the Prometheus textfile"
    )
    status.add_argument("--config", type=Path, help="platform config")
    status.set_defaults(handler=_status)

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
    return parser


def _status(args: argparse.Namespace) -> int:
    from secure_etl.config import load_config
    from secure_etl.defs.health import report_for  # Dagster only for this command
    from secure_etl.monitor import health

    report = report_for(load_config(args.config))
    if args.prometheus:
        health.write_prometheus(report, args.prometheus)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(health.render_text(report), end="")
        if not report["problems"]:
            print("\nNothing needs attention.")
    return EXIT_FAILED if report["problems"] else EXIT_OK


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


def _audit_key_use(platform, action: str, key: str, ring, **fields) -> bool:
    """Record a use of a key (ids, counts, intent: never a value); False, with one line
    on stderr, if the audit log refuses it (its chain is broken)."""
    import getpass

    from secure_etl.security.audit import AuditChainBroken, platform_audit_log

    try:
        platform_audit_log(platform).append(
            actor=f"cli:{getpass.getuser()}",
            action=action,
            asset=f"keys/{key}",
            key_ids=sorted(ring),
            **fields,
        )
    except AuditChainBroken as err:
        print(f"secure-etl: audit log: {err}", file=sys.stderr)
        return False
    return True


def _keys_pseudonym(args: argparse.Namespace) -> int:
    from secure_etl.config import MIN_PSEUDONYM_HEX
    from secure_etl.etl.transforms import Pseudonymiser

    if args.truncate is not None and not MIN_PSEUDONYM_HEX <= args.truncate <= 64:
        raise UserError(f"--truncate must be between {MIN_PSEUDONYM_HEX} and 64")
    platform, ring = _key_ring(args)
    # Recorded before the first value is printed: a killed process leaves the record.
    intent = {"intent": "print the pseudonyms of values read from stdin"}
    if not _audit_key_use(platform, "key.pseudonym.begin", args.key, ring, inputs=intent):
        return EXIT_FAILED
    hashers = {key_id: Pseudonymiser(key.secret) for key_id, key in ring.items()}
    count = 0
    for line in sys.stdin:
        value = line.rstrip("\n").encode("utf-8")
        digests = {k: h.hex_many([value])[0][: args.truncate] for k, h in hashers.items()}
        print(json.dumps(digests), flush=True)
        count += 1
    done = _audit_key_use(
        platform, "key.pseudonym", args.key, ring, outputs={"values": str(count), "failed": "0"}
    )
    return EXIT_OK if done else EXIT_FAILED


def _keys_decrypt(args: argparse.Namespace) -> int:
    from secure_etl.etl.protect import DecryptError, decrypt_value

    platform, ring = _key_ring(args)
    # Recorded before the first plaintext is printed: a killed process leaves the record.
    intent = {"intent": "print the plaintext of values read from stdin", "column": args.column}
    if not _audit_key_use(platform, "key.decrypt.begin", args.key, ring, inputs=intent):
        return EXIT_FAILED
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
    done = _audit_key_use(platform, "key.decrypt", args.key, ring, outputs=outcome)
    return EXIT_FAILED if failed or not done else EXIT_OK


def _audit_verify(args: argparse.Namespace) -> int:
    from secure_etl.config import load_config
    from secure_etl.security.audit import key_pin, pinned_key, platform_audit_log, verify

    log = platform_audit_log(load_config(args.config))
    path = args.path or log.path
    if args.path is None:
        print(f"audit log: {path}")
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
    verdict = verify(path, args.checkpoints or log.checkpoint_dir, public)
    if verdict.torn:
        lines = ", ".join(map(str, verdict.torn))
        print(f"note: {path}: line {lines}: a write cut short (its process was killed), skipped")
    if verdict.ok:
        print(f"ok: {verdict.records} records, {verdict.checkpoints} signed checkpoints")
        return EXIT_OK
    print(f"FAILED: {verdict.problem}")
    return EXIT_FAILED


def _certs_inspect(args: argparse.Namespace) -> int:
    from secure_etl.pki.inspect import facts, inspect_chain, load_chain_file, system_trust_bundle

    chain = load_chain_file(args.path)
    bundle = args.ca_bundle or system_trust_bundle()
    roots = load_chain_file(bundle) if bundle else None
    results = inspect_chain(
        chain,
        identifiers=args.domain,
        use=args.use,
        roots=roots,
        roots_source=str(bundle or ""),
        min_days=args.min_days,
    )
    failed = any(not r.passed for r in results)
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(args.path),
                    "passed": not failed,
                    "certificate": facts(chain[0]).as_dict(),
                    "checks": [r.as_dict() for r in results],
                },
                indent=2,
            )
        )
    else:
        info = facts(chain[0])
        print(f"{args.path}: {info.subject} (serial {info.serial})")
        print(f"  issuer {info.issuer}, {info.key_type}, {info.days_remaining:.1f} days left")
        for r in results:
            mark = "skip" if r.skipped else ("ok" if r.passed else "FAIL")
            print(f"  {mark:<4} {r.name:<20} {r.severity:<5} {r.reason}")
    return EXIT_FAILED if failed else EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from secure_etl.config import load_config
    from secure_etl.defs.demo import run_demo  # Dagster only for this command

    platform = load_config(args.config)
    summary = run_demo(platform, partitions=args.partitions)
    print("\nCertificates")
    for name, info in summary.certificates.items():
        print(
            f"  {name:<24} {info['outcome']:<8} {info['days_remaining']:6.1f} days left"
            f"  serial {info['serial'][:16]}"
        )
    print("Rows")
    for label, rows in summary.rows.items():
        print(f"  {label:<40} {rows:>8}")
    passed = sum(ok for ok, _ in summary.checks.values())
    print(f"Checks: {passed}/{len(summary.checks)} passed")
    for label, (ok, why) in summary.checks.items():
        if not ok:
            print(f"  FAIL {label}: {why}")
    print(f"Retention: deleted {len(summary.deleted)} files")
    for line in summary.deleted:
        print(f"  {line}")
    print(f"State: {platform.resolved_state_dir()}")
    return EXIT_OK if summary.all_checks_passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
