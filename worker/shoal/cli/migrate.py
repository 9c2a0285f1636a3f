"""`shoal migrate`: create or upgrade the schema."""

from __future__ import annotations

import argparse

from shoal.backend import Backend
from shoal.cli.common import Commands, duration


def register(commands: Commands) -> None:
    p = commands.add("migrate", run, "create or upgrade the schema (idempotent)")
    p.add_argument("--aging-interval", type=duration, default=None,
                   help="waiting this long raises a task's priority by one (default 5m; "
                        "kept when omitted)")


async def run(args: argparse.Namespace) -> int:
    backend = await Backend.connect(args.dsn, schema=args.schema, max_size=1)
    try:
        applied = await backend.migrate(args.aging_interval)
        aging = await backend.aging_seconds()
    finally:
        await backend.close()
    print(render(args.schema, applied, aging))
    return 0


def render(schema: str, applied: list[int], aging: float) -> str:
    done = ", ".join(map(str, applied)) if applied else "none (up to date)"
    return f"schema {schema}: applied migrations {done}; aging interval {aging:g}s"
