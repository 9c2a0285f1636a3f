"""`shoal tasks list|show|cancel|retry`: find tasks, look at one, cancel or retry them."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from shoal.backend import CancelResult, DeadLetterFilter, TaskFilter, TaskRow, TaskSummary
from shoal.cli.common import Commands, csv, duration
from shoal.cli.output import add_output_flag, as_data, since, table, timestamp
from shoal.client import Client
from shoal.errors import InvalidInput

STATES = ("blocked", "ready", "delayed", "running", "succeeded", "dead", "cancelled")


def register(commands: Commands) -> None:
    group = commands.group("tasks", "list, show, cancel or retry tasks")

    p = group.add("list", list_tasks, "list tasks, newest first")
    p.add_argument("--state", type=_states, default=None, metavar="STATES",
                   help=f"comma-separated states: {', '.join(STATES)} "
                        "(delayed: ready but not due yet)")
    p.add_argument("--name", default=None, help="task name")
    p.add_argument("--namespace", default=None)
    p.add_argument("--tag", action="append", default=None, dest="tags", metavar="TAG",
                   help="tasks carrying this tag (repeatable: all of them)")
    p.add_argument("--workflow", type=UUID, default=None, metavar="ID",
                   help="steps of this workflow")
    p.add_argument("--older-than", type=duration, default=None, metavar="DURATION",
                   help="enqueued at least this long ago, e.g. 1h")
    p.add_argument("--newer-than", type=duration, default=None, metavar="DURATION",
                   help="enqueued at most this long ago, e.g. 10m")
    p.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most this many")
    add_output_flag(p)

    p = group.add("show", show, "show one task: state, attempts, payload, result, error")
    p.add_argument("task_id", type=int)
    add_output_flag(p)

    p = group.add("cancel", cancel, "cancel tasks: ready or delayed ones never run; a running "
                  "one's handler is told to stop and its result is refused")
    p.add_argument("task_ids", type=int, nargs="+", metavar="TASK_ID")
    p.add_argument("--reason", default="")
    p.add_argument("--actor", default=os.environ.get("USER") or "shoal-cli")

    p = group.add("retry", retry, "retry dead tasks with fresh attempts: by id, or every "
                  "dead letter matching the filters")
    p.add_argument("task_ids", type=int, nargs="*", metavar="TASK_ID")
    p.add_argument("--name", default=None, help="task name")
    p.add_argument("--namespace", default=None)
    p.add_argument("--workflow", type=UUID, default=None, metavar="ID")


def _states(value: str) -> tuple[str, ...]:
    states = csv(value)
    unknown = [s for s in states if s not in STATES]
    if unknown or not states:
        raise argparse.ArgumentTypeError(
            f"unknown state(s) {', '.join(unknown) or repr(value)}: use {', '.join(STATES)}")
    return states


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


async def list_tasks(args: argparse.Namespace) -> int:
    where = TaskFilter(states=args.state, name=args.name, namespace=args.namespace,
                       tags=tuple(args.tags) if args.tags else None,
                       workflow_id=args.workflow, older_than=args.older_than,
                       newer_than=args.newer_than)
    async with await Client.connect(args.dsn, schema=args.schema, max_size=1) as client:
        found = await client.tasks(where, args.limit)
    print(render_list(found, args.output, datetime.now(UTC)))
    return 0


def render_list(tasks: Sequence[TaskSummary], output: str, now: datetime) -> str:
    if output != "text":
        return as_data(list(tasks), output)
    return table(("id", "namespace", "name", "state", "priority", "attempts", "age",
                  "workflow", "error"),
                 ((t.id, t.namespace, t.name, t.state, t.priority,
                   f"{t.attempts}/{t.max_attempts or '-'}", since(t.enqueued_at, now),
                   f"{t.workflow_id}/{t.step}" if t.workflow_id else None, t.error)
                  for t in tasks))


async def show(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema, max_size=1) as client:
        task = await client.task(args.task_id)
    print(render_task(task, args.output))
    return 0


def render_task(task: TaskRow, output: str) -> str:
    if output != "text":
        return as_data(task, output)
    times = ("run_at", "enqueued_at", "started_at", "finished_at")
    lines = []
    for name in TaskRow.__dataclass_fields__:
        value = getattr(task, name)
        if name in times:
            shown = timestamp(value)
        elif name in ("payload", "result"):
            shown = json.dumps(value)
        else:
            shown = "-" if value is None else str(value)
        lines.append(f"{name + ':':<14} {shown}")
    return "\n".join(lines)


async def cancel(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema, max_size=1) as client:
        results = [await client.cancel_task(task_id, reason=args.reason, actor=args.actor)
                   for task_id in args.task_ids]
    print(render_cancel(results))
    return 0


def render_cancel(results: Sequence[CancelResult]) -> str:
    return "\n".join(
        f"task {r.task_id}: cancelled (was {r.previous_state})" if r.applied else
        f"task {r.task_id}: not cancelled, it is {r.previous_state} already"
        for r in results)


async def retry(args: argparse.Namespace) -> int:
    filters = (args.name, args.namespace, args.workflow)
    if not args.task_ids and all(f is None for f in filters):
        raise InvalidInput("name task ids, or select dead letters with --name, --namespace "
                           "or --workflow")
    wheres = ([DeadLetterFilter(args.name, args.namespace, args.workflow, task_id)
               for task_id in args.task_ids]
              or [DeadLetterFilter(args.name, args.namespace, args.workflow)])
    async with await Client.connect(args.dsn, schema=args.schema, max_size=1) as client:
        retried = sum([await client.retry_dead_letters(where) for where in wheres])
    print(f"retried {retried}")
    return 0
