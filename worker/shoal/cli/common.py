"""What every subcommand shares: database flags, argument types, reading input."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shoal.errors import InvalidInput
from shoal.units import parse_duration

Run = Callable[[argparse.Namespace], Awaitable[int]]


class Commands:
    """Adds subcommands that talk to the database: each gets `--dsn` and `--schema`."""

    def __init__(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        self.subparsers = subparsers

    def add(self, name: str, run: Run, help_text: str) -> argparse.ArgumentParser:
        """A subcommand `name` that runs `run(args)`."""
        sub: argparse.ArgumentParser = self.subparsers.add_parser(
            name, help=help_text, description=help_text)
        sub.add_argument("--dsn", default=os.environ.get("SHOAL_DSN"),
                         help="PostgreSQL DSN (default: $SHOAL_DSN)")
        sub.add_argument("--schema", default=os.environ.get("SHOAL_SCHEMA", "shoal"),
                         help="schema holding Shoal's tables (default: shoal)")
        sub.set_defaults(run=run, parser=sub)  # `parser.error` names the subcommand
        return sub

    def group(self, name: str, help_text: str) -> Commands:
        """A subcommand `name` whose own subcommands, added to the result, do the work."""
        sub: argparse.ArgumentParser = self.subparsers.add_parser(
            name, help=help_text, description=help_text)
        return Commands(sub.add_subparsers(dest=f"{name}_command", required=True,
                                           metavar="COMMAND"))


def duration(value: str) -> float:
    """argparse type for durations: the error names the flag and says what is expected."""
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def csv(value: str) -> tuple[str, ...]:
    """argparse type for comma-separated lists; blanks dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def read_text(path: str) -> str:
    """The text of `path`, or of stdin for `-`; an unreadable file is bad input."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None

