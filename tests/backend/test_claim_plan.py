"""The claim's plan against a real Postgres: the ready-task index, never a scan of history,
never JIT compilation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

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


async def test_a_costly_claim_is_not_jit_compiled(backend: Backend, dsn: str) -> None:
    """With a large analysed backlog the claim's estimated cost passes jit_above_cost; a
    plain session would compile it with LLVM on every execution, Shoal's sessions do not."""
    await backend.enqueue([NewTask("t", i) for i in range(20_000)])
    await backend.pool.execute("ANALYZE shoal.tasks")
    explain = "EXPLAIN (FORMAT JSON) " + backend.queries.claim
    args = ("default", ["t"], [], 100, 30.0, "w", [3], None, [], [], [])
    plain = await asyncpg.connect(dsn)
    try:
        plain_plan = json.loads(await plain.fetchval(explain, *args))[0]
    finally:
        await plain.close()
    if "JIT" not in plain_plan:
        pytest.skip("this Postgres does not JIT-compile (no LLVM, or jit is off server-wide)")
    shoal_plan = await backend.pool.fetchval(explain, *args)
    shoal_plan = (json.loads(shoal_plan) if isinstance(shoal_plan, str) else shoal_plan)[0]
    assert "JIT" not in shoal_plan, shoal_plan.get("JIT")
