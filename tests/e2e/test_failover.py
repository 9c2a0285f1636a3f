"""A primary failover under a running pool, as a CloudNativePG switchover does it: the
operator and the worker pods reach Postgres through a multi-host DSN with
`target_session_attrs=read-write`; the primary stops, its streaming standby is
promoted, and the pool goes on without losing or repeating a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from shoal.backend import TRANSIENT_ERRORS, Backend
from tests.cluster.access import KubeAccess
from tests.cluster.kind import network_gateway
from tests.cluster.postgres import PostgresServer
from tests.e2e.support import RunLog, assert_each_done_once, recorder_pool, settled
from tests.operator.harness import OperatorProcess, apply, condition, create_secret
from tests.support import eventually, wait_for

pytestmark = pytest.mark.kube

T = TypeVar("T")


def multi_host(primary: PostgresServer, standby: PostgresServer, host: str,
               password: str | None) -> str:
    """A DSN naming both servers; libpq's rules (asyncpg follows them) pick the writable one."""
    user = f"postgres:{password}" if password else "postgres"
    return (f"postgresql://{user}@{host}:{primary.port},{host}:{standby.port}/ha"
            "?target_session_attrs=read-write")


async def retried(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()` once the database answers again (this process's own failover)."""
    async def attempt() -> tuple[T] | None:
        try:
            return (await call(),)
        except TRANSIENT_ERRORS:
            return None
    (value,) = await eventually(attempt, within=60, interval=0.5, what=what)
    return value


@pytest.mark.kind  # pods reach two Postgres servers on this host
async def test_failover_to_a_promoted_standby_loses_nothing(
        kube: KubeAccess, shoal_operator: OperatorProcess, namespace: str) -> None:
    """Tasks enqueued before and after the switch each complete once; the operator's
    scaler reads the empty backlog from the new primary (it scales down) and a Workflow
    created after the switch succeeds."""
    with PostgresServer() as primary:
        primary.create_database("ha")
        migrated = await Backend.connect(primary.dsn_for("ha"))
        await migrated.migrate()
        await migrated.close()
        standby = primary.standby()
        try:
            standby.start()
            create_secret(kube, namespace,
                          multi_host(primary, standby, network_gateway(), primary.password))
            backend = await Backend.connect(multi_host(primary, standby, "127.0.0.1", None))
            log = RunLog.create(kube)
            apply(kube, recorder_pool("ha", namespace, claimTTL="10s"))
            before = await backend.enqueue(log.tasks("record", 60, namespace, sleep=0.5))
            await eventually(lambda: len(log.events("done")) >= 10, within=120,
                             what="the pool to be under way")

            pool = kube.get_json("workerpools.shoal.dev", "ha", "-n", namespace)
            assert pool["spec"]["replicas"] > 1, "the scaler has not scaled up for the backlog"
            primary.stop("fast")  # waits until the standby has received everything
            standby.promote()
            switched = time.monotonic()
            after = await retried(
                lambda: backend.enqueue(log.tasks("record", 20, namespace, sleep=0.2)),
                "an enqueue on the new primary")
            tasks = await retried(lambda: settled(backend, before + after, 180),
                                  "every task to finish")
            print(f"all {len(tasks)} tasks finished {time.monotonic() - switched:.1f} s "
                  "after the promotion")
            assert {t.state for t in tasks} == {"succeeded"}
            assert_each_done_once(log, before + after)

            def scaled_down() -> bool:  # only a backlog read on the new primary does that
                pool = kube.get_json("workerpools.shoal.dev", "ha", "-n", namespace)
                active = condition(pool, "ScalingActive") or {}
                return pool["spec"]["replicas"] == 1 and active.get("status") == "True"
            await asyncio.to_thread(wait_for, scaled_down, 90,
                                    "the scaler to read the new primary and scale down")

            apply(kube, {"apiVersion": "shoal.dev/v1alpha1", "kind": "Workflow",
                         "metadata": {"name": "after-switch", "namespace": namespace},
                         "spec": {"poolRef": "ha", "steps": [
                             {"name": "sum", "task": "add", "input": {"a": 2, "b": 3}}]}})

            def succeeded() -> bool:
                wf = kube.get_json("workflows.shoal.dev", "after-switch", "-n", namespace)
                return ((wf or {}).get("status") or {}).get("phase") == "Succeeded"
            await asyncio.to_thread(wait_for, succeeded, 90, "the Workflow to succeed")
            await backend.close()
        finally:
            standby.destroy()
