"""What every `shoal` command shares in how it prints: one `-o` spelling (text, json,
yaml; `table` still accepted), and a reader that goes away (`| head`) ends the command
quietly with 141, as a process killed by SIGPIPE would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import pytest
import yaml

from shoal import Client
from shoal.backend import Backend
from shoal.client import Job
from tests.support import REPO, SHOAL, cli


async def seed(backend: Backend) -> tuple[int, str]:
    """Some tasks, a dead letter and a workflow: (a task id, the workflow id)."""
    client = Client(backend)
    task_id = 0
    for n in range(3):
        task_id = await client.enqueue("echo", n)
    await backend.pool.execute("UPDATE shoal.tasks SET state = 'dead', error = 'boom', "
                               "finished_at = now() WHERE id = $1", task_id)
    workflow_id = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo"}]}, name="wf")
    await backend.pool.execute(  # ages that do not change while the test runs
        "UPDATE shoal.tasks SET enqueued_at = now() - interval '3 days', "
        "run_at = now() - interval '3 days'")
    return task_id, str(workflow_id)


def commands(task_id: int, workflow_id: str) -> list[tuple[str, ...]]:
    """Every command that takes `-o`."""
    return [("tasks", "list"), ("tasks", "show", str(task_id)), ("queue",),
            ("periodic", "list"), ("status", workflow_id), ("dead-letters", "list")]


async def test_one_output_spelling_for_every_command(dsn: str, backend: Backend) -> None:
    task_id, workflow_id = await seed(backend)
    for command in commands(task_id, workflow_id):
        outputs = {}
        for output in ("text", "table", "json", "yaml"):
            result = await cli(*command, "--dsn", dsn, "-o", output)
            assert (result.returncode, result.stderr) == (0, ""), (command, output)
            outputs[output] = result.stdout
        assert outputs["table"] == outputs["text"], command  # the old spelling
        assert steady(yaml.safe_load(outputs["yaml"])) == steady(json.loads(outputs["json"]))
        assert (await cli(*command, "--dsn", dsn)).stdout == outputs["text"], command
        refused = await cli(*command, "--dsn", dsn, "-o", "xml")
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.startswith(f"shoal {command[0]}")
        assert refused.stderr.endswith(": error: argument -o/--output: invalid choice: 'xml' "
                                       "(choose from 'text', 'json', 'yaml')\n"), command


def steady(data: Any) -> Any:
    """`data` without its floats (ages in seconds, which grow between two runs)."""
    if isinstance(data, dict):
        return {k: steady(v) for k, v in data.items() if not isinstance(v, float)}
    return [steady(v) for v in data] if isinstance(data, list) else data


async def closed_pipe_run(*args: str) -> tuple[int, str]:
    """Run `shoal ARGS` writing to a pipe whose reader has already gone."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = await asyncio.create_subprocess_exec(
            SHOAL, *args, stdout=writer, stderr=asyncio.subprocess.PIPE, cwd=REPO)
    finally:
        os.close(writer)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize("rows", [3, 2000])  # within the pipe's buffer, and beyond it
async def test_a_closed_pipe_ends_quietly(dsn: str, backend: Backend, rows: int) -> None:
    client = Client(backend)
    for start in range(0, rows, 500):
        await client.enqueue_many([Job("echo", n) for n in range(start, min(rows, start + 500))])
    task_id = (await client.tasks(limit=1))[0].id
    workflow_id = await client.submit_workflow({"steps": [{"name": "a", "task": "echo"}]},
                                               name="wf")
    for command in [("tasks", "list", "--limit", str(rows)), ("queue",),
                    ("tasks", "show", str(task_id)), ("status", str(workflow_id)),
                    ("tasks", "list", "-o", "json", "--limit", str(rows))]:
        status, stderr = await closed_pipe_run(*command, "--dsn", dsn)
        assert (status, stderr) == (128 + signal.SIGPIPE, ""), command

