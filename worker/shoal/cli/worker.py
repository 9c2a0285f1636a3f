"""`shoal worker`: claim and run tasks until SIGTERM, then drain.

Its flags are derived from `WorkerSettings`' fields (name, type, help,
default): nothing here restates a setting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import ValidationError

from shoal import logs
from shoal.cli.common import Commands, csv, duration
from shoal.errors import InvalidInput
from shoal.worker import Worker, WorkerConfig, load_app
from shoal.worker.config import WorkerSettings

log = logging.getLogger("shoal")

# What each field type's flag parses its text to. Float settings are durations.
PARSERS: dict[type, Any] = {str: str, int: int, float: duration, tuple: csv}
METAVARS: dict[type, str | None] = {str: None, int: "N", float: "DURATION", tuple: "A,B"}
COMMON = ("db_schema",)  # --schema: every database subcommand has it (shoal.cli.common)


def register(commands: Commands) -> None:
    p = commands.add("worker", run, "claim and run tasks until SIGTERM, then drain")
    p.add_argument("--app", required=True, help="MODULE:APP or path/to/file.py:APP")
    add_settings(p.add_argument_group("worker settings"))
    logs.add_flags(p)


def add_settings(parser: argparse._ActionsContainer) -> None:
    """One flag per `WorkerSettings` field. A flag left out leaves the field out
    (argparse.SUPPRESS), so the model's defaults are the only ones."""
    for name, info in WorkerSettings.model_fields.items():
        if name in COMMON:
            continue
        kind = flag_type(info.annotation)
        default = ""
        if info.default_factory is None and info.default not in (None, ()):
            default = f"; default {info.default:g}s" if kind is float else (
                f"; default {info.default}")
        parser.add_argument(WorkerSettings.flag(name), dest=name, type=PARSERS[kind],
                            default=argparse.SUPPRESS, metavar=METAVARS[kind],
                            help=f"{info.description}{default}")


def flag_type(annotation: Any) -> type:
    """str, int, float or tuple: what a field's flag parses to (None dropped from unions)."""
    if get_origin(annotation) in (Union, types.UnionType):
        [annotation] = [a for a in get_args(annotation) if a is not type(None)]
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    kind = get_origin(annotation) or annotation
    if kind not in PARSERS:
        raise TypeError(f"no flag type for {annotation!r}")
    return kind  # type: ignore[no-any-return]


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave (the common --schema included)."""
    given = {name: getattr(args, name) for name in WorkerSettings.model_fields
             if name not in COMMON and hasattr(args, name)}
    return {"db_schema": args.schema, **given}


async def run(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    try:
        config = WorkerConfig(dsn=args.dsn, **settings(args))
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = WorkerConfig.flag(str(error["loc"][0])) if error["loc"] else "a flag"
        raise InvalidInput(f"{flag}: {error['msg']}") from None
    worker = Worker(app, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info("worker %s serving %s in namespace %s", worker.identity.id,
             ",".join(worker.identity.task_names), worker.config.namespace)
    return await worker.run()
