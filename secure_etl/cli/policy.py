"""``secure-etl policy check``: the security policy, point by point, for CI of a config
repository (no Dagster: it reads the config only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secure_etl.cli.exits import EXIT_FAILED, EXIT_OK


def add_commands(commands) -> None:
    """Add this command family to the top-level ``commands``."""
    family = commands.add_parser("policy", help="the security policy of a platform config")
    sub = family.add_subparsers(metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="each policy point: enforced where, exemptions and their reasons, violations",
        description="Checks the config against its security_policy and prints every point. "
        "Exit 0 when the config keeps the policy, 1 on any violation, 2 on an unusable "
        "config file.",
    )
    check.add_argument("--config", type=Path, help="platform config (default: $SECURE_ETL_CONFIG)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from secure_etl import policy
    from secure_etl.config import config_path_from_env, load_config

    path = args.config or config_path_from_env()
    report = load_config(path, refuse_policy_violations=False).policy_report()
    violations = report.violations
    if args.json:
        print(json.dumps({"config": str(path), **report.as_dict()}, indent=2))
    else:
        print(f"Security policy of {path}:")
        for line in policy.render_text(report):
            print(line)
        print(
            f"\n{len(violations)} violation(s): the config would be refused."
            if violations
            else "\nThe config keeps the policy."
        )
    return EXIT_FAILED if violations else EXIT_OK
