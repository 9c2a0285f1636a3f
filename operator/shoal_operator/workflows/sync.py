"""Keeping thousands of Workflow CRs' status equal to their backend instances.

`WorkflowRegistry` is the operator's memory of every Workflow CR it watches
(fed by kopf's watch events, so it costs no extra API call): where its
instance lives and what its status says. `StatusSync` is the one writer of
Workflow status: it listens to the backend's workflow notifications, collects
the CRs they touch for a short window, reads their instances in batches and
patches only the CRs whose status changed. (Finished history is pruned by the
workers, per their `--retention`.)

Why one writer: the status is a pure function of the backend's state and the
handlers' notes (conditions only an operator can judge: InvalidSpec,
PoolNotFound, an invalid annotation), so nothing else races to patch it, and
an identical result is never patched again. For the same reason it posts the
Warning Event of a workflow the backend failed for a named reason (e.g.
UnreadableStoredSpec), once, with the status patch that first says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from uuid import UUID

from prometheus_client import Counter, Gauge, Histogram

from shoal.aio import wait_event
from shoal.backend import TRANSIENT_ERRORS, Backend
from shoal.errors import ShoalError
from shoal.policy import retry_delay
from shoal_operator import metrics
from shoal_operator.backends import Backends, NotifyHub
from shoal_operator.conditions import Condition
from shoal_operator.errors import PoolNotFound
from shoal_operator.health import Health
from shoal_operator.kube import Kube, KubeError, event, events_path
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.pools.spec import PoolSpec
from shoal_operator.resource import GROUP, VERSION
from shoal_operator.workflows.spec import PLURAL, RESOURCE, sinks
from shoal_operator.workflows.status import (
    FINAL_PHASES,
    PHASE_LABEL,
    cr_status,
    failure_event,
    merge_patch,
)

log = logging.getLogger(__name__)

PATCHES = Counter("shoal_workflow_patches_total",
                  "Patches of Workflow CRs by the status sync (status or phase label)", ["kind"])
ROUNDS = Histogram("shoal_workflow_sync_round_seconds",
                   "Duration of one status sync round (batched reads and patches)",
                   buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
TRACKED = Gauge("shoal_workflows_tracked", "Workflow CRs in the operator's registry")


SERVICE = "workflow-sync"
# What a round meets when the API server or a database blinks (logged without a traceback).
ROUND_ERRORS = (ShoalError, KubeError, *TRANSIENT_ERRORS)


def workflow_path(namespace: str, name: str, subresource: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}/{quote(name)}"
    return f"{path}/{subresource}" if subresource else path


class PoolResolver:
    """A Workflow's pool: its parsed spec and its shared Backend.

    The pool comes from the pool registry (the watch's view: no API request);
    it is read only when the registry has not seen it yet (just after the
    operator started). Raises PoolNotFound, InvalidPoolSpec,
    DatabaseSecretError or BackendUnavailable.
    """

    def __init__(self, kube: Kube, pools: PoolRegistry, backends: Backends) -> None:
        self.kube = kube
        self.pools = pools
        self.backends = backends

    async def resolve(self, namespace: str, pool: str) -> tuple[PoolSpec, Backend]:
        body = await self.pools.read_pool(self.kube, namespace, pool)
        if body is None:
            raise PoolNotFound(f"WorkerPool {namespace}/{pool} does not exist")
        spec = self.pools.spec(body)
        return spec, await self.backends.backend_for_spec(namespace, spec)


@dataclass
class Tracked:
    """What the operator remembers of one Workflow CR (small: no spec, no full body)."""

    uid: str
    namespace: str
    name: str
    pool: str
    sinks: tuple[str, ...]
    status: dict[str, Any]               # as last seen on the server
    phase_label: str | None
    workflow_id: UUID | None = None
    backend: Backend | None = None
    generation: int | None = None        # the generation the instance (or refusal) is of
    notes: dict[str, Condition] = field(default_factory=dict)
    written: dict[str, Any] | None = None  # the status this operator last wrote
    written_at: float = 0.0                # when (monotonic)

    @property
    def final(self) -> bool:
        return (self.written or self.status).get("phase") in FINAL_PHASES


class WorkflowRegistry:
    """Every Workflow CR in view, by uid and by backend workflow id."""

    def __init__(self) -> None:
        self.entries: dict[str, Tracked] = {}
        self.by_workflow: dict[UUID, str] = {}

    def observe(self, body: Mapping[str, Any]) -> tuple[Tracked, bool]:
        """Record the CR as a watch event shows it; returns its entry and whether it is new."""
        meta = body.get("metadata") or {}
        uid = str(meta["uid"])
        status = dict(body.get("status") or {})
        label = (meta.get("labels") or {}).get(PHASE_LABEL)
        entry = self.entries.get(uid)
        new = entry is None
        if entry is None:
            entry = Tracked(uid=uid, namespace=str(meta.get("namespace")),
                            name=str(meta.get("name")), pool="", sinks=(), status=status,
                            phase_label=label)
            self.entries[uid] = entry
        spec = body.get("spec") or {}
        entry.pool = str(spec.get("poolRef") or "")
        entry.sinks = sinks(spec)
        entry.status = status
        entry.phase_label = label
        if entry.generation is None and "observedGeneration" in status:
            entry.generation = int(status["observedGeneration"])
        if entry.workflow_id is None and status.get("workflowId"):
            self.attach(entry, UUID(str(status["workflowId"])))
        return entry, new

    def attach(self, entry: Tracked, workflow_id: UUID, backend: Backend | None = None) -> None:
        entry.workflow_id = workflow_id
        if backend is not None:
            entry.backend = backend
        self.by_workflow[workflow_id] = entry.uid

    def forget(self, uid: str) -> None:
        entry = self.entries.pop(uid, None)
        if entry is not None and entry.workflow_id is not None:
            self.by_workflow.pop(entry.workflow_id, None)


@dataclass
class WorkflowRuntime:
    """The operator-wide Workflow machinery (in the operator's context)."""

    registry: WorkflowRegistry
    pools: PoolResolver
    sync: StatusSync


class StatusSync:
    """Writes each Workflow CR's status and phase label from its backend instance.

    Guarantees: a backend change (NOTIFY on the workflows channel) reaches the
    CR within about `window` seconds plus one batch; any number of changes to
    one CR within a window cost at most one status patch (and one label patch
    when the phase changed); a status equal to the last one written is never
    patched; progress alone (steps advancing, no change of phase or conditions)
    is patched at most once per `progress_interval` per CR, while phase changes
    go out at once (with a Warning Event when the backend failed the workflow
    for a named reason: `status.failure_event`); after a LISTEN connection is
    (re)established every CR of that backend is re-read (nothing announced
    while nobody listened is lost); and every unfinished CR is re-read every
    `resync` seconds as a safety net.
    At most `concurrency` patches are in flight at once. A failed round is
    retried with backoff and reported to `Health` (see health.py).
    """

    def __init__(self, registry: WorkflowRegistry, pools: PoolResolver, health: Health,
                 kube: Kube, notifications: NotifyHub, *, window: float = 0.2,
                 progress_interval: float = 2.0, resync: float = 120.0,
                 concurrency: int = 8, batch: int = 500) -> None:
        self.registry = registry
        self.pools = pools
        self.health = health
        self.kube = kube
        self.notifications = notifications
        self.window = window
        self.progress_interval = progress_interval
        self.resync = resync
        self.batch = batch
        self._deferred: set[str] = set()
        self._limit = asyncio.Semaphore(concurrency)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._watching: dict[tuple[str, str], Callable[[], None]] = {}

    def mark(self, uids: Iterable[str]) -> None:
        """Have these CRs' status re-read and, if changed, patched in the next round."""
        self._dirty.update(uids)
        if self._dirty:
            self._wake.set()

    def watch(self, backend: Backend) -> None:
        """Listen to `backend`'s workflow notifications (once per database and schema)."""
        key = (backend.dsn, backend.schema)
        if key in self._watching:
            return

        def notified(payload: str) -> None:
            with contextlib.suppress(ValueError):
                uid = self.registry.by_workflow.get(UUID(payload))
                if uid is not None:
                    self.mark([uid])

        def connected() -> None:
            self.mark(e.uid for e in self.registry.entries.values() if e.backend is backend)

        self._watching[key] = self.notifications.subscribe(
            backend, backend.workflows_channel, None, notified, connected)

    async def run(self) -> None:
        """Rounds until cancelled: wait for a change (or the resync period), coalesce, write."""
        while True:
            if not await wait_event(self._wake, self.resync):
                self.mark(e.uid for e in self.registry.entries.values() if not e.final)
            await asyncio.sleep(self.window)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                t0 = time.monotonic()
                patches = await self.sync(dirty)
                ROUNDS.observe(time.monotonic() - t0)
                TRACKED.set(len(self.registry.entries))
                metrics.record_workflows((e.namespace, (e.written or e.status).get("phase")
                                          or "Pending") for e in self.registry.entries.values())
                log.debug("status sync: %d CRs read, %d patches, %.3fs", len(dirty), patches,
                          time.monotonic() - t0)
                self.health.succeeded(SERVICE)
            except Exception as exc:  # a failed round: those CRs again, after a backoff
                failures = self.health.failed(SERVICE, exc,
                                              expected=isinstance(exc, ROUND_ERRORS))
                self.mark(dirty)
                await asyncio.sleep(retry_delay(failures, base=0.5, cap=10))

    def stop(self) -> None:
        """Stop listening to workflow notifications."""
        for unsubscribe in self._watching.values():
            unsubscribe()
        self._watching.clear()

    async def sync(self, uids: Iterable[str]) -> int:
        """Read the instances of `uids` in batches, patch every CR whose status changed.

        Returns the number of patches sent.
        """
        entries = [e for u in uids if (e := self.registry.entries.get(u)) is not None]
        await self._resolve(entries)
        groups: dict[int, list[Tracked]] = {}
        writes = []
        for e in entries:
            if e.backend is not None and e.workflow_id is not None:
                groups.setdefault(id(e.backend), []).append(e)
            elif e.notes:  # refused or waiting: the handlers' notes are the status
                writes.append(self._write(e, None))
        for group in groups.values():
            backend = group[0].backend
            assert backend is not None
            for start in range(0, len(group), self.batch):
                chunk = group[start:start + self.batch]
                statuses = await backend.workflow_statuses([e.workflow_id for e in chunk
                                                            if e.workflow_id])
                writes.extend(self._write(e, statuses[e.workflow_id]) for e in chunk
                              if e.workflow_id in statuses)
        return sum(await asyncio.gather(*writes))

    async def _resolve(self, entries: list[Tracked]) -> None:
        """Find the backend (and instance id) of CRs seen on the server but not yet here.

        Each distinct pool is resolved once per round, all pools concurrently,
        so a pool whose database is down costs one attempt per round, not one per CR.
        """
        missing = [e for e in entries if e.backend is None and e.pool]
        keys = list(dict.fromkeys((e.namespace, e.pool) for e in missing))
        answers = await asyncio.gather(*(self.pools.resolve(*k) for k in keys),
                                       return_exceptions=True)
        backends: dict[tuple[str, str], Backend] = {}
        for key, answer in zip(keys, answers, strict=True):
            if isinstance(answer, ROUND_ERRORS):
                log.debug("WorkerPool %s/%s: no backend yet: %s", *key, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                backends[key] = answer[1]
                self.watch(answer[1])
        for e in missing:
            e.backend = backends.get((e.namespace, e.pool))
            if e.backend is not None and e.workflow_id is None:
                found = await e.backend.workflow_id_by_key(e.uid)
                if found is not None:
                    self.registry.attach(e, found)

    async def _write(self, e: Tracked, backend_status: Any) -> int:
        base = e.written if e.written is not None else e.status
        new = cr_status(backend_status, previous=base, notes=list(e.notes.values()),
                        sinks=e.sinks, generation=e.generation)
        patch = merge_patch(base, new)
        warning = failure_event(backend_status, base)
        wait = e.written_at + self.progress_interval - time.monotonic()
        if (patch and wait > 0 and new.get("phase") == base.get("phase")
                and "conditions" not in patch):
            self._defer(e.uid, wait)
            return 0
        sent = 0
        async with self._limit:
            try:
                client = self.kube
                # The label first: whoever sees the new phase in status can select by it.
                phase = new.get("phase")
                if phase and phase != e.phase_label:
                    await client.merge_patch(workflow_path(e.namespace, e.name),
                                             {"metadata": {"labels": {PHASE_LABEL: phase}}})
                    PATCHES.labels("label").inc()
                    sent += 1
                    e.phase_label = phase
                if patch:
                    await client.merge_patch(workflow_path(e.namespace, e.name, "status"),
                                             {"status": patch})
                    PATCHES.labels("status").inc()
                    sent += 1
                    e.written_at = time.monotonic()
                e.written = new
                if warning is not None:
                    await _warn(client, e, *warning)
            except KubeError as exc:
                if exc.not_found:
                    self.registry.forget(e.uid)
                    return sent
                log.warning("cannot update Workflow %s/%s status: %s", e.namespace, e.name, exc)
                self.mark([e.uid])
        return sent

    def _defer(self, uid: str, delay: float) -> None:
        """Re-read this CR once `delay` has passed (once, however often it is deferred)."""
        if uid in self._deferred:
            return
        self._deferred.add(uid)

        def due() -> None:
            self._deferred.discard(uid)
            self.mark([uid])

        asyncio.get_running_loop().call_later(delay, due)


async def _warn(client: Kube, e: Tracked, reason: str, message: str) -> None:
    """Post a Warning Event about the Workflow CR; a failure is logged, never raised
    (an Event is auxiliary: the status already says the same)."""
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": RESOURCE.kind,
                "namespace": e.namespace, "name": e.name, "uid": e.uid}
    try:
        await client.create(events_path(e.namespace),
                            event(involved, "Warning", reason, message))
    except KubeError as exc:
        log.warning("cannot post Event %s for Workflow %s/%s: %s", reason, e.namespace, e.name,
                    exc)
