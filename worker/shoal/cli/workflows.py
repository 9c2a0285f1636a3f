"""`shoal submit|pause|resume|cancel|status`: workflows from the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from uuid import UUID

from shoal.backend import CommandRecord, WorkflowStatus
from shoal.cli.common import Commands, read_text
from shoal.cli.output import add_output_flag, as_data
from shoal.client import Client, parse_workflow
from shoal.worker import load_app


def register(commands: Commands) -> None:
    p = commands.add("submit", submit, "submit a workflow from YAML (a spec or a Workflow CR)")
    p.add_argument("file", help="YAML file, or - for stdin")
    p.add_argument("--name", default=None)
    p.add_argument("--namespace", default="default")
    p.add_argument("--key", default=None, help="idempotency key")
    p.add_argument("--app", default=None, help="validate task names against this app")

    for verb in ("pause", "resume", "cancel"):
        p = commands.add(verb, command, f"{verb} a workflow")
        p.add_argument("workflow_id", type=UUID)
        p.add_argument("--reason", default="")
        p.add_argument("--actor", default=os.environ.get("USER") or "shoal-cli")
        p.set_defaults(verb=verb)

    p = commands.add("status", status, "show a workflow's state and steps")
    p.add_argument("workflow_id", type=UUID)
    add_output_flag(p)


async def submit(args: argparse.Namespace) -> int:
    spec = parse_workflow(await asyncio.to_thread(read_text, args.file))
    name = args.name or (Path(args.file).stem if args.file != "-" else "workflow")
    app = load_app(args.app) if args.app else None
    async with await Client.connect(args.dsn, schema=args.schema, app=app,
                                    namespace=args.namespace) as client:
        workflow_id = await client.submit_workflow(spec, name=name, key=args.key)
    print(workflow_id)
    return 0


async def command(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema) as client:
        record = await getattr(client, args.verb)(args.workflow_id, reason=args.reason,
                                                  actor=args.actor)
    print(render_command(args.verb, record))
    return 0


def render_command(verb: str, record: CommandRecord) -> str:
    return f"{verb}: {'applied' if record.applied else 'already in effect'}"


async def status(args: argparse.Namespace) -> int:
    async with await Client.connect(args.dsn, schema=args.schema) as client:
        found = await client.status(args.workflow_id)
    print(render_status(found, args.output))
    return 0


def render_status(found: WorkflowStatus, output: str) -> str:
    if output != "text":
        return as_data(found, output)
    done, total = found.progress
    lines = [f"workflow {found.name} ({found.id}): {found.state} {done}/{total}"]
    if found.message:
        lines.append(f"  message: {found.message}")
    lines += [f"  {step.name:<24} {step.state:<10} attempts {step.attempts}/{step.max_attempts}"
              + (f"  error: {step.error}" if step.error else "") for step in found.steps]
    return "\n".join(lines)
