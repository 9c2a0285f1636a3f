"""`shoal tasks list|show|retry`, `shoal queue`, `shoal --version`: filters select what
they say, `-o json` is the same data as the table, and every error is one line on
stderr with a non-zero exit."""

from __future__ import annotations

import json
from uuid import UUID

import pytest

from shoal import Client, __version__
from shoal.backend import Backend, NewTask, Outcome, WorkerIdentity
from tests.support import cli

WORKER = WorkerIdentity(id="w1", namespace="default", tags=("gpu",),
                        task_names=("echo", "resize"), concurrency=10, max_attempts=(1, 1))


async def seed(backend: Backend) -> dict[str, int | UUID]:
    """A task in each state, a tagged one, another namespace, a workflow step."""
    client = Client(backend)
    ids: dict[str, int | UUID] = {}
    ids["dead"] = await client.enqueue("resize", {"n": 1})
    ids["running"] = await client.enqueue("echo", 2)
    claimed = {t.id: t for t in await backend.claim(WORKER, 2, 30)}
    failed = claimed[int(ids["dead"])]
    await backend.report([Outcome(failed.id, failed.lease_token, error="boom")])
    ids["ready"] = await client.enqueue("echo", 3, tags=["gpu"])
    ids["delayed"] = await client.enqueue("echo", 4, delay="1h")
    (ids["other_ns"],) = await backend.enqueue([NewTask("echo", 5, namespace="batch")])
    ids["workflow"] = await client.submit_workflow(
        {"steps": [{"name": "a", "task": "echo"}, {"name": "b", "task": "echo",
                                                   "dependsOn": ["a"]}]}, name="wf")
    await backend.pool.execute(
        "UPDATE shoal.tasks SET enqueued_at = now() - interval '2 hours', "
        "run_at = now() - interval '2 hours' WHERE id = $1", ids["ready"])
    return ids


async def listed(dsn: str, *args: str) -> list[int]:
    result = await cli("tasks", "list", "--dsn", dsn, "-o", "json", *args)
    assert result.returncode == 0, result.stderr
    return [t["id"] for t in json.loads(result.stdout)]


async def test_tasks_list_filters(dsn: str, backend: Backend) -> None:
    ids = await seed(backend)
    everything = await listed(dsn)
    assert len(everything) == 7 and everything == sorted(everything, reverse=True)
    assert await listed(dsn, "--state", "dead") == [ids["dead"]]
    assert await listed(dsn, "--state", "running") == [ids["running"]]
    assert await listed(dsn, "--state", "delayed") == [ids["delayed"]]
    steps = await listed(dsn, "--workflow", str(ids["workflow"]))
    assert len(steps) == 2
    assert await listed(dsn, "--state", "blocked") == [max(steps)]
    assert await listed(dsn, "--state", "ready,running", "--namespace", "default",
                        "--name", "echo") == sorted([min(steps), ids["ready"], ids["running"]],
                                                    reverse=True)
    assert await listed(dsn, "--tag", "gpu") == [ids["ready"]]
    assert await listed(dsn, "--namespace", "batch") == [ids["other_ns"]]
    assert await listed(dsn, "--older-than", "1h") == [ids["ready"]]
    assert ids["ready"] not in await listed(dsn, "--newer-than", "30m")
    assert len(await listed(dsn, "--limit", "2")) == 2

    table = await cli("tasks", "list", "--dsn", dsn, "--state", "dead")
    header, row = table.stdout.splitlines()
    assert header.split() == ["ID", "NAMESPACE", "NAME", "STATE", "PRIORITY", "ATTEMPTS",
                              "AGE", "WORKFLOW", "ERROR"]
    assert row.split() == [str(ids["dead"]), "default", "resize", "dead", "0", "1/1",
                           row.split()[6], "-", "boom"]


