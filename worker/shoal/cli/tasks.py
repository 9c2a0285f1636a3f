"""`shoal enqueue`: one task from the command line."""

from __future__ import annotations

import argparse
import json

from shoal.cli.common import Commands, csv
from shoal.client import Client, Job
from shoal.errors import InvalidInput
from shoal.worker import load_app


def register(commands: Commands) -> None:
    p = commands.add("enqueue", enqueue, "enqueue one task")
    p.add_argument("task")
    p.add_argument("--payload", default="null", help="JSON payload")
    p.add_argument("--namespace", default="default")
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("--tags", type=csv, default=None)
    p.add_argument("--delay", default=None, help="e.g. 30s")
    p.add_argument("--retries", type=int, default=None)
    p.add_argument("--lease-expiries", type=int, default=None,
                   help="lease expiries (worker killed or cut off) before the task is a dead "
                        "letter (default: the task's definition, else 3)")
    p.add_argument("--timeout", default=None)
    p.add_argument("--key", default=None, help="idempotency key")
    p.add_argument("--unique", default="forever", metavar="SCOPE",
                   help="how long --key holds: forever (the default), active (until the "
                        "task ended: succeeded, cancelled or dead), or a period such as 1h "
                        "(one task per key per clock-aligned hour)")
    p.add_argument("--app", default=None, help="validate the name and payload against this app")
    p.add_argument("--force", action="store_true",
                   help="enqueue a task name no worker has served in the namespace yet")


async def enqueue(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--payload is not valid JSON: {exc}") from None
    app = load_app(args.app) if args.app else None
    async with await Client.connect(args.dsn, schema=args.schema, app=app,
                                    namespace=args.namespace) as client:
        (task_id,) = await client.enqueue_many([Job(
            args.task, payload, priority=args.priority, tags=args.tags, delay=args.delay,
            retries=args.retries, lease_expiries=args.lease_expiries, timeout=args.timeout,
            idempotency_key=args.key, unique=args.unique)], force=args.force)
    print(task_id)
    return 0
