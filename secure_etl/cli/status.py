"""``secure-etl status``: the health report (reads the Dagster instance, so loads Dagster)."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from secure_etl.cli.exits import EXIT_FAILED, EXIT_OK
from secure_etl.errors import UserError


def add_commands(commands) -> None:
    """Add this command family to the top-level ``commands``."""
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


def _status(args: argparse.Namespace) -> int:
    # The imports (the config's models, Dagster) create hundreds of thousands of objects
    # that live until the command exits; the cyclic collector would walk them again and
    # again (about a seventh of this command's CPU). Off while the report is built.
    gc.disable()
    try:
        report, platform = _report(args)
    finally:
        gc.enable()
    from secure_etl.cli.state import no_state_note
    from secure_etl.monitor import health

    note = no_state_note(platform, args.config)
    if note:
        print(f"secure-etl: {note}", file=sys.stderr)
    if args.prometheus:
        try:
            health.write_prometheus(report, args.prometheus)
        except OSError as err:
            raise UserError(f"--prometheus {args.prometheus}: {err.strerror or err}") from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(health.render_text(report), end="")
        if not report.problems:
            print("\nNothing needs attention.")
    return EXIT_FAILED if report.problems else EXIT_OK


def _report(args: argparse.Namespace):
    """The health report and the platform config it was built from."""
    from secure_etl.config import load_config

    platform = load_config(args.config)
    if args.prometheus:
        _check_output_file(args.prometheus, "--prometheus")
    from secure_etl.defs.health import report_for  # Dagster only for this command

    return report_for(platform), platform


def _check_output_file(path: Path, flag: str) -> None:
    """Refuse a file to write that cannot be: a directory, or in a directory that is not
    there (it is not created: a mistyped path would otherwise leave directories behind)."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give the file to write")
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is not a directory")
