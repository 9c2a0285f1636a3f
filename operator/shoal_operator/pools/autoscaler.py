"""The autoscaler: event-driven scaling of every WorkerPool in auto mode.

`PoolScaler` (one per WorkerPool, run as a kopf daemon) evaluates when woken
— within a second of an enqueue burst — and at least every re-check
interval, as a safety net: `Autoscaler.tick` wakes every scaler at the same
moment, so that their reads share a round. It is woken by its database's enqueue
notifications for its task namespace (the operator's one LISTEN connection
per database, `Backends.notifications`) and after every reconnect of that
connection, so nothing enqueued meanwhile is missed. Each evaluation reads
the backlog through its database's `BacklogReader` (one statement for every
pool that reads in the same round), with the tasks and periodic ticks due
within the pool's lead (`lead`: its Pods' start-up time, so they are Ready when
the work is due; the scaler also wakes when the next such work enters the lead),
and, for a latency target, the pool's recent flow (`flow`); asks the pure
`scaler.decide`, marks
pod-deletion costs from the worker liveness rows
before lowering replicas (idle pods go first), patches the Deployment, mirrors
the count into spec.replicas (the scale subresource), and reports status
conditions, an Event per scale decision or backend error, and metrics. A
failed read never changes replicas except to the fallback. A round that
fails (the API server refused a request, or a bug) is retried with backoff
and reported to `Health`; once rounds keep failing the pool says
ScalingActive=False, ScalerFailing, and the operator is not ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import kopf

from shoal.backend import (
    TRANSIENT_ERRORS,
    Backend,
    Backlog,
    PoolTasks,
    ScheduleStatus,
    TaskFlow,
)
from shoal.errors import BackendUnavailable, ShoalError
from shoal.policy import retry_delay
from shoal_operator import metrics
from shoal_operator.backends import Backends
from shoal_operator.conditions import Condition, make_condition, now_rfc3339
from shoal_operator.errors import DatabaseSecretError, InvalidPoolSpec, SchemaNotReady
from shoal_operator.health import Health
from shoal_operator.kube import Kube, KubeError, deployment_path, pods_path, workerpool_path
from shoal_operator.pools.deployment import selector_string
from shoal_operator.pools.flow import (
    FLOW_INTERVAL_SECONDS,
    FLOW_SAMPLE,
    FLOW_WINDOW_SECONDS,
    measure,
)
from shoal_operator.pools.lead import StartupClock, due_ticks, lead_seconds
from shoal_operator.pools.queue_metrics import QueueMetrics
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.pools.scaler import (
    Decision,
    Observation,
    ScalerState,
    decide,
    deletion_costs,
)
from shoal_operator.pools.spec import PoolSpec, is_paused
from shoal_operator.pools.status import StatusWriter

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MIN_EVALUATION_GAP = 0.1  # seconds between evaluations: a burst coalesces into one
STATUS_MIN_INTERVAL = 1.0  # seconds between status writes that only update numbers
WARNING_REPEAT = 60.0  # a persisting problem is re-posted as an Event at most this often
READ_ERRORS = (ShoalError, *TRANSIENT_ERRORS, KubeError)
GATHER_SECONDS = 0.02  # the reads of one round that arrive this close share a statement
TICKER = "autoscaler"
SCHEDULES_INTERVAL_SECONDS = 10.0  # periodic schedules are read at most this often


def pool_tasks(spec: PoolSpec) -> PoolTasks:
    """The tasks a pool serves, and so counts: its task namespace, tags and names."""
    return PoolTasks(spec.tasks.namespace, tuple(spec.tasks.tags),
                     tuple(spec.tasks.names) or None)


@dataclass(frozen=True, slots=True)
class Reading:
    """What one evaluation reads of its pool's database: the backlog (with what is due
    within the lead asked for); the recent flow by task name, when asked for (as of
    the last flow read, at most FLOW_INTERVAL_SECONDS old); the periodic schedules
    (at most SCHEDULES_INTERVAL_SECONDS old)."""

    backlog: Backlog
    flows: list[TaskFlow] | None
    schedules: list[ScheduleStatus]


Ask = tuple[PoolTasks, float]  # a pool's tasks, and its lead in seconds
Flowing = tuple[PoolTasks, float]  # a pool's tasks, and its latency target in seconds


class BacklogReader:
    """Reads the backlog of the pools on one database (DSN and schema), many per statement.

    Guarantees: every `read` is answered by a backlog statement sent after it was
    asked (never an older figure); the reads asked within GATHER_SECONDS of
    a round's first one, or while the previous round is in flight, share
    one statement, and pools with the same tasks and lead share its row; one
    round at a time per database; a failed statement fails every read
    it was for, with its error. A pool's flow, when asked for, is at most
    FLOW_INTERVAL_SECONDS old: a round reads the stale ones of its pools in one
    more statement; the periodic schedules cost one statement at most every
    SCHEDULES_INTERVAL_SECONDS.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._waiting: dict[Ask, list[asyncio.Future[Backlog]]] = {}
        self._rounds: asyncio.Task[None] | None = None
        self._flows: dict[Flowing, tuple[float, list[TaskFlow]]] = {}  # when read, what
        self._flows_wanted: set[Flowing] = set()
        self._schedules: list[ScheduleStatus] = []
        self._schedules_read = float("-inf")

    async def read(self, pool: PoolTasks, lead: float = 0.0, target: float | None = None
                   ) -> Reading:
        """One pool's reading, its backlog read in the next round; its flow too when it
        has a latency `target` (seconds)."""
        future: asyncio.Future[Backlog] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((pool, lead), []).append(future)
        if target is not None:
            self._flows_wanted.add((pool, target))
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.create_task(self._run(), name="backlog-reader")
        backlog = await future
        flowing = None if target is None else self._flows.get((pool, target))
        flows = None if flowing is None else flowing[1]
        return Reading(backlog, flows, self._schedules)

    async def _run(self) -> None:
        waiting: dict[Ask, list[asyncio.Future[Backlog]]] = {}
        try:
            while self._waiting:
                await asyncio.sleep(GATHER_SECONDS)
                waiting, self._waiting = self._waiting, {}
                asks = list(waiting)
                try:
                    await self._refresh()
                    figures = await self.backend.backlogs([pool for pool, _ in asks],
                                                          [lead for _, lead in asks])
                except Exception as exc:
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for ask, backlog in zip(asks, figures, strict=True):
                    for future in waiting[ask]:
                        if not future.done():
                            future.set_result(backlog)
        finally:  # cancelled (shutdown): nobody waits for ever
            for futures in (*waiting.values(), *self._waiting.values()):
                for future in futures:
                    future.cancel()

    async def _refresh(self) -> None:
        """Read again, in one statement, the flows asked for that are older than
        FLOW_INTERVAL_SECONDS (or never read); the schedules, when they are due."""
        now = time.monotonic()
        wanted, self._flows_wanted = self._flows_wanted, set()
        stale = sorted((ask for ask in wanted
                        if now - self._flows.get(ask, (float("-inf"), []))[0]
                        >= FLOW_INTERVAL_SECONDS), key=repr)
        if stale:
            flows = await self.backend.flows([pool for pool, _ in stale],
                                             [target for _, target in stale],
                                             FLOW_WINDOW_SECONDS, FLOW_SAMPLE)
            self._flows.update((ask, (now, flow)) for ask, flow in zip(stale, flows,
                                                                          strict=True))
        if now - self._schedules_read >= SCHEDULES_INTERVAL_SECONDS:
            self._schedules, self._schedules_read = await self.backend.list_periodic(), now


