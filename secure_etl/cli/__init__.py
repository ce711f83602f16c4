"""The ``secure-etl`` command: one module per command family, assembled here.

Each command imports what it needs when it runs; only ``demo`` and ``status`` (which
reads the Dagster instance) load Dagster. Every error a user can fix is a ``UserError``
(exit 2) and every refusal a ``Refused`` (exit 1), both printed as one line here.
"""

from __future__ import annotations

import argparse
import sys

from secure_etl.cli import acme, audit, certs, demo, keys, policy, status
from secure_etl.cli.exits import EXIT_BAD_INPUT, EXIT_FAILED, Refused
from secure_etl.errors import UserError, escape_controls

FAMILIES = (certs, acme, demo, audit, status, keys, policy)
# The commands that open the Dagster instance: $DAGSTER_HOME is checked before they run,
# and whether Dagster accepts its settings too where the command does not ask itself.
READS_DAGSTER_HOME = {"secure_etl.cli.demo": True, "secure_etl.cli.status": False}


def main(argv: list[str] | None = None) -> int:
    """Run ``secure-etl`` with ``argv`` (default: the process's) and return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        if args.handler.__module__ in READS_DAGSTER_HOME:
            from secure_etl.cli.state import check_dagster_home

            check_dagster_home(settings=READS_DAGSTER_HOME[args.handler.__module__])
        return args.handler(args)
    except UserError as err:
        return _one_line(err, EXIT_BAD_INPUT)
    except Refused as err:
        return _one_line(err, EXIT_FAILED)


def _one_line(err: Exception, code: int) -> int:
    print(f"secure-etl: {escape_controls(str(err))}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-etl", description="Secure ETL with automated certificate management."
    )
    commands = parser.add_subparsers(metavar="COMMAND")
    for family in FAMILIES:
        family.add_commands(commands)
    return parser
