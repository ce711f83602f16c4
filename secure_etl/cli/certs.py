"""``secure-etl certs inspect|renew|list``: no Dagster, no pandas on these paths."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from secure_etl.cli.exits import EXIT_FAILED, EXIT_OK
from secure_etl.errors import UserError


def add_commands(commands) -> None:
    """Add ``certs`` and its subcommands to the top-level ``commands``."""
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
    inspect.set_defaults(handler=certs_inspect)

    renew = certs_commands.add_parser(
        "renew", help="issue or renew configured certificates (those due or failing a check)"
    )
    renew.add_argument("names", nargs="*", metavar="NAME")
    renew.add_argument("--all", action="store_true", help="every configured certificate")
    renew.add_argument("--force", action="store_true", help="renew even if not due")
    renew.add_argument(
        "--jobs", type=int, default=8, metavar="N", help="certificates renewed at once (default 8)"
    )
    renew.add_argument("--config", type=Path, help="platform config")
    renew.set_defaults(handler=certs_renew)

    inventory = certs_commands.add_parser("list", help="the certificate inventory")
    inventory.add_argument("--json", action="store_true")
    inventory.add_argument("--config", type=Path, help="platform config")
    inventory.set_defaults(handler=certs_list)


def certs_inspect(args: argparse.Namespace) -> int:
    """Run the inspection checks on a PEM chain: exit 1 when any fails."""
    from secure_etl.pki.inspect import (
        facts,
        inspect_chain,
        load_chain_file,
        load_roots_file,
        system_trust_bundle,
    )

    chain = load_chain_file(args.path)
    bundle = args.ca_bundle or system_trust_bundle()
    roots = load_roots_file(bundle) if bundle else None
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
            # Severity only where something failed: "ok ... ERROR" reads as an error.
            mark = "skip" if r.skipped else ("ok" if r.passed else f"FAIL ({r.severity})")
            print(f"  {mark:<12} {r.name:<20} {r.reason}")
    return EXIT_FAILED if failed else EXIT_OK


def certs_renew(args: argparse.Namespace) -> int:
    """Issue or renew the named (or all) certificates; exit 1 when any failed."""
    from secure_etl.config import load_config
    from secure_etl.pki.bulk import renew_many

    if args.all and args.names:
        raise UserError(
            f"--all renews every configured certificate; give --all or names "
            f"({' '.join(args.names)}), not both"
        )
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give at least 1")
    platform = load_config(args.config)
    names = list(platform.certificates) if args.all else args.names
    if not names:
        raise UserError("name certificates to renew, or give --all")
    unknown = [n for n in names if n not in platform.certificates]
    if unknown:
        raise UserError(
            f"unknown certificate(s) {', '.join(unknown)} "
            f"(configured: {', '.join(platform.certificates)})"
        )

    started = time.monotonic()
    failed = 0
    for name, result, err in renew_many(platform, names, force=args.force, jobs=args.jobs):
        if result is None:
            failed += 1
            print(f"{name}: FAILED: {err}", file=sys.stderr)
        else:
            print(f"{name}: {result.outcome} in {result.seconds:.2f} s ({result.reason})")
    print(f"{len(names) - failed}/{len(names)} succeeded in {time.monotonic() - started:.2f} s")
    return EXIT_FAILED if failed else EXIT_OK


def certs_list(args: argparse.Namespace) -> int:
    """Print the certificate inventory (always exit 0: it reports, it does not judge)."""
    from secure_etl.cli.state import no_state_note
    from secure_etl.config import load_config
    from secure_etl.pki.inspect import facts
    from secure_etl.pki.renewal import certificate_store, current_leaf, inspect_current

    platform = load_config(args.config)
    note = no_state_note(platform, args.config)
    if note:
        print(f"secure-etl: {note}", file=sys.stderr)
    store = certificate_store(platform)
    rows = []
    for name, cert in platform.certificates.items():
        row = {
            "name": name,
            "issuer": cert.issuer,
            "use": cert.use,
            "identifiers": cert.identifiers,
            "version": store.current_version(name),
        }
        leaf = current_leaf(platform, name)
        if leaf is not None:
            info = facts(leaf)
            results = inspect_current(platform, name) or []
            failing = [r.name for r in results if not r.passed]
            row.update(
                serial=info.serial,
                not_after=info.not_after.isoformat(),
                days_remaining=info.days_remaining,
                status="ok" if not failing else "failing",
                failing_checks=failing,
            )
        else:
            row.update(status="not issued")
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'NAME':<24} {'USE':<6} {'ISSUER':<14} {'VERSION':<22} {'DAYS LEFT':>9}  STATUS")
    for row in rows:
        days = f"{row['days_remaining']:9.1f}" if "days_remaining" in row else f"{'-':>9}"
        extra = f" ({', '.join(row['failing_checks'])})" if row.get("failing_checks") else ""
        serial = f", serial {row['serial']}" if "serial" in row else ""
        print(
            f"{row['name']:<24} {row['use']:<6} {row['issuer']:<14} {row['version'] or '-':<22} "
            f"{days}  {row['status']}{extra}{serial}"
        )
    return EXIT_OK
