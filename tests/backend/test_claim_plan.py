"""The claim's plan against a real Postgres: the ready-task index, never a scan of history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from shoal.backend import Backend, NewTask, WorkerIdentity


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


async def test_claim_reads_ready_tasks_through_their_index(backend: Backend) -> None:
    """Finished rows must not slow the claim down: it finds ready tasks through `tasks_ready`."""
    await backend.enqueue([NewTask("t", i) for i in range(5000)])
    await backend.pool.execute(  # history: most rows finished, as on a long-lived queue
        "UPDATE shoal.tasks SET state = 'succeeded', finished_at = now() WHERE id % 10 <> 0")
    await backend.pool.execute("ANALYZE shoal.tasks")
    me = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("t",),
                        concurrency=100, max_attempts=(3,))
    raw = await backend.pool.fetchval(
        "EXPLAIN (FORMAT JSON) " + backend.queries.claim,
        me.namespace, list(me.task_names), list(me.tags), 100, 30.0, me.id, [3], None,
        [], [], [])
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    on_tasks = [n for n in nodes(plan) if n.get("Relation Name") == "tasks"]
    assert not [n for n in on_tasks if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    assert any(n.get("Index Name") == "tasks_ready" for n in nodes(plan)), json.dumps(plan)
    assert len(await backend.claim(me, 100, 30)) == 100  # and the statement claims as planned
