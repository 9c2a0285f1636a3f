"""The claim's plan against a real Postgres: the ready-task index, never a scan of history,
never JIT compilation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from shoal.backend import Backend, NewTask, WorkerIdentity
from shoal.backend.connections import SESSION_SETTINGS, WORKER_SESSION_SETTINGS
from shoal.backend.queries import Queries

ME = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("t",),
                    concurrency=100, max_attempts=(3,))


async def explain_claim(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, Any]:
    """EXPLAIN (FORMAT JSON) of a claim of 100 by ME, with nothing to complete and a
    few tasks of its own to skip."""
    raw = await conn.fetchval(
        "EXPLAIN (FORMAT JSON) " + Queries("shoal").claim,
        ME.namespace, list(ME.task_names), list(ME.tags), 100, 30.0, ME.id,
        list(ME.max_attempts), None, [], [], [], [1, 2, 3], [3] * len(ME.task_names))
    return dict(json.loads(raw)[0])


async def explain_generic_claim(conn: asyncpg.Connection) -> dict[str, Any]:
    """The plan a worker's session runs every claim with: the generic plan of the
    prepared claim (the one plan made once, whatever the parameters)."""
    await conn.execute("PREPARE claim AS " + Queries("shoal").claim)
    try:
        raw = await conn.fetchval(  # the values do not matter: the plan is generic
            "EXPLAIN (FORMAT JSON) EXECUTE claim('default', '{t}', '{}', 100, 30, 'w', '{3}',"
            " NULL, '{}', '{}', '{}', '{1,2,3}', '{3}')")
    finally:
        await conn.execute("DEALLOCATE claim")
    return dict(json.loads(raw)[0])


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
    plan = (await explain_claim(backend.pool))["Plan"]
    on_tasks = [n for n in nodes(plan) if n.get("Relation Name") == "tasks"]
    assert not [n for n in on_tasks if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    assert any(n.get("Index Name") == "tasks_ready" for n in nodes(plan)), json.dumps(plan)
    assert len(await backend.claim(ME, 100, 30)) == 100  # and the statement claims as planned


async def test_the_worker_sessions_one_claim_plan_reads_the_ready_index(
        backend: Backend, dsn: str) -> None:
    """A worker's session plans the claim once (a generic plan, `WORKER_SESSION_SETTINGS`):
    with history and a backlog analysed, that plan too finds ready tasks through
    `tasks_ready`, never by scanning the table."""
    await backend.enqueue([NewTask("t", i) for i in range(20_000)])
    await backend.pool.execute(
        "UPDATE shoal.tasks SET state = 'succeeded', finished_at = now() WHERE id % 10 <> 0")
    await backend.pool.execute("ANALYZE shoal.tasks")
    conn = await asyncpg.connect(dsn, server_settings=SESSION_SETTINGS | WORKER_SESSION_SETTINGS)
    try:
        plan = (await explain_generic_claim(conn))["Plan"]
    finally:
        await conn.close()
    on_tasks = [n for n in nodes(plan) if n.get("Relation Name") == "tasks"]
    assert not [n for n in on_tasks if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    assert any(n.get("Index Name") == "tasks_ready" for n in nodes(plan)), json.dumps(plan)


async def test_a_costly_claim_is_not_jit_compiled(backend: Backend, dsn: str) -> None:
    """With a large analysed backlog the claim's estimated cost passes jit_above_cost; a
    plain session would compile it with LLVM on every execution, Shoal's sessions do not."""
    await backend.enqueue([NewTask("t", i) for i in range(20_000)])
    await backend.pool.execute("ANALYZE shoal.tasks")
    plain = await asyncpg.connect(dsn)
    try:
        plain_plan = await explain_claim(plain)
    finally:
        await plain.close()
    if "JIT" not in plain_plan:
        pytest.skip("this Postgres does not JIT-compile (no LLVM, or jit is off server-wide)")
    shoal_plan = await explain_claim(backend.pool)
    assert "JIT" not in shoal_plan, shoal_plan.get("JIT")
