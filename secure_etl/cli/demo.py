"""``secure-etl demo``: materialize the whole graph in-process (the command that loads Dagster)."""

from __future__ import annotations

import argparse
from pathlib import Path

from secure_etl.cli.exits import EXIT_FAILED, EXIT_OK
from secure_etl.errors import UserError


def add_commands(commands) -> None:
    """Add this command family to the top-level ``commands``."""
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


def _demo(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise UserError(f"--partitions {args.partitions}: give at least 1")
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
    print(f"Connections verified: {summary.connections_verified}/{summary.connections}")
    for line in summary.served:
        print(f"  {line}")
    print(f"Retention: deleted {len(summary.deleted)} files")
    for line in summary.deleted:
        print(f"  {line}")
    print(f"State: {platform.resolved_state_dir()}")
    return EXIT_OK if summary.all_checks_passed else EXIT_FAILED