class Autoscaler:
    """Every pool's scaler, one BacklogReader per database, and the re-check ticker.

    `tick` (a service) wakes every scaler each `recheck_seconds`, all at once
    and with their DSNs fresh, so each database's reads of that round share one
    statement.
    """

    def __init__(self, kube: Kube, backends: Backends, pools: PoolRegistry,
                 status: StatusWriter, health: Health, recheck_seconds: float) -> None:
        self.kube = kube
        self.backends = backends
        self.pools = pools
        self.status = status
        self.health = health
        self.recheck_seconds = recheck_seconds
        self.scalers: dict[tuple[str, str], PoolScaler] = {}
        self.readers: dict[tuple[str, str], BacklogReader] = {}

    def reader(self, backend: Backend) -> BacklogReader:
        """The BacklogReader of `backend`'s database."""
        key = (backend.dsn, backend.schema)
        reader = self.readers.get(key)
        if reader is None or reader.backend is not backend:
            reader = self.readers[key] = BacklogReader(backend)
        return reader

    def wake(self, namespace: str, name: str) -> None:
        """Ask the pool's scaler to evaluate now (after a spec change)."""
        scaler = self.scalers.get((namespace, name))
        if scaler is not None:
            scaler.wake.set()

    async def tick(self) -> None:
        """Wake every scaler each re-check interval, until cancelled; their Secrets are
        read first, all at once, so no evaluation of the round waits for its own."""
        while True:
            await asyncio.sleep(self.recheck_seconds)
            await self.backends.refresh_dsns()
            for scaler in self.scalers.values():
                scaler.wake.set()


