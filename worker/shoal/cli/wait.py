"""`shoal wait`: wait for tasks and workflows to end, for scripts.

    id=$(shoal enqueue resize --payload '{...}') && shoal wait "$id" --timeout 5m

It waits for every one named (`Client.wait`, `Client.wait_workflow`: woken by
their notifications, not polling), prints how each ended, and exits with a
status a script can branch on:

- 0: every one succeeded;
- 3: one or more failed (a dead letter, cancelled; a workflow failed or cancelled);
- 124: none failed, but the timeout passed before every one ended (as `timeout(1)`
  exits, so `timeout 5m shoal wait ...` and `--timeout 5m` read alike);
- 2: bad input (an unknown id), 1: a database error, as for every command.

A failure does not cut the wait short: every outcome is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from shoal.cli.common import Commands, duration
from shoal.cli.output import add_output_flag, as_data, table
from shoal.client import Client
from shoal.errors import InvalidInput, TaskFailed, WaitTimeout, WorkflowFailed

EXIT_FAILED = 3
EXIT_TIMED_OUT = 124


@dataclass(frozen=True)
class Waited:
    """How one waited-for task or workflow ended (or stood when the wait timed out)."""

    kind: str  # task | workflow
    id: int | str
    state: str
    timed_out: bool = False
    result: Any = None  # a task's result; a workflow's step outputs by step name
    error: str | None = None

    @property
    def failed(self) -> bool:
        return not self.timed_out and self.state != "succeeded"


def register(commands: Commands) -> None:
    p = commands.add("wait", run, "wait for tasks and workflows to end: exit 0 when all "
                     f"succeeded, {EXIT_FAILED} when one failed or was cancelled, "
                     f"{EXIT_TIMED_OUT} when the timeout passed first")
    p.add_argument("task_ids", type=int, nargs="*", metavar="TASK_ID")
    p.add_argument("--workflow", type=UUID, action="append", default=[], metavar="ID",
                   dest="workflows", help="a workflow to wait for (repeatable)")
    p.add_argument("--timeout", type=duration, default=None, metavar="DURATION",
                   help="stop waiting after this long, e.g. 10m (default: no limit)")
    p.add_argument("--listen-dsn", default=None, metavar="DSN",
                   help="where to LISTEN for the ends (default: --dsn); a direct DSN when "
                        "--dsn is a transaction pooler's")
    add_output_flag(p)


async def run(args: argparse.Namespace) -> int:
    if not args.task_ids and not args.workflows:
        raise InvalidInput("name the task ids to wait for, or --workflow IDs")
    async with await Client.connect(args.dsn, schema=args.schema,
                                    listen_dsn=args.listen_dsn) as client:
        try:
            async with asyncio.TaskGroup() as group:
                waits = [group.create_task(wait_task(client, task_id, args.timeout))
                         for task_id in dict.fromkeys(args.task_ids)]
                waits += [group.create_task(wait_workflow(client, workflow_id, args.timeout))
                          for workflow_id in dict.fromkeys(args.workflows)]
        except BaseExceptionGroup as errors:  # an unknown id, the database: as one error
            raise errors.exceptions[0] from None
    outcomes = [w.result() for w in waits]
    print(render(outcomes, args.output))
    return exit_status(outcomes)


async def wait_task(client: Client, task_id: int, within: float | None) -> Waited:
    try:
        return Waited("task", task_id, "succeeded",
                      result=await client.wait(task_id, timeout=within))
    except TaskFailed as exc:
        return Waited("task", task_id, exc.state, error=exc.error)
    except WaitTimeout:
        return Waited("task", task_id, (await client.task(task_id)).state, timed_out=True)


async def wait_workflow(client: Client, workflow_id: UUID, within: float | None) -> Waited:
    try:
        status = await client.wait_workflow(workflow_id, timeout=within)
        return Waited("workflow", str(workflow_id), status.state,
                      result={step.name: step.output for step in status.steps})
    except WorkflowFailed as exc:
        return Waited("workflow", str(workflow_id), exc.state, error=exc.message)
    except WaitTimeout:
        status = await client.status(workflow_id)
        return Waited("workflow", str(workflow_id), status.state, timed_out=True)


def exit_status(outcomes: Sequence[Waited]) -> int:
    """0 all succeeded; a failure outranks a timeout (waiting longer cannot mend it)."""
    if any(o.failed for o in outcomes):
        return EXIT_FAILED
    return EXIT_TIMED_OUT if any(o.timed_out for o in outcomes) else 0


def render(outcomes: Sequence[Waited], output: str) -> str:
    if output != "text":
        return as_data(list(outcomes), output)
    return table(("target", "state", "result or error"),
                 ((f"{o.kind}/{o.id}", o.state,
                   "not ended at the timeout" if o.timed_out
                   else o.error or "no error recorded" if o.failed
                   else json.dumps(o.result)) for o in outcomes))
