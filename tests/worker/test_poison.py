"""Poison results fail their own task permanently and nothing else: a result with U+0000,
NaN, an unpaired surrogate or over the size limit is refused when it is encoded (before
any SQL), the task is a dead letter saying why, and the worker goes on with the next
task. An error text with a NUL byte is stored with U+FFFD in its place."""

from __future__ import annotations

import pytest

from shoal import Client
from shoal.backend import Backend
from tests.apps.recorder import app
from tests.support import eventually, running_worker, task_in


@pytest.mark.parametrize(("kind", "error"), [
    ("nul", "result is not JSON: a string contains a NUL character (U+0000)"),
    ("nan", "result is not JSON: Out of range float values are not JSON compliant"),
    ("surrogate", "result is not JSON: a string contains an unpaired surrogate"),
    ("huge", "result is not JSON: 16,777,219 bytes of JSON, over the limit of 16,777,216"),
    ("nul-error", "RuntimeError: bad\ufffdbyte"),
])
async def test_a_poison_result_is_its_own_dead_letter(dsn: str, backend: Backend, log: str,
                                                      kind: str, error: str) -> None:
    client = Client(backend, app)
    async with running_worker(app, dsn, concurrency=1, batch_size=1) as worker:
        bad = await client.enqueue("poison", {"log": log, "kind": kind})
        await eventually(lambda: task_in(backend, bad, "dead"), what="a dead letter")
        good = await client.enqueue("record", {"log": log})  # the worker goes on
        await eventually(lambda: task_in(backend, good, "succeeded"), what="the next task")
        assert worker.supervisor.failed is None and worker.ready()
    task = await backend.get_task(bad)
    assert (task.error, task.attempts, task.result) == (error, 1, None)
