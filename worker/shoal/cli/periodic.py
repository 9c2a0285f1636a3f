"""`shoal periodic list`: the periodic schedules workers declared, and when they run next."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from shoal.backend import Schedule, ScheduleStatus
from shoal.cli.common import Commands
from shoal.cli.output import add_output_flag, as_data, since, table, timestamp
from shoal.client import Client
from shoal.worker.periodic import next_tick


def register(commands: Commands) -> None:
    group = commands.group("periodic", "periodic (cron) schedules")
    p = group.add("list", list_schedules, "list schedules with their last and next run")
    p.add_argument("--namespace", default=None, help="one task namespace (default: all)")
    add_output_flag(p)


async def list_schedules(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema, max_size=1) as client:
        schedules = await client.schedules(args.namespace)
    print(render(schedules, args.output, datetime.now(UTC)))
    return 0


def next_run(status: ScheduleStatus, now: datetime) -> datetime:
    """The next tick a running worker enqueues (the first after now and the last tick)."""
    schedule = Schedule(name=status.name, task=status.task, cron=status.cron,
                        timezone=status.timezone)
    return next_tick(schedule, max(now, status.last_tick))


def render(schedules: Sequence[ScheduleStatus], output: str, now: datetime) -> str:
    if output != "text":
        return as_data([asdict(s) | {"next_run": next_run(s, now)} for s in schedules], output)
    return table(("namespace", "name", "task", "cron", "timezone", "last tick", "last task",
                  "next run", "declared"),
                 ((s.namespace, s.name, s.task, s.cron, s.timezone, timestamp(s.last_tick),
                   f"{s.last_task_id} ({s.last_state})" if s.last_task_id else None,
                   timestamp(next_run(s, now)), f"{since(s.declared_at, now)} ago")
                  for s in schedules))

