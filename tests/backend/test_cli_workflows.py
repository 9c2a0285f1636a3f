"""`shoal submit|pause|resume|cancel|status|enqueue` end to end against a real Postgres:
the CLI submits a Workflow CR from YAML, steers it, and reports what the backend holds."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

from shoal.backend import Backend
from tests.support import RECORDER, cli

WORKFLOW = """
apiVersion: shoal.dev/v1alpha1
kind: Workflow
metadata: {name: nightly}
spec:
  poolRef: demo
  input: {n: 2}
  steps:
    - {name: first, task: add, input: {a: "${workflow.input.n}", b: 1}}
    - {name: second, task: echo, dependsOn: [first], input: "${steps.first.output}"}
"""


async def test_cli_steers_a_workflow(dsn: str, backend: Backend, tmp_path: Path) -> None:
    spec = tmp_path / "nightly.yaml"
    spec.write_text(WORKFLOW)
    submitted = await cli("submit", "--dsn", dsn, str(spec), "--app", RECORDER, "--key", "k1")
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = UUID(submitted.stdout.strip())
    again = await cli("submit", "--dsn", dsn, str(spec), "--key", "k1")
    assert UUID(again.stdout.strip()) == workflow_id  # idempotent by key

    async def run(*args: str) -> str:
        result = await cli(*args, "--dsn", dsn)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert await run("pause", str(workflow_id), "--actor", "alice", "--reason",
                     "db upgrade") == "pause: applied\n"
    assert await run("pause", str(workflow_id), "--actor", "alice") == \
        "pause: already in effect\n"
    text = await run("status", str(workflow_id))
    assert text.splitlines()[0] == f"workflow nightly ({workflow_id}): paused 0/2"
    assert "message: pause by alice: db upgrade" in text
    assert await run("resume", str(workflow_id), "--actor", "bob") == "resume: applied\n"
    assert await run("cancel", str(workflow_id), "--actor", "carol") == "cancel: applied\n"
    status = json.loads(await run("status", str(workflow_id), "-o", "json"))
    assert status["state"] == "cancelled" and status["name"] == "nightly"
    assert [(s["name"], s["state"]) for s in status["steps"]] == [
        ("first", "cancelled"), ("second", "cancelled")]
    assert [(c["command"], c["actor"], c["reason"], c["applied"]) for c in status["commands"]] \
        == [("pause", "alice", "db upgrade", True), ("pause", "alice", "", False),
            ("resume", "bob", "", True), ("cancel", "carol", "", True)]
    refused = await cli("resume", str(workflow_id), "--dsn", dsn)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("shoal: error: cannot resume a workflow that is "
                                      "cancelled")
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workflows") == 1


async def test_cli_enqueue_with_options(dsn: str, backend: Backend) -> None:
    result = await cli("enqueue", "--dsn", dsn, "echo", "--payload", '{"x": [1, 2]}',
                       "--namespace", "team-a", "--priority", "7", "--tags", "gpu,big",
                       "--delay", "1h", "--retries", "3", "--timeout", "90s",
                       "--lease-expiries", "5", "--force")
    assert result.returncode == 0, result.stderr
    task = await backend.get_task(int(result.stdout))
    assert (task.name, task.payload, task.namespace, task.priority, task.tags, task.state,
            task.max_attempts, task.max_expiries) == ("echo", {"x": [1, 2]}, "team-a", 7,
                                                      ["gpu", "big"], "delayed", 4, 5)
    assert (task.run_at - task.enqueued_at).total_seconds() == 3600
    timeout_ms = await backend.pool.fetchval("SELECT timeout_ms FROM shoal.tasks")
    assert timeout_ms == 90_000
