"""`shoal worker --log-format json`: every line of its output is one JSON record, and
the records a task's handler logs (from its thread) carry the attempt's fields."""

from __future__ import annotations

import json
import signal

from shoal import Client
from shoal.backend import Backend
from tests.support import Spawner, eventually, task_in


async def test_worker_logs_are_json_lines_with_task_fields(dsn: str, backend: Backend,
                                                          spawn: Spawner) -> None:
    worker = await spawn.worker(dsn, "--log-format", "json")
    task_id = await Client(backend).enqueue("chatty", {"n": 1})
    await eventually(lambda: task_in(backend, task_id, "succeeded"), what="the chatty task")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    records = [json.loads(line) for line in worker.output().splitlines()]
    assert any(r["message"] == "drained" for r in records)
    chatty = [r for r in records if r["logger"] == "tests.chatty"]
    assert [r["message"] for r in chatty] == ["working on {'n': 1}",
                                              "it went wrong\nacross two lines"]
    for r in chatty:
        assert (r["task_id"], r["task"], r["attempt"], r["workflow"]) == (
            task_id, "chatty", 1, None)
        assert r["pod"] == worker.worker_id
    assert chatty[1]["traceback"].endswith("ValueError: first line\nsecond line")
    assert "task_id" not in next(r for r in records if r["message"] == "drained")
