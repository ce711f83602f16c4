"""The ``secure-etl`` command: one module per command family, assembled here.

Each command imports what it needs when it runs; only ``demo`` and ``status`` (which
reads the Dagster instance) load Dagster. Every error a user can fix is a ``UserError``
(exit 2) and every refusal a ``Refused`` (exit 1), both printed as one line here.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

from secure_etl.cli import acme, audit, certs, demo, keys, policy, status
from secure_etl.cli.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, Refused
from secure_etl.errors import UserError, escape_controls

FAMILIES = (certs, acme, demo, audit, status, keys, policy)
# The commands that open the Dagster instance: $DAGSTER_HOME is checked before they run,
# and whether Dagster accepts its settings too where the command does not ask itself.
READS_DAGSTER_HOME = {"secure_etl.cli.demo": True, "secure_etl.cli.status": False}


def main(argv: list[str] | None = None) -> int:
    """Run ``secure-etl`` with ``argv`` (default: the process's) and return its exit code."""
    if argv is None:
        _without_httpx_command_line()
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
    except KeyboardInterrupt:
        # Ctrl-C: what was under way stopped where the store and logs keep it safe (an
        # interrupted renewal leaves the previous certificate current).
        print("secure-etl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`secure-etl certs list | head`): nothing more can be
        # said to it, and the interpreter's final flush must not say it with a
        # traceback. Exit 1: not all the output was written.
        _discard_stdout()
        return EXIT_FAILED
    finally:
        if argv is None:
            # The process ends here: the interpreter's shutdown collects garbage several
            # times while it tears the modules down, walking every object the imports
            # made (0.67 s of `status`'s 3.31 s, benchmarks/cli_startup.py). Frozen, they are
            # only freed by reference count, as they would be anyway; atexit handlers
            # still run. Not for callers of main(argv), whose process goes on.
            gc.freeze()


def _discard_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _without_httpx_command_line() -> None:
    """Keep httpx's own command line out of this process (about 0.1 s of start-up).

    httpx's package ``__init__`` imports ``httpx._main`` (click, rich, pygments) whenever
    they are installed, as they are here for Dagster, and binds a stub ``httpx.main``
    when that import fails: the httpx one gets from ``pip install httpx`` without its
    ``cli`` extra, a supported configuration. A None in ``sys.modules`` is the import
    system's documented way to make an import fail, so this process gets exactly that
    httpx; nothing else in httpx changes, and nothing here runs httpx's command line.
    Only for the ``secure-etl`` process itself (``main()`` without ``argv``) and only if
    httpx is not loaded yet: other processes, and programs that call ``main(argv)``,
    keep httpx as installed.
    """
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)


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
