"""`shoal worker`: claim and run tasks until SIGTERM, then drain."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from pydantic import ValidationError

from shoal.cli.common import Commands, csv, duration
from shoal.errors import InvalidInput
from shoal.worker import Worker, WorkerConfig, load_app

log = logging.getLogger("shoal")


def _default(field: str, unit: str = "") -> str:
    """`default N` for a WorkerConfig field, from the model itself."""
    return f"default {WorkerConfig.model_fields[field].default:g}{unit}"


def register(commands: Commands) -> None:
    p = commands.add("worker", run, "claim and run tasks until SIGTERM, then drain")
    p.add_argument("--app", required=True, help="MODULE:APP or path/to/file.py:APP")
    # A flag left out is left out of WorkerConfig too: its defaults are the only ones.
    flags = p.add_argument_group("worker settings (defaults: WorkerConfig's)",
                                 argument_default=argparse.SUPPRESS)
    flags.add_argument("--namespace", help="task namespace to serve (default: default)")
    flags.add_argument("--tags", type=csv, help="this worker's tags, comma-separated")
    flags.add_argument("--tasks", type=csv,
                       help="serve only these task names (default: all the app registers)")
    flags.add_argument("--concurrency", type=int, help=_default("concurrency"))
    flags.add_argument("--batch-size", type=int, help=_default("batch_size"))
    flags.add_argument("--claim-ttl", type=duration, help=_default("claim_ttl", "s"))
    flags.add_argument("--poll-interval", type=duration, help=_default("poll_interval", "s"))
    flags.add_argument("--drain-timeout", type=duration, help=_default("drain_timeout", "s"))
    flags.add_argument("--retention", type=duration,
                       help="how long finished tasks and workflows are kept ("
                       + _default("retention", "s") + ")")
    flags.add_argument("--metrics-port", type=int, help=_default("metrics_port") + "; 0 disables")
    flags.add_argument("--metrics-host", help="default $POD_IP or 0.0.0.0")
    flags.add_argument("--worker-id", help="default: $POD_NAME or HOST-PID")
    flags.add_argument("--pool", default=os.environ.get("SHOAL_POOL"),
                       help="WorkerPool name recorded in the liveness row")


async def run(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    given = {name: getattr(args, name) for name in WorkerConfig.model_fields
             if name not in ("dsn", "db_schema") and hasattr(args, name)}
    try:
        config = WorkerConfig(dsn=args.dsn, db_schema=args.schema, **given)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "a flag"
        raise InvalidInput(f"{flag}: {error['msg']}") from None
    worker = Worker(app, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info("worker %s serving %s in namespace %s", worker.identity.id,
             ",".join(worker.identity.task_names), worker.config.namespace)
    return await worker.run()
