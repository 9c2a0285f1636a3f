"""`shoal`: one console script, one subcommand per job.

The CLI is the top layer: it may import every other package, including the
operator (`shoal operator ...` is handed to `shoal_operator.main`, imported
only then); nothing imports it. Each module here registers one group of
subcommands.

Every database subcommand takes `--dsn` (default `$SHOAL_DSN`) and `--schema`
(default `$SHOAL_SCHEMA` or `shoal`). Every error is one line on stderr: bad
input exits with status 2 (nothing is written then), a database error with 1.
A reader that goes away (`shoal tasks list | head`) ends the command quietly
with 141, as a shell reports a process killed by SIGPIPE (and Ctrl-C with 130).
Listing commands print `-o text` (for people, the default), `json` or `yaml`
(see `shoal.cli.output`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from shoal import logs
from shoal.backend import TRANSIENT_ERRORS
from shoal.cli import (
    dead_letters,
    migrate,
    periodic,
    queue,
    task_admin,
    tasks,
    wait,
    worker,
    workflows,
)
from shoal.cli.common import Commands
from shoal.errors import ShoalError
from shoal.version import VERSION

GROUPS = (migrate, worker, tasks, wait, task_admin, queue, periodic, workflows,
          dead_letters)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`shoal tasks list: error: ...`), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `shoal` subcommand; return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["operator"]:
        from shoal_operator.main import main as operator_main

        return operator_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not args.dsn:
        args.parser.error("no database: pass --dsn or set SHOAL_DSN")
    try:
        logs.configure(getattr(args, "log_format", None)
                       or os.environ.get("SHOAL_LOG_FORMAT", "text"),
                       getattr(args, "log_level", None)
                       or os.environ.get("SHOAL_LOG_LEVEL", "info"))
        status: int = asyncio.run(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError as exc:
        return reader_gone() if stdout_closed() else database_error(exc)
    except ShoalError as exc:
        print(f"shoal: error: {exc}", file=sys.stderr)
        return 2
    except TRANSIENT_ERRORS as exc:
        return database_error(exc)
    except KeyboardInterrupt:
        return 130
    return status


def database_error(exc: BaseException) -> int:
    print(f"shoal: error: database: {type(exc).__name__}: {exc}".splitlines()[0],
          file=sys.stderr)
    return 1


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says POLLERR), rather than a
    BrokenPipeError of the database's socket."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP)
                   for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def reader_gone() -> int:
    """The status for output nobody reads any more (the pipe's reader exited): what is
    still buffered goes to /dev/null, so the interpreter's last flush cannot fail too
    (the recipe of the Python docs, signal module, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    """The whole `shoal` parser: every group's subcommands, plus `operator`."""
    parser = Parser(prog="shoal", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"shoal {VERSION}")
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for group in GROUPS:
        group.register(commands)
    commands.subparsers.add_parser(
        "operator", help="run the Kubernetes operator (see shoal operator -h)", add_help=False)
    return parser
