"""`shoal`: one console script, one subcommand per job.

Every subcommand takes `--dsn` (default `$SHOAL_DSN`) and `--schema`
(default `$SHOAL_SCHEMA` or `shoal`). Bad input exits with status 2 and one
clear line on stderr; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from uuid import UUID

from shoal.backend import Backend, DeadLetterFilter
from shoal.client import Client, parse_workflow
from shoal.errors import InvalidInput, ShoalError
from shoal.units import parse_duration
from shoal.worker import Worker, WorkerConfig, load_app

log = logging.getLogger("shoal")


def _default(field: str, unit: str = "") -> str:
    """`default N` for a WorkerConfig field, from the model itself."""
    return f"default {WorkerConfig.model_fields[field].default:g}{unit}"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["operator"]:
        from shoal_operator.main import main as operator_main

        return operator_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(level=os.environ.get("SHOAL_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "dsn", None):
        parser.error("no database: pass --dsn or set SHOAL_DSN")
    try:
        return asyncio.run(args.run(args))
    except ShoalError as exc:
        print(f"shoal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], Awaitable[int]],
                help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--dsn", default=os.environ.get("SHOAL_DSN"),
                         help="PostgreSQL DSN (default: $SHOAL_DSN)")
        sub.add_argument("--schema", default=os.environ.get("SHOAL_SCHEMA", "shoal"),
                         help="schema holding Shoal's tables (default: shoal)")
        sub.set_defaults(run=run)
        return sub

    p = command("migrate", cmd_migrate, "create or upgrade the schema (idempotent)")
    p.add_argument("--aging-interval", type=_duration, default=None,
                   help="waiting this long raises a task's priority by one (default 5m; "
                        "kept when omitted)")

    p = command("worker", cmd_worker, "claim and run tasks until SIGTERM, then drain")
    p.add_argument("--app", required=True, help="MODULE:APP or path/to/file.py:APP")
    # A flag left out is left out of WorkerConfig too: its defaults are the only ones.
    worker = p.add_argument_group("worker settings (defaults: WorkerConfig's)",
                                  argument_default=argparse.SUPPRESS)
    worker.add_argument("--namespace", help="task namespace to serve (default: default)")
    worker.add_argument("--tags", type=_csv, help="this worker's tags, comma-separated")
    worker.add_argument("--tasks", type=_csv,
                        help="serve only these task names (default: all the app registers)")
    worker.add_argument("--concurrency", type=int, help=_default("concurrency"))
    worker.add_argument("--batch-size", type=int, help=_default("batch_size"))
    worker.add_argument("--claim-ttl", type=_duration, help=_default("claim_ttl", "s"))
    worker.add_argument("--poll-interval", type=_duration, help=_default("poll_interval", "s"))
    worker.add_argument("--drain-timeout", type=_duration, help=_default("drain_timeout", "s"))
    worker.add_argument("--retention", type=_duration,
                        help="how long finished tasks and workflows are kept ("
                        + _default("retention", "s") + ")")
    worker.add_argument("--metrics-port", type=int, help=_default("metrics_port") + "; 0 disables")
    worker.add_argument("--metrics-host", help="default $POD_IP or 0.0.0.0")
    worker.add_argument("--worker-id", help="default: $POD_NAME or HOST-PID")
    worker.add_argument("--pool", default=os.environ.get("SHOAL_POOL"),
                        help="WorkerPool name recorded in the liveness row")

    p = command("enqueue", cmd_enqueue, "enqueue one task")
    p.add_argument("task")
    p.add_argument("--payload", default="null", help="JSON payload")
    p.add_argument("--namespace", default="default")
    p.add_argument("--priority", type=int, default=None)
    p.add_argument("--tags", type=_csv, default=None)
    p.add_argument("--delay", default=None, help="e.g. 30s")
    p.add_argument("--retries", type=int, default=None)
    p.add_argument("--timeout", default=None)
    p.add_argument("--key", default=None, help="idempotency key")
    p.add_argument("--app", default=None, help="validate the name and payload against this app")

    p = command("submit", cmd_submit, "submit a workflow from YAML (a spec or a Workflow CR)")
    p.add_argument("file", help="YAML file, or - for stdin")
    p.add_argument("--name", default=None)
    p.add_argument("--namespace", default="default")
    p.add_argument("--key", default=None, help="idempotency key")
    p.add_argument("--app", default=None, help="validate task names against this app")

    for verb in ("pause", "resume", "cancel"):
        p = command(verb, cmd_command, f"{verb} a workflow")
        p.add_argument("workflow_id", type=UUID)
        p.add_argument("--reason", default="")
        p.add_argument("--actor", default=os.environ.get("USER") or "shoal-cli")
        p.set_defaults(verb=verb)

    p = command("status", cmd_status, "show a workflow's state and steps")
    p.add_argument("workflow_id", type=UUID)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    p = command("dead-letters", cmd_dead_letters, "list, count or retry dead letters")
    p.add_argument("action", choices=("list", "count", "retry"))
    p.add_argument("--task", default=None, help="task name")
    p.add_argument("--namespace", default=None)
    p.add_argument("--workflow", type=UUID, default=None)
    p.add_argument("--id", type=int, default=None, help="one task id")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    commands.add_parser("operator", help="run the Kubernetes operator (see shoal operator -h)",
                        add_help=False)
    return parser


def _duration(value: str) -> float:
    """argparse type for durations: the error names the flag and says what is expected."""
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


async def cmd_migrate(args: argparse.Namespace) -> int:
    backend = await Backend.connect(args.dsn, schema=args.schema, max_size=1)
    try:
        applied = await backend.migrate(args.aging_interval)
        aging = await backend.aging_seconds()
    finally:
        await backend.close()
    done = ", ".join(map(str, applied)) if applied else "none (up to date)"
    print(f"schema {args.schema}: applied migrations {done}; aging interval {aging:g}s")
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    given = {name: getattr(args, name) for name in WorkerConfig.model_fields
             if name not in ("dsn", "db_schema") and hasattr(args, name)}
    worker = Worker(app, WorkerConfig(dsn=args.dsn, db_schema=args.schema, **given))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info("worker %s serving %s in namespace %s", worker.identity.id,
             ",".join(worker.identity.task_names), worker.config.namespace)
    await worker.run()
    return 0


async def cmd_enqueue(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--payload is not valid JSON: {exc}") from None
    app = load_app(args.app) if args.app else None
    async with await Client.connect(args.dsn, schema=args.schema, app=app,
                                    namespace=args.namespace) as client:
        task_id = await client.enqueue(
            args.task, payload, priority=args.priority, tags=args.tags, delay=args.delay,
            retries=args.retries, timeout=args.timeout, idempotency_key=args.key)
    print(task_id)
    return 0


async def cmd_submit(args: argparse.Namespace) -> int:
    spec = parse_workflow(await asyncio.to_thread(_read_text, args.file))
    name = args.name or (Path(args.file).stem if args.file != "-" else "workflow")
    app = load_app(args.app) if args.app else None
    async with await Client.connect(args.dsn, schema=args.schema, app=app,
                                    namespace=args.namespace) as client:
        workflow_id = await client.submit_workflow(spec, name=name, key=args.key)
    print(workflow_id)
    return 0


async def cmd_command(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema) as client:
        record = await getattr(client, args.verb)(args.workflow_id, reason=args.reason,
                                                  actor=args.actor)
    print(f"{args.verb}: {'applied' if record.applied else 'already in effect'}")
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema) as client:
        status = await client.status(args.workflow_id)
    if args.output == "json":
        print(json.dumps(asdict(status), default=str, indent=2))
        return 0
    done, total = status.progress
    print(f"workflow {status.name} ({status.id}): {status.state} {done}/{total}")
    if status.message:
        print(f"  message: {status.message}")
    for step in status.steps:
        print(f"  {step.name:<24} {step.state:<10} attempts {step.attempts}/{step.max_attempts}"
              + (f"  error: {step.error}" if step.error else ""))
    return 0


async def cmd_dead_letters(args: argparse.Namespace) -> int:
    where = DeadLetterFilter(task_name=args.task, namespace=args.namespace,
                             workflow_id=args.workflow, task_id=args.id)
    async with await Client.connect(args.dsn, schema=args.schema) as client:
        if args.action == "count":
            print(await client.count_dead_letters(where))
        elif args.action == "retry":
            print(f"retried {await client.retry_dead_letters(where)}")
        else:
            letters = await client.dead_letters(where, args.limit)
            if args.output == "json":
                print(json.dumps([asdict(d) for d in letters], default=str, indent=2))
            for d in letters if args.output == "text" else []:
                print(f"{d.id}\t{d.namespace}\t{d.name}\tattempts {d.attempts}/"
                      f"{d.max_attempts}\t{d.error}")
    return 0


def _read_text(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
