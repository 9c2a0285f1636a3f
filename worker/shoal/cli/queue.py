"""`shoal queue`: how deep the queue is, by namespace, task name and state."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from shoal.backend import QueueDepth
from shoal.cli.common import Commands
from shoal.cli.output import add_output_flag, age, as_data, table
from shoal.client import Client


def register(commands: Commands) -> None:
    p = commands.add("queue", run, "tasks waiting, running and dead by namespace and name, "
                     "and how long the oldest ready task has waited")
    p.add_argument("--namespace", default=None, help="one task namespace (default: all)")
    add_output_flag(p)


async def run(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema, max_size=1) as client:
        depth = await client.queue(args.namespace)
    print(render(depth, args.output))
    return 0


def render(depth: Sequence[QueueDepth], output: str) -> str:
    """READY: due and runnable; PAUSED: due, in a paused workflow; DELAYED: not due yet;
    BLOCKED: workflow steps waiting for their dependencies."""
    if output != "text":
        return as_data(list(depth), output)
    return table(("namespace", "name", "ready", "delayed", "paused", "running", "blocked",
                  "dead", "oldest ready"),
                 ((d.namespace, d.name, d.ready, d.delayed, d.paused, d.running, d.blocked,
                   d.dead, age(d.oldest_ready_seconds)) for d in depth))
