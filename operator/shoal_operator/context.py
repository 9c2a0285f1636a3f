"""Everything the operator keeps while it runs: one `Operator`, in kopf's memo.

`Operator.start` (called by the startup handler in main.py) builds it: the
API client, the shared Backends and their LISTEN connections, the pool
registry, the pool status writer, the autoscaler (its scalers, one backlog
reader per database and the re-check ticker), the Workflow machinery and the
watch of OOM kills.
Handlers reach it with `of(memo)`; nothing of it lives in a module-level
variable, so two operators in one process (as in tests) share nothing.
`close` stops its services and closes its connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import kopf

from shoal_operator import kube as kube_client
from shoal_operator.backends import Backends
from shoal_operator.health import Health
from shoal_operator.kube import Kube
from shoal_operator.pools.autoscaler import TICKER, Autoscaler
from shoal_operator.pools.oom_watch import OOMWatch
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.pools.status import StatusWriter
from shoal_operator.workflows.sync import (
    SERVICE,
    PoolResolver,
    StatusSync,
    WorkflowRegistry,
    WorkflowRuntime,
)


@dataclass(frozen=True)
class OperatorConfig:
    """What `shoal operator` was asked to do; handlers get it as `memo.config`."""

    namespaces: tuple[str, ...]
    all_namespaces: bool
    liveness_port: int
    metrics_port: int
    schema: str
    recheck_seconds: float
    peering: str | None
    log_format: str
    log_level: str


@dataclass
class Operator:
    """The operator's state and services, kept in kopf's memo as `memo.shoal`."""

    config: OperatorConfig
    health: Health
    kube: Kube
    backends: Backends
    pools: PoolRegistry
    status: StatusWriter
    autoscaler: Autoscaler
    workflows: WorkflowRuntime
    services: list[asyncio.Task[None]]
    oom: OOMWatch

    @classmethod
    async def start(cls, config: OperatorConfig, health: Health) -> Operator:
        """Connect to the API server and start the operator-wide services."""
        kube = await kube_client.connect()
        backends = Backends(kube, config.schema)
        pools = PoolRegistry()
        status = StatusWriter(kube)
        autoscaler = Autoscaler(kube, backends, pools, status, health, config.recheck_seconds)
        registry = WorkflowRegistry()
        resolver = PoolResolver(kube, pools, backends)
        sync = StatusSync(registry, resolver, health, kube, backends.notifications)
        services = [asyncio.create_task(health.supervise(name, run), name=name)
                    for name, run in ((SERVICE, sync.run), (TICKER, autoscaler.tick))]
        return cls(config, health, kube, backends, pools, status, autoscaler,
                   WorkflowRuntime(registry, resolver, sync), services,
                   OOMWatch(kube, pools, backends, resolver))

    async def close(self) -> None:
        """Stop the services, close every database connection and the API client."""
        for task in self.services:
            task.cancel()
        await asyncio.gather(*self.services, return_exceptions=True)
        self.workflows.sync.stop()
        await self.backends.close()
        await self.kube.close()


def of(memo: kopf.Memo) -> Operator:
    """The operator's context, as the startup handler put it in kopf's memo."""
    operator: Operator = memo.shoal
    return operator
