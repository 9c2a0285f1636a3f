"""`shoal dead-letters list|count|retry`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from uuid import UUID

from shoal.backend import DeadLetter, DeadLetterFilter
from shoal.cli.common import Commands
from shoal.cli.output import add_output_flag, as_data
from shoal.client import Client


def register(commands: Commands) -> None:
    p = commands.add("dead-letters", run, "list, count or retry dead letters")
    p.add_argument("action", choices=("list", "count", "retry"))
    p.add_argument("--task", default=None, help="task name")
    p.add_argument("--namespace", default=None)
    p.add_argument("--workflow", type=UUID, default=None)
    p.add_argument("--id", type=int, default=None, help="one task id")
    p.add_argument("--limit", type=int, default=100)
    add_output_flag(p)


async def run(args: argparse.Namespace) -> int:
    where = DeadLetterFilter(task_name=args.task, namespace=args.namespace,
                             workflow_id=args.workflow, task_id=args.id)
    async with await Client.connect(args.dsn, schema=args.schema) as client:
        if args.action == "count":
            print(await client.count_dead_letters(where))
        elif args.action == "retry":
            print(f"retried {await client.retry_dead_letters(where)}")
        else:
            text = render_list(await client.dead_letters(where, args.limit), args.output)
            if text:  # no dead letters: no line
                print(text)
    return 0


def render_list(letters: Sequence[DeadLetter], output: str) -> str:
    if output != "text":
        return as_data(list(letters), output)
    return "\n".join(f"{d.id}\t{d.namespace}\t{d.name}\tattempts {d.attempts}/"
                     f"{d.max_attempts}\t{d.error}" for d in letters)