class PoolScaler:
    """Scales one WorkerPool's Deployment; see the module docstring for guarantees."""

    def __init__(self, body: kopf.Body, autoscaler: Autoscaler) -> None:
        self.body = body  # kopf's live view: always the latest known object
        self.namespace: str = body.metadata["namespace"]
        self.name: str = body.metadata["name"]
        self.service = f"scaler/{self.namespace}/{self.name}"
        self.autoscaler = autoscaler
        self.kube = autoscaler.kube
        self.health = autoscaler.health
        self.wake = asyncio.Event()
        self.state: ScalerState | None = None
        self.listening: tuple[str, str, str] | None = None
        self.unsubscribe: Callable[[], None] = lambda: None
        self.backend_failing = False
        self.last_warnings: dict[str, tuple[str, float]] = {}  # reason -> (message, when)
        self.last_report: tuple[tuple[object, ...], float] | None = None
        self.queue_metrics = QueueMetrics(self.namespace, self.name)
        self.next_due: float | None = None  # seconds to the next work entering the lead

    async def run(self, stopped: kopf.DaemonStopped) -> None:
        self.autoscaler.scalers[(self.namespace, self.name)] = self
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            while not stopped:
                started = time.monotonic()
                wait: float | None = None  # until woken: by a notification or the ticker
                try:
                    await self.evaluate()
                    self.health.succeeded(self.service)
                except Exception as exc:  # a failed round: retried with backoff, reported
                    failures = self.health.failed(self.service, exc,
                                                  expected=isinstance(exc, READ_ERRORS))
                    await self._report_failing(exc)
                    wait = retry_delay(failures, base=0.5, cap=self.autoscaler.recheck_seconds)
                metrics.evaluation_seconds.labels(self.namespace, self.name).observe(
                    time.monotonic() - started)
                await asyncio.sleep(MIN_EVALUATION_GAP)
                woken = asyncio.ensure_future(self.wake.wait())
                await asyncio.wait({woken, stopping}, timeout=_earliest(wait, self.next_due),
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                self.wake.clear()
        finally:
            stopping.cancel()
            self.unsubscribe()
            if self.autoscaler.scalers.get((self.namespace, self.name)) is self:
                del self.autoscaler.scalers[(self.namespace, self.name)]

    async def _report_failing(self, exc: Exception) -> None:
        """Once this scaler keeps failing, its pool says so (if the API server lets it)."""
        if not self.health.is_failing(self.service):
            return
        try:
            await self._write_status({}, [self._condition(
                "ScalingActive", False, "ScalerFailing",
                f"the scaler failed its last evaluations: {type(exc).__name__}: {exc}")])
        except READ_ERRORS as write_error:
            log.debug("%s: cannot report the failures: %s", self.service, write_error)

    async def evaluate(self) -> None:
        """One evaluation; every failure becomes a condition and an Event, never a crash."""
        self.next_due = None
        try:
            spec = self.autoscaler.pools.spec(self.body)
        except InvalidPoolSpec as exc:  # reconcile_pool posts the Event and Ready=False
            metrics.scaler_errors.labels(self.namespace, self.name, "InvalidSpec").inc()
            await self._write_status({}, [
                self._condition("ScalingActive", False, "InvalidSpec", str(exc))])
            return
        try:
            backend = await self.autoscaler.backends.backend_for_spec(self.namespace, spec)
        except DatabaseSecretError as exc:
            await self._report_error("SecretInvalid", str(exc), spec)
            return
        except SchemaNotReady as exc:
            await self._report_error("SchemaNotReady", str(exc), spec)
            return
        except BackendUnavailable as exc:
            await self._report_error("Unreachable", str(exc), spec)
            return
        self._listen(backend, spec.tasks.namespace)
        lead = lead_seconds(spec.scaling.pod_startup_seconds, self._startup().seconds)
        try:
            reading = await self.autoscaler.reader(backend).read(
                pool_tasks(spec), lead, spec.scaling.target_queue_age_seconds)
        except READ_ERRORS as exc:
            await self._report_error("QueryFailed", f"cannot read the backlog: {exc}", spec)
            return
        backlog = reading.backlog
        self._record_backlog(backlog)
        await self.queue_metrics.observe(spec, backend)
        if self.backend_failing:
            self.backend_failing = False
            kopf.event(self.body, type="Normal", reason="BackendReachable",
                       message="the backend answers again")
        reachable = self._condition("BackendReachable", True, "BacklogRead",
                                    "the backlog was read from the backend")
        if spec.scaling.mode == "manual":
            await self._write_status({
                "backlog": _backlog_status(backlog), "mode": "manual",
                "paused": False, "desiredReplicas": spec.replicas,
            }, [reachable,
                self._condition("ScalingActive", False, "ManualMode",
                                "spec.replicas (the scale subresource) sets the replicas"),
                self._condition("ScalingLimited", False, "ManualMode", "")])
            self.state = None
            return
        await self._scale(spec, backend, reading, lead, reachable)

    async def _scale(self, spec: PoolSpec, backend: Backend, reading: Reading, lead: float,
                     reachable: Condition) -> None:
        current = await self._replicas()
        if current is None:
            return  # the reconciler (re)creates it; the next evaluation scales it
        now = time.monotonic()
        paused, bad_annotation = self._paused()
        backlog = reading.backlog
        ticks = due_ticks(reading.schedules, pool_tasks(spec), datetime.now(UTC), lead)
        self.next_due = _earliest(
            None if backlog.next_due_seconds is None else backlog.next_due_seconds - lead,
            ticks.next_seconds)
        state = self.state or ScalerState.starting(now, current)
        observation = Observation(
            now, current, backlog.ready + backlog.running, paused, due=backlog.due + ticks.due,
            flow=None if reading.flows is None else measure(backlog, reading.flows),
            startup_seconds=lead)
        decision = decide(spec.scaling, spec.target_per_replica, observation, state)
        if bad_annotation:
            decision = replace(decision, reason="InvalidAnnotation",
                               message=f"{bad_annotation}: holding {current} replicas")
        await self._apply(decision, current, backend)
        self.state = decision.state  # only once applied: a refused patch is no scale event
        if decision.desired > current:
            self._startup().scaled_up(now, decision.desired)
        await self._mirror(decision.desired)
        await self._report(decision, current, backlog, reachable, paused)

    def _startup(self) -> StartupClock:
        return self.autoscaler.pools.startup(self.namespace, self.name)

    def _condition(self, type_: str, status: bool, reason: str, message: str = "") -> Condition:
        """A condition stamped with the generation of the spec it was judged against."""
        return make_condition(type_, status, reason, message,
                              generation=self.body.metadata.get("generation"))

    def _paused(self) -> tuple[bool, str | None]:
        """(paused, problem): a bad pause annotation holds the count and says why."""
        try:
            return is_paused(self.body.metadata.get("annotations")), None
        except InvalidPoolSpec as exc:
            self._warn("InvalidAnnotation", str(exc))
            return True, str(exc)

    def _warn(self, reason: str, message: str) -> None:
        """A Warning Event per reason when its message changes; repeated at most once a minute."""
        now = time.monotonic()
        last = self.last_warnings.get(reason)
        if last is None or last[0] != message or now - last[1] >= WARNING_REPEAT:
            kopf.event(self.body, type="Warning", reason=reason, message=message)
            self.last_warnings[reason] = (message, now)
        log.warning("%s/%s: %s", self.namespace, self.name, message)

    async def _apply(self, decision: Decision, current: int, backend: Backend) -> None:
        if decision.desired == current:
            return
        if decision.desired < current:
            await self._mark_deletion_costs(backend)
        await self._set_replicas(decision.desired)
        kopf.event(self.body, type="Normal", reason=decision.reason, message=decision.message)
        log.info("%s/%s: %s", self.namespace, self.name, decision.message)

    async def _mirror(self, desired: int) -> None:
        """Auto mode: spec.replicas, through the scale subresource, says the scaler's count,
        so `/scale` reads what runs (as a Deployment's does under an HPA). A write there
        by anyone else is overridden here, at the evaluation it wakes."""
        if (self.body.get("spec") or {}).get("replicas") != desired:
            await self.kube.merge_patch(
                workerpool_path(self.namespace, self.name) + "/scale",
                {"spec": {"replicas": desired}})

    async def _report(self, decision: Decision, current: int, backlog: Backlog,
                      reachable: Condition, paused: bool) -> None:
        fields: dict[str, Any] = {
            "desiredReplicas": decision.desired, "backlog": _backlog_status(backlog),
            "mode": "auto", "paused": paused, "selector": selector_string(self.name)}
        if decision.desired != current:
            fields |= {"lastScaleTime": now_rfc3339(), "lastScaleReason": decision.message}
        active = (self._condition("ScalingActive", True, "ValidBacklog", decision.message)
                  if decision.active else
                  self._condition("ScalingActive", False, decision.reason, decision.message))
        limited = self._condition("ScalingLimited", decision.limited, decision.limit_reason,
                                  decision.message if decision.limited else
                                  "the desired count is within the limits")
        metrics.desired_replicas.labels(self.namespace, self.name).set(decision.desired)
        await self._write_status(fields, [reachable, active, limited])

    async def _write_status(self, fields: dict[str, Any], conditions: list[Condition]) -> None:
        """Patch the status; when only the backlog numbers moved, at most once a second.

        Under a steady stream of enqueues only the numbers move, and a later
        evaluation catches up; a changed mode, count, status or reason is
        written at once. Every status write of the scaler goes through here, so
        the last one written is the one compared with.
        """
        key = (*(v for k, v in sorted(fields.items()) if k != "backlog"),
               *((c["status"], c["reason"]) for c in conditions))
        now = time.monotonic()
        if self.last_report and self.last_report[0] == key and \
                now - self.last_report[1] < STATUS_MIN_INTERVAL:
            return
        await self.autoscaler.status.patch(self.body, fields, conditions)
        self.last_report = (key, now)

    async def _replicas(self) -> int | None:
        """The Deployment's replicas as the watch (or the last write) says; read if unknown.
        None when there is no Deployment."""
        return await self.autoscaler.pools.read_replicas(self.kube, self.namespace, self.name)

    async def _set_replicas(self, replicas: int) -> None:
        deployment = await self.kube.merge_patch(deployment_path(self.namespace, self.name),
                                                 {"spec": {"replicas": replicas}})
        self.autoscaler.pools.observe_deployment(self.namespace, self.name, deployment)

    async def _mark_deletion_costs(self, backend: Backend) -> None:
        """Idle pods get the lowest deletion cost, so the ReplicaSet removes them first."""
        k = self.kube
        pods = await k.get(pods_path(self.namespace),
                           {"labelSelector": selector_string(self.name)})
        items = {p["metadata"]["name"]: p for p in pods.get("items", [])
                 if not p["metadata"].get("deletionTimestamp")}
        costs = deletion_costs(items, await backend.pool_workers(self.name))
        patches = []
        for pod, cost in costs.items():
            annotations = items[pod]["metadata"].get("annotations") or {}
            if annotations.get(DELETION_COST) != str(cost):
                patches.append(k.merge_patch(pods_path(self.namespace, pod), {
                    "metadata": {"annotations": {DELETION_COST: str(cost)}}}))
        results = await asyncio.gather(*patches, return_exceptions=True)
        for result in results:
            if isinstance(result, KubeError) and not result.not_found:
                raise result

    def _listen(self, backend: Backend, task_namespace: str) -> None:
        key = (backend.dsn, backend.schema, task_namespace)
        if self.listening != key:
            self.unsubscribe()
            self.unsubscribe = self.autoscaler.backends.notifications.subscribe(
                backend, backend.tasks_channel, task_namespace,
                lambda _payload: self.wake.set(), self.wake.set)
            self.listening = key

    def _record_backlog(self, backlog: Backlog) -> None:
        for state, value in _backlog_status(backlog).items():
            metrics.backlog.labels(self.namespace, self.name, state).set(value)

    async def _report_error(self, reason: str, message: str, spec: PoolSpec) -> None:
        """Conditions and a Warning Event; replicas held unless the fallback applies."""
        metrics.scaler_errors.labels(self.namespace, self.name, reason).inc()
        self.backend_failing = True
        self._warn(reason, message)
        conditions = [self._condition("BackendReachable", False, reason, message),
                      self._condition("ScalingActive", False, reason, message)]
        fields = await self._fallback(spec) if spec.scaling.mode == "auto" else {}
        await self._write_status(fields, conditions)

    async def _fallback(self, spec: PoolSpec) -> dict[str, Any]:
        """Apply the fallback count if it is due; the status fields that record it."""
        current = await self._replicas()
        if current is None:
            return {}
        now = time.monotonic()
        paused, _ = self._paused()
        prior = self.state or ScalerState.starting(now, current)
        decision = decide(spec.scaling, spec.target_per_replica,
                          Observation(now, current, None, paused), prior)
        # The failed read counts even if the patch is refused; the scale event only once done.
        self.state = replace(prior, failures=decision.state.failures)
        if decision.desired == current:
            self.state = decision.state
            return {}
        await self._set_replicas(decision.desired)
        self.state = decision.state
        kopf.event(self.body, type="Warning", reason=decision.reason, message=decision.message)
        await self._mirror(decision.desired)
        return {"desiredReplicas": decision.desired, "lastScaleTime": now_rfc3339(),
                "lastScaleReason": decision.message}


def _earliest(*seconds: float | None) -> float | None:
    """The soonest of some waits (None: no wait)."""
    known = [s for s in seconds if s is not None]
    return max(0.0, min(known)) if known else None


def _backlog_status(backlog: Backlog) -> dict[str, int]:
    return {"ready": backlog.ready, "running": backlog.running, "waiting": backlog.waiting,
            "dead": backlog.dead}
