"""Regression tests of the chaos findings at the backend (issue 12): a connection that may
be broken is never used again; an enqueue hands a task only to a live, recently seen
worker; a lost handoff costs no attempt; re-reports under the same lease are
acknowledged, while releases and expiries end the lease for good."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import asyncpg
import pytest

from shoal.backend import (
    TRANSIENT_ERRORS,
    Backend,
    LinkTimeouts,
    NewTask,
    Outcome,
    WorkerIdentity,
)
from tests.support import eventually

ME = WorkerIdentity(id="w1", namespace="default", tags=(), task_names=("t",),
                    concurrency=4, max_attempts=(1,), channel="shoal_handoff_faults")


@pytest.mark.parametrize("error", [
    lambda: asyncpg.InternalClientError("cannot switch to state 12; another operation (2) "
                                        "is in progress"),
    lambda: asyncpg.ConnectionDoesNotExistError("connection was closed"),
    lambda: OSError("reset by peer"),
    asyncio.CancelledError,
], ids=["client-state", "closed", "os", "cancelled"])
async def test_a_connection_that_may_be_broken_is_not_used_again(
        dsn: str, error: Callable[[], BaseException]) -> None:
    """The fast-restart finding: asyncpg's client-state error killed workers and left a
    connection in a bad state in the pool. It is transient, and its connection goes."""
    exc = error()
    assert isinstance(exc, (asyncio.CancelledError, *TRANSIENT_ERRORS))
    pooled = await Backend.connect(dsn, max_size=1)
    session = Backend.for_worker(dsn, schema="shoal", worker_id="w", handoff_channel="c",
                                 on_notify=lambda _c, _p: None,
                                 timeouts=LinkTimeouts.for_claim_ttl(30))
    try:
        for backend in (pooled, session):
            before = await backend.pool.fetchval("SELECT pg_backend_pid()")
            with pytest.raises(type(exc)):
                async with backend.pool.acquire() as conn:
                    assert await conn.fetchval("SELECT pg_backend_pid()") == before
                    raise exc
            assert await backend.pool.fetchval("SELECT pg_backend_pid()") != before
    finally:
        await pooled.close()
        await session.close()


async def test_a_server_error_keeps_the_connection(dsn: str) -> None:
    backend = await Backend.connect(dsn, max_size=1)
    try:
        before = await backend.pool.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await backend.pool.fetchval("SELECT 1 / 0")
        assert await backend.pool.fetchval("SELECT pg_backend_pid()") == before
    finally:
        await backend.close()


async def park(backend: Backend) -> None:
    await backend.heartbeat(ME, [], 30, in_flight=0, draining=False)
    assert await backend.claim(ME, 4, 30) == []


async def test_no_handoff_to_a_worker_whose_connection_is_gone(dsn: str,
                                                               backend: Backend) -> None:
    """A killed worker's row stays parked until it is reaped; its connection is gone at
    once, and with it every handoff to it."""
    dying = await Backend.connect(dsn, max_size=1)
    await park(dying)
    await dying.close()  # as a kill -9 closes the worker's socket
    (task_id,) = await backend.enqueue([NewTask("t")])
    assert (await backend.get_task(task_id)).state == "ready"


async def test_no_handoff_to_a_worker_not_seen_within_its_claim_ttl(backend: Backend) -> None:
    await park(backend)
    await backend.pool.execute(
        "UPDATE shoal.workers SET last_seen = now() - interval '31 seconds'")  # TTL 30 s
    (stale,) = await backend.enqueue([NewTask("t")])
    assert (await backend.get_task(stale)).state == "ready"
    # seen again (a heartbeat), it claims that task and parks: handoffs resume
    await backend.heartbeat(ME, [], 30, in_flight=0, draining=False)
    assert [t.id for t in await backend.claim(ME, 4, 30)] == [stale]
    (fresh,) = await backend.enqueue([NewTask("t")])
    assert (await backend.get_task(fresh)).worker_id == ME.id


async def test_a_lost_handoff_costs_no_attempt(backend: Backend) -> None:
    await park(backend)
    (task_id,) = await backend.enqueue([NewTask("t", max_attempts=1)])
    handed = await backend.get_task(task_id)
    assert (handed.state, handed.worker_id, handed.attempts) == ("running", ME.id, 1)
    await backend.pool.execute(  # the worker never heard of it; its lease runs out
        "UPDATE shoal.tasks SET lease_expires_at = now() - interval '1 second'")
    assert await backend.reap_expired() == 1
    task = await backend.get_task(task_id)
    assert (task.state, task.attempts, task.expiries, task.lease_token) == ("ready", 0, 1, 2)


async def test_reports_are_idempotent_under_one_lease(backend: Backend) -> None:
    ok, failing, retried = await backend.enqueue([NewTask("t"), NewTask("t"), NewTask("t")])
    leases = {t.id: t.lease_token for t in await backend.claim(ME, 3, 30)}
    outcomes = [Outcome(ok, leases[ok], result_json='"done"'),
                Outcome(failing, leases[failing], error="boom"),
                Outcome(retried, leases[retried], error="again", retry_in_seconds=60)]
    assert await backend.report(outcomes, worker_id=ME.id) == {ok, failing, retried}
    # the reply was lost; the worker reports again after reconnecting: acknowledged
    assert await backend.report(outcomes, worker_id=ME.id) == {ok, failing, retried}
    rows = {i: await backend.get_task(i) for i in (ok, failing, retried)}
    assert [(r.state, r.result, r.error) for r in rows.values()] == [
        ("succeeded", "done", None), ("dead", None, "boom"), ("delayed", None, "again")]
    # the claim that carries successes acknowledges the same way
    (fourth,) = await backend.enqueue([NewTask("t")])
    (claimed,) = await backend.claim(ME, 1, 30)
    again = [Outcome(claimed.id, claimed.lease_token)]
    assert (await backend.claim_and_complete(ME, 1, 30, again))[1] == {fourth}
    assert (await backend.claim_and_complete(ME, 1, 30, again))[1] == {fourth}


async def test_a_released_or_expired_lease_is_over(backend: Backend) -> None:
    """Release and expiry end the lease: a late report under it is refused, never
    mistaken for a re-report."""
    released, expired = await backend.enqueue([NewTask("t"), NewTask("t")])
    leases = {t.id: t.lease_token for t in await backend.claim(ME, 2, 30)}
    assert await backend.release([(released, leases[released])], worker_id=ME.id) == {released}
    await backend.pool.execute(
        "UPDATE shoal.tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        expired)
    assert await backend.reap_expired() == 1
    late = [Outcome(i, leases[i], result_json='"late"') for i in (released, expired)]
    assert await backend.report(late, worker_id=ME.id) == set()
    for task_id in (released, expired):
        task = await backend.get_task(task_id)
        assert (task.state, task.result, task.lease_token) == ("ready", None, leases[task_id] + 1)


async def test_a_claim_never_returns_a_task_its_worker_holds(backend: Backend) -> None:
    (task_id,) = await backend.enqueue([NewTask("t")])
    (first,) = await backend.claim(ME, 1, 0.1)
    await eventually(backend.reap_expired, within=10, what="the lease to expire")
    claimed, _ = await backend.claim_and_complete(ME, 4, 30, (), holding=[task_id])
    assert claimed == []
    claimed, _ = await backend.claim_and_complete(ME, 4, 30, ())
    assert [(t.id, t.lease_token) for t in claimed] == [(task_id, first.lease_token + 2)]


async def test_a_suspect_is_claimed_alone(backend: Backend) -> None:
    """A task whose lease expired twice may be what kills its workers: it is claimed
    alone, so that it takes no other task down with it again."""
    ids = await backend.enqueue([NewTask("t") for _ in range(5)])
    await backend.pool.execute("UPDATE shoal.tasks SET expiries = 2 WHERE id = $1", ids[2])
    (suspect,) = await backend.claim(ME, 5, 30)
    assert (suspect.id, suspect.alone) == (ids[2], True)
    rest = await backend.claim(ME, 5, 30)
    assert sorted(t.id for t in rest) == [ids[0], ids[1], ids[3], ids[4]]
    assert not any(t.alone for t in rest)


async def test_every_link_is_bounded_on_both_ends(dsn: str) -> None:
    """A worker's session bounds its statements and has keepalives on both ends, sized
    from the claim TTL; a pool's connections have keepalives on both ends and no
    statement bound (a migration may rightly take long)."""
    timeouts = LinkTimeouts.for_claim_ttl(20)
    worker = Backend.for_worker(dsn, schema="shoal", worker_id="w", handoff_channel="c",
                                on_notify=lambda _c, _p: None, timeouts=timeouts)
    pooled = await Backend.connect(dsn, max_size=1)
    show = ("SELECT current_setting('statement_timeout'), current_setting('tcp_keepalives_idle'),"
            " current_setting('tcp_user_timeout')")
    try:
        assert tuple(await worker.pool.fetchrow(show)) == ("10s", "2", "10000")
        assert tuple(await pooled.pool.fetchrow(show)) == ("0", "5", "30000")
        for backend in (worker, pooled):
            async with backend.pool.acquire() as conn:
                sock = conn._transport.get_extra_info("socket")
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 0
    finally:
        await worker.close()
        await pooled.close()
