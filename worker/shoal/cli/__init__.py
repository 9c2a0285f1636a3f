"""`shoal`: one console script, one subcommand per job.

The CLI is the top layer: it may import every other package, including the
operator (`shoal operator ...` is handed to `shoal_operator.main`, imported
only then); nothing imports it. Each module here registers one group of
subcommands.

Every database subcommand takes `--dsn` (default `$SHOAL_DSN`) and `--schema`
(default `$SHOAL_SCHEMA` or `shoal`). Bad input exits with status 2 and one
clear line on stderr; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from shoal.cli import dead_letters, migrate, tasks, worker, workflows
from shoal.cli.common import Commands
from shoal.errors import ShoalError

GROUPS = (migrate, worker, tasks, workflows, dead_letters)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `shoal` subcommand; return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["operator"]:
        from shoal_operator.main import main as operator_main

        return operator_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(level=os.environ.get("SHOAL_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.dsn:
        parser.error("no database: pass --dsn or set SHOAL_DSN")
    try:
        status: int = asyncio.run(args.run(args))
    except ShoalError as exc:
        print(f"shoal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


def build_parser() -> argparse.ArgumentParser:
    """The whole `shoal` parser: every group's subcommands, plus `operator`."""
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__.splitlines()[0])
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for group in GROUPS:
        group.register(commands)
    commands.subparsers.add_parser(
        "operator", help="run the Kubernetes operator (see shoal operator -h)", add_help=False)
    return parser
