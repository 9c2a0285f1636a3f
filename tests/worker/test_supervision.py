"""No service of a worker dies silently. Each case ends the same way: the failure is
logged with its traceback, the worker stops being ready, hands back what it holds
(running handlers cancelled and their tasks given up as lease expiries, results waiting
for their report reported, or given up when the database will not take them) and exits
non-zero, so Kubernetes restarts it. What it gave up used one lease expiry each: a task
that makes every worker fail becomes a dead letter instead of a crash loop. The cases: a
service that raises, the metrics port already taken, and a step report the database
refuses (a trigger raises)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from pathlib import Path

import pytest

from shoal import Client, Job
from shoal.backend import Backend
from shoal.worker import Worker, WorkerConfig
from tests.apps.recorder import app, runs
from tests.cluster.postgres import free_port
from tests.support import Spawner, eventually


class Boom:
    """A service that fails once the worker runs two handlers and holds one result
    back from its report (it keeps the report lock until it raises)."""

    name = "boom"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.ready_before: bool | None = None

    async def run(self) -> None:
        w = self.worker
        async with w.report_lock:
            await eventually(lambda: w.ledger.busy == 2 and len(w.ledger.outbox) == 1,
                             what="two runs and one result waiting")
            self.ready_before = w.ready()
            raise RuntimeError("boom: a bug in a service")


async def test_a_service_that_raises_ends_the_worker_after_handing_back(
        dsn: str, backend: Backend, log: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    client = Client(backend, app)
    slow = await client.enqueue_many([Job("record", {"log": log, "sleep": 600})] * 2)
    failing = await client.enqueue("permanent", {"log": log})  # its report goes alone
    worker = Worker(app, WorkerConfig(dsn=dsn, metrics_port=0, concurrency=3, batch_size=3,
                                      poll_interval=0.2, worker_id=f"w-{uuid.uuid4().hex[:6]}"))
    boom = Boom(worker)
    worker.supervisor.services.append(boom)
    with caplog.at_level(logging.INFO):
        status = await asyncio.wait_for(worker.run(), 60)
    assert status == 1
    assert boom.ready_before is True and not worker.ready()
    (failure,) = [r for r in caplog.records if r.getMessage().startswith("service boom failed")]
    assert failure.levelno == logging.ERROR and failure.exc_info is not None
    assert "RuntimeError: boom: a bug in a service" in caplog.text  # the traceback
    assert "Traceback" in caplog.text or failure.exc_text
    # given-up work: the two running tasks are ready again, their attempt not counted
    # and one lease expiry used, saying why; the result held back was reported; the
    # liveness row is gone
    for task_id in slow:
        task = await backend.get_task(task_id)
        assert (task.state, task.attempts, task.expiries, task.worker_id) == (
            "ready", 0, 1, None)
        assert task.error == (f"lease given up (1 of 4 allowed): worker {worker.identity.id}"
                              " failed: service boom failed: RuntimeError: boom: a bug in a"
                              " service")
    assert (await backend.get_task(failing)).state == "dead"
    assert sorted(e["task"] for e in runs(log) if e["event"] == "cancelled") == sorted(slow)
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workers") == 0


async def test_a_taken_metrics_port_ends_the_worker_with_a_traceback(
        dsn: str, backend: Backend, spawn: Spawner, log: str) -> None:
    ids = await Client(backend, app).enqueue_many([Job("record", {"log": log})] * 20)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = await spawn.worker(dsn, "--metrics-port", str(port), "--metrics-host",
                                    "127.0.0.1")
        assert await worker.wait(within=60) == 1
    output = worker.output()
    assert "service metrics failed" in output and "Traceback" in output
    assert "address already in use" in output.lower()
    # nothing is left leased to it, and no liveness row
    assert await backend.pool.fetchval(
        "SELECT count(*) FROM shoal.tasks WHERE state = 'running'") == 0
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workers") == 0
    done = {e["task"] for e in runs(log) if e["event"] == "done"}
    for task_id in ids:
        task = await backend.get_task(task_id)
        assert task.state == ("succeeded" if task_id in done else "ready")


# Refuses every step's success (a stored workflow spec this version cannot read no
# longer does: it fails its workflow, see tests/worker/test_skew.py).
REFUSE_STEP_RESULTS = """
CREATE FUNCTION shoal.test_refuse() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'step results refused by test_refuse'; END $$;
CREATE TRIGGER test_refuse BEFORE UPDATE ON shoal.tasks FOR EACH ROW
WHEN (OLD.workflow_id IS NOT NULL AND NEW.state = 'succeeded')
EXECUTE FUNCTION shoal.test_refuse();
"""


async def test_a_refused_step_report_ends_the_worker_and_gives_the_step_up(
        dsn: str, backend: Backend, spawn: Spawner, log: str, tmp_path: Path) -> None:
    finish = tmp_path / "finish"
    client = Client(backend, app)
    workflow_id = await client.submit_workflow({"steps": [
        {"name": "a", "task": "record", "input": {"log": log, "sleep": 600,
                                                  "fast_flag": str(finish)}},
        {"name": "b", "task": "record", "dependsOn": ["a"], "input": {"log": log}},
    ]}, name="upgrade")
    port = free_port()
    worker = await spawn.worker(dsn, "--metrics-port", str(port), "--metrics-host",
                                "127.0.0.1")
    await eventually(lambda: runs(log), what="step a to start")
    await backend.pool.execute(REFUSE_STEP_RESULTS)
    finish.touch()
    assert await worker.wait(within=60) == 1
    output = worker.output()
    assert "service report failed" in output and "Traceback" in output
    assert "step results refused by test_refuse" in output
    assert "giving their tasks up to run again" in output
    status = await client.status(workflow_id)
    assert [(s.name, s.state, s.attempts) for s in status.steps] == [
        ("a", "ready", 0), ("b", "blocked", 0)]  # given up, not stuck `running`
    assert status.state == "running"
    step = await backend.get_task(await backend.pool.fetchval(
        "SELECT id FROM shoal.tasks WHERE workflow_id = $1 AND step = 'a'", workflow_id))
    assert step.expiries == 1  # the next worker that fails on it counts too
    assert step.error is not None and "step results refused by test_refuse" in step.error
    assert await backend.pool.fetchval("SELECT count(*) FROM shoal.workers") == 0


async def test_sigterm_while_the_database_is_unreachable_exits_promptly(
        spawn: Spawner, tmp_path: Path) -> None:
    """Start-up waits for the database (logging each attempt) and a stop ends the wait."""
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    worker = await spawn.worker(nowhere)
    await eventually(lambda: worker.output().count("database not ready (attempt") >= 2,
                     within=30, what="two logged attempts")
    worker.signal(signal.SIGTERM)
    assert await worker.wait(within=30) == 0
    assert "attempt 1, retrying in" in worker.output()