async def test_tasks_show_and_retry(dsn: str, backend: Backend) -> None:
    ids = await seed(backend)
    shown = await cli("tasks", "show", str(ids["dead"]), "--dsn", dsn)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert fields["state"].strip() == "dead" and fields["error"].strip() == "boom"
    assert fields["payload"].strip() == '{"n": 1}'
    as_json = json.loads((await cli("tasks", "show", str(ids["dead"]), "--dsn", dsn,
                                    "-o", "json")).stdout)
    assert (as_json["state"], as_json["payload"], as_json["attempts"]) == ("dead", {"n": 1}, 1)

    refused = await cli("tasks", "retry", "--dsn", dsn)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("shoal: error: name task ids, or select dead letters with "
                              "--name, --namespace or --workflow\n")
    retried = await cli("tasks", "retry", str(ids["dead"]), str(ids["ready"]), "--dsn", dsn)
    assert retried.stdout == "retried 1\n"  # the ready one is no dead letter
    assert (await backend.get_task(int(ids["dead"]))).state == "ready"


async def test_queue_depth(dsn: str, backend: Backend) -> None:
    await seed(backend)
    result = await cli("queue", "--dsn", dsn, "-o", "json")
    assert result.returncode == 0, result.stderr
    depth = {(d["namespace"], d["name"]): d for d in json.loads(result.stdout)}
    echo = depth[("default", "echo")]
    assert (echo["ready"], echo["delayed"], echo["running"], echo["blocked"], echo["dead"]) == (
        2, 1, 1, 1, 0)  # the workflow's first step is ready too
    assert 7100 < echo["oldest_ready_seconds"] < 7300  # the task made two hours old
    assert depth[("default", "resize")]["dead"] == 1
    assert depth[("batch", "echo")]["ready"] == 1
    only = json.loads((await cli("queue", "--dsn", dsn, "--namespace", "batch", "-o",
                                 "json")).stdout)
    assert [(d["namespace"], d["name"]) for d in only] == [("batch", "echo")]
    table = (await cli("queue", "--dsn", dsn)).stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "READY", "DELAYED", "PAUSED", "RUNNING",
                                "BLOCKED", "DEAD", "OLDEST", "READY"]
    assert table[2].split() == ["default", "echo", "2", "1", "0", "1", "1", "0", "2h"]


async def test_version() -> None:
    result = await cli("--version")
    assert (result.returncode, result.stdout) == (0, f"shoal {__version__}\n")
    assert __version__ not in ("", "unknown")


@pytest.mark.parametrize(("args", "status", "error"), [
    (("tasks", "list", "--state", "sleeping"), 2,
     "shoal tasks list: error: argument --state: unknown state(s) sleeping: use blocked, "
     "ready, delayed, running, succeeded, dead, cancelled"),
    (("tasks", "list", "--older-than", "soon"), 2,
     "shoal tasks list: error: argument --older-than: invalid duration 'soon': use a number "
     "with a unit, e.g. 30s, 5m, 1h30m, 250ms"),
    (("tasks", "list", "--limit", "0"), 2,
     "shoal tasks list: error: argument --limit: '0' is not a positive integer"),
    (("tasks", "show", "x"), 2,
     "shoal tasks show: error: argument task_id: invalid int value: 'x'"),
    (("tasks",), 2,
     "shoal tasks: error: the following arguments are required: COMMAND"),
    (("tasks", "show", "424242"), 2, "shoal: error: no task with id 424242"),
    (("queue", "--schema", "nothing_here"), 2,
     "shoal: error: schema 'nothing_here' is missing or not up to date (relation "
     '"nothing_here.tasks" does not exist): run `shoal migrate`'),
])
async def test_every_error_is_one_line(dsn: str, backend: Backend, args: tuple[str, ...],
                                       status: int, error: str) -> None:
    result = await cli(*args, "--dsn", dsn) if args != ("tasks",) else await cli(*args)
    assert (result.returncode, result.stdout) == (status, "")
    assert result.stderr == error + "\n"


async def test_no_database_is_one_line() -> None:
    result = await cli("queue", env={"SHOAL_DSN": ""})
    assert (result.returncode, result.stderr) == (
        2, "shoal queue: error: no database: pass --dsn or set SHOAL_DSN\n")
    result = await cli("queue", "--dsn", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("shoal: error: cannot reach the database at ")
