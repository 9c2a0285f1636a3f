"""The pooled worker: claims tasks in batches and runs up to `concurrency` at once.

A worker is one database connection (a `Session`: every statement and every
LISTEN) and these services under one `Supervisor`, each in its own module:

- `listener`: keeps the connection open and catches up after a reconnect;
- `claim`: claims tasks while there is room;
- `report`: reports finished attempts;
- `heartbeat`: extends leases, refreshes the liveness row, stops lost runs;
- `maintenance`: on the schema's leader, reaps expired leases and dead workers
  and prunes finished tasks;
- `periodic`: enqueues the app's cron schedules (each tick once, whatever the
  number of workers);
- `metrics`: serves /metrics, /healthz and /readyz.

Guarantees of the whole:
- Start-up waits for the database and its schema with capped exponential
  backoff, logging each attempt; the worker is not ready meanwhile.
- A task runs only while this worker holds its lease, and every result is
  reported with the lease token it was claimed with, so a result reported
  after the lease moved on is refused by the backend.
- Results that cannot be reported (database down) are kept and reported after
  reconnecting.
- `stop()` drains: no new claims, in-flight work gets `drain_timeout` to
  finish, what is left is cancelled and released for another worker at once,
  and the liveness row is removed; `run()` returns 0.
- When a service fails (see `supervisor`), the worker is not ready at once,
  its running handlers are cancelled and their leases released, results
  waiting for their report are reported (or, when the database will not take
  them, their tasks released to run again), the liveness row is removed, and
  `run()` returns 1.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shoal import logs
from shoal.aio import Backoff, wait_event
from shoal.backend import (
    TRANSIENT_ERRORS,
    Backend,
    ClaimedTask,
    Outcome,
    WorkerIdentity,
    parse_handoff,
    printable,
)
from shoal.errors import InvalidInput, SchemaNotMigrated
from shoal.policy import next_delay
from shoal.worker import metrics
from shoal.worker.app import App, PermanentError, TaskContext, TaskDefinition, encode_result
from shoal.worker.claimer import Claimer
from shoal.worker.config import WorkerConfig
from shoal.worker.heartbeat import Heartbeat
from shoal.worker.listener import Listener
from shoal.worker.maintenance import Maintenance
from shoal.worker.periodic import PeriodicScheduler
from shoal.worker.reporter import REPORT_CHUNK, Reporter
from shoal.worker.supervisor import Service, Supervisor

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


@dataclass
class Execution:
    """One attempt this worker is running."""

    task: ClaimedTask
    context: TaskContext
    future: asyncio.Task[None] | None = None
    stop_reason: str | None = None  # cancelled | withdrawn | lease_lost | drain


class Worker:
    """Runs an App's tasks from the backend until `stop()`; see the module docstring."""

    def __init__(self, app: App, config: WorkerConfig) -> None:
        names = tuple(config.tasks) if config.tasks is not None else tuple(sorted(app.tasks))
        for name in names:
            app.get(name)  # raises UnknownTask for a name the app lacks
        if not names:
            raise InvalidInput("the app registers no tasks")
        self.app = app
        self.config = config
        channel = f"shoal_handoff_{secrets.token_hex(8)}"
        self.identity = WorkerIdentity(
            id=config.worker_id, namespace=config.namespace, tags=config.tags,
            task_names=names, concurrency=config.concurrency, pool=config.pool,
            max_attempts=tuple(app.get(name).max_attempts for name in names),
            max_expiries=tuple(app.get(name).lease_expiries for name in names),
            pod_name=config.pod_name, channel=channel)
        self.backend = Backend.for_worker(config.dsn, schema=config.db_schema,
                                          worker_id=config.worker_id, handoff_channel=channel,
                                          on_notify=self._on_notify)
        self.executions: dict[int, Execution] = {}
        self.held: dict[int, ClaimedTask] = {}  # claimed and not yet reported
        self.outbox: list[Outcome] = []
        self.releases: list[tuple[int, int]] = []
        self.handing_back: set[asyncio.Task[set[int]]] = set()
        self.report_lock = asyncio.Lock()  # one report at a time; the drain waits for it
        self.registered = asyncio.Event()  # the liveness row exists: claims may begin
        self.since = datetime.now(UTC)  # start-up in the database's clock (see `_open`)
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.report_due = asyncio.Event()
        self.beat_due = asyncio.Event()
        self.threads = ThreadPoolExecutor(max_workers=config.concurrency,
                                          thread_name_prefix="shoal-task")
        self.task_metrics = {name: metrics.task_metrics(name) for name in names}
        metrics.IN_FLIGHT.set_function(lambda: len(self.held))  # read when scraped
        self.claimer = Claimer(self)
        self.heartbeat = Heartbeat(self)
        services: list[Service] = [Listener(self), self.claimer, Reporter(self), self.heartbeat,
                                   Maintenance(self),
                                   PeriodicScheduler(self.backend, config.namespace, app.schedules)]
        if config.metrics_port:
            services.append(metrics.MetricsServer(config.metrics_host, config.metrics_port,
                                                  self.ready))
        self.supervisor = Supervisor(services)

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful drain; `run()` returns when it is done."""
        if not self.stopping.is_set():
            log.info("draining: no new claims; %d in flight", len(self.executions))
            self._stop_claiming()

    def _stop_claiming(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.slot_free.set()
        self.beat_due.set()

    async def run(self) -> int:
        """Claim and run tasks until `stop()`, drain and return 0; after a service
        failure, hand back what this worker holds and return 1."""
        try:
            if await self.supervisor.run(self._lifecycle()):
                return 0
            self._stop_claiming()
            await self.supervisor.stop()
            await self._drain(grace=0)
            return 1
        finally:
            await self.supervisor.stop()
            self.threads.shutdown(wait=False, cancel_futures=True)
            if self.registered.is_set():
                try:
                    async with asyncio.timeout(5):
                        await self.backend.remove_worker(self.identity.id)
                except TRANSIENT_ERRORS as exc:
                    log.warning("could not remove the liveness row: %s", exc)
            await self.backend.close()

    async def _lifecycle(self) -> None:
        if await self._open():
            await self.stopping.wait()
            await self.claimer.stopped.wait()  # a claim in flight has started its tasks
        await self._drain(self.config.drain_timeout)

    async def _open(self) -> bool:
        """Wait for the database and its schema, then register the liveness row;
        False when stopped first."""
        backoff = Backoff(first=0.2, cap=10.0)
        attempt = 0
        while not self.stopping.is_set():
            attempt += 1
            try:
                self.since = await self.backend.clock()
                await self.backend.check_migrated()
                await self.backend.register_task_names(self.config.namespace,
                                                       self.identity.task_names)
                await self.heartbeat.beat()
            except (*TRANSIENT_ERRORS, SchemaNotMigrated) as exc:
                delay = backoff.next()
                log.warning("database not ready (attempt %d, retrying in %.1fs): %s",
                            attempt, delay, exc)
                await wait_event(self.stopping, delay)
                continue
            self.registered.set()
            return True
        return False

    def ready(self) -> bool:
        """Registered, connected now, not draining, and no service failed."""
        session = self.backend.session
        return (self.registered.is_set() and session is not None and session.connected
                and not self.stopping.is_set() and self.supervisor.failed is None)

    @property
    def busy(self) -> int:
        """Handlers running now (results awaiting their report not counted)."""
        return len(self.executions)

    def free_slots(self) -> int:
        """Tasks this worker may claim now: at most `concurrency` handlers running,
        at most `concurrency` more results waiting for their report, and none
        while a suspect runs (a task whose lease expired twice runs alone)."""
        if self.suspect_running():
            return 0
        c = self.config.concurrency
        return min(c - self.busy, 2 * c - len(self.held))

    def suspect_running(self) -> bool:
        return any(e.task.alone for e in self.executions.values())

    # -- notifications and handoffs -------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self.identity.channel:
            self.on_handoff(parse_handoff(payload))
            return
        if channel == self.backend.control_channel:
            self.beat_due.set()  # learn of cancels at once
            return
        if payload == self.config.namespace:
            self.wake.set()

    def wake_in(self, seconds: float) -> None:
        if seconds <= 0:
            self.wake.set()
        else:
            asyncio.get_running_loop().call_later(seconds, self.wake.set)

    def on_handoff(self, task: ClaimedTask) -> None:
        """Run a task leased to this worker that it did not claim itself (a
        handoff, or a claim whose reply was lost), or hand it back at once."""
        if task.id in self.held:
            return  # heard of twice: notified and found on reconnecting
        if (self.stopping.is_set() or self.busy >= self.config.concurrency
                or self.suspect_running()):
            self._hand_back(task)
            return
        self.start(task, time.time())
        self.wake.set()  # claim again: anything else ready, and park once more

    def _hand_back(self, task: ClaimedTask) -> None:
        job = asyncio.create_task(self.backend.release([(task.id, task.lease_token)],
                                                       worker_id=self.identity.id))
        self.handing_back.add(job)
        job.add_done_callback(self._handed_back)

    def _handed_back(self, job: asyncio.Task[set[int]]) -> None:
        self.handing_back.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.warning("could not hand a task back, its lease will expire: %s", job.exception())

    # -- running ------------------------------------------------------------------------

    def start(self, task: ClaimedTask, now: float) -> None:
        """Run a task this worker now holds the lease of."""
        context = TaskContext(task.id, task.name, task.attempt, task.max_attempts,
                              task.workflow_id, task.step)
        execution = Execution(task, context)
        self.executions[task.id] = execution
        self.held[task.id] = task
        definition = self.app.tasks[task.name]
        self.task_metrics[task.name].claimed += 1
        metrics.CLAIM_LATENCY.observe(max(0.0, now - task.due_at))
        execution.future = asyncio.create_task(
            self._execute(execution, definition),
            context=logs.attempt_context(task.id, task.name, task.attempt, task.workflow_id,
                                         self.identity.pod_name or self.identity.id))
        execution.future.add_done_callback(self._executed)

    def _executed(self, future: asyncio.Task[None]) -> None:
        """A bug in the bookkeeping around a handler must not pass unseen."""
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            self.supervisor.fail("handler runner", exc)

    async def _execute(self, execution: Execution, definition: TaskDefinition) -> None:
        task, ctx = execution.task, execution.context
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            value = await self._call(definition, task, ctx)
        except asyncio.CancelledError:
            ctx.cancel()
            outcome = self._on_stopped(execution)
            if execution.stop_reason is None:
                raise
        except (PermanentError, InvalidInput) as exc:
            outcome = self._failure(definition, task, f"{type(exc).__name__}: {exc}", False)
        except TimeoutError:
            ctx.cancel()  # a sync handler's thread runs on: tell it to stop
            timeout = task.timeout_seconds or definition.timeout
            outcome = self._failure(definition, task, f"timed out after {timeout:g}s", True)
        except Exception as exc:
            outcome = self._failure(definition, task, f"{type(exc).__name__}: {exc}", True)
        else:
            try:
                result = encode_result(value)
            except InvalidInput as exc:
                outcome = self._failure(definition, task, f"result is not JSON: {exc}", False)
            else:
                outcome = Outcome(task.id, task.lease_token, task.workflow_id,
                                  result_json=result)
        finally:
            self.task_metrics[task.name].duration.observe(time.monotonic() - started)
            del self.executions[task.id]
            self.slot_free.set()
            if outcome is not None:
                self.outbox.append(outcome)
                self.report_due.set()
            elif execution.stop_reason != "drain":
                self.held.pop(task.id, None)

    async def _call(self, definition: TaskDefinition, task: ClaimedTask,
                    ctx: TaskContext) -> Any:
        timeout = task.timeout_seconds or definition.timeout
        if definition.is_async:
            work: Awaitable[Any] = definition.call(task.payload, ctx)
        else:
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self.threads, contextvars.copy_context().run,
                                        definition.call, task.payload, ctx)
        async with asyncio.timeout(timeout):  # None: no limit
            return await work

    def _on_stopped(self, execution: Execution) -> Outcome | None:
        task = execution.task
        if execution.stop_reason == "cancelled":
            return Outcome(task.id, task.lease_token, task.workflow_id, cancelled=True,
                           error="cancelled: the workflow was cancelled")
        if execution.stop_reason == "withdrawn":  # cancel_task ended it: nothing to report
            self.task_metrics[task.name].finished["cancelled"] += 1
        elif execution.stop_reason == "drain":
            self.releases.append((task.id, task.lease_token))
        elif execution.stop_reason == "lease_lost":
            metrics.LEASES_LOST.inc()
        return None

    def _failure(self, definition: TaskDefinition, task: ClaimedTask, error: str,
                 retryable: bool) -> Outcome:
        delay = next_delay(task.attempt, task.max_attempts, retryable=retryable,
                           base=definition.backoff, cap=definition.max_backoff)
        log.warning("task %s #%d attempt %d/%d failed: %s", task.name, task.id, task.attempt,
                    task.max_attempts, error)
        return Outcome(task.id, task.lease_token, task.workflow_id,
                       error=printable(error[:MAX_ERROR_CHARS]), retry_in_seconds=delay)

    def interrupt(self, execution: Execution, reason: str) -> None:
        """Stop a running handler; `reason` says what becomes of its attempt."""
        execution.stop_reason = reason
        execution.context.cancel()
        if execution.future is not None:
            execution.future.cancel()

    # -- reporting -------------------------------------------------------------------------

    def take_outbox(self, successes: bool) -> list[Outcome]:
        """Up to REPORT_CHUNK outcomes out of the outbox; plain successes only if
        `successes` (else they stay for the next claim to carry)."""
        if successes:
            batch, self.outbox = self.outbox[:REPORT_CHUNK], self.outbox[REPORT_CHUNK:]
            return batch
        batch = [o for o in self.outbox if not o.is_plain_success][:REPORT_CHUNK]
        taken = {o.task_id for o in batch}
        self.outbox = [o for o in self.outbox if o.task_id not in taken]
        return batch

    async def report(self, successes: bool) -> None:
        """Report one chunk of the outbox (see `take_outbox`); when that fails, the
        chunk goes back into the outbox."""
        async with self.report_lock:
            batch = self.take_outbox(successes)
            if len(batch) == REPORT_CHUNK:
                self.report_due.set()  # there may be more
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[Outcome]) -> None:
        try:
            accepted = await self.backend.report(batch, worker_id=self.identity.id)
        except BaseException:
            self.outbox[:0] = batch
            self.report_due.set()
            raise
        self.settle(batch, accepted)

    def settle(self, batch: list[Outcome], accepted: set[int]) -> None:
        """Forget the reported attempts of `batch`; count them by how they ended."""
        for outcome in batch:
            task = self.held.pop(outcome.task_id, None)
            if task is None:
                continue
            if outcome.task_id in accepted:
                self.task_metrics[task.name].finished[_kind(outcome)] += 1
                if outcome.error and outcome.retry_in_seconds is not None:
                    self.wake_in(outcome.retry_in_seconds)  # due from the report on
            else:
                metrics.LEASES_LOST.inc()
                log.warning("result for task %s #%d refused: its lease moved on",
                            task.name, outcome.task_id)
        self.slot_free.set()

    # -- draining ------------------------------------------------------------------------

    async def _drain(self, grace: float) -> None:
        """Give running handlers `grace` seconds, release the rest, report what is
        left; a batch the database will not take has its tasks released instead."""
        self.beat_due.set()  # the liveness row says draining: no more handoffs
        running = [e.future for e in self.executions.values() if e.future is not None]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        if self.executions:
            log.warning("releasing %d unfinished tasks", len(self.executions))
            for execution in list(self.executions.values()):
                self.interrupt(execution, "drain")
            await asyncio.wait([e.future for e in self.executions.values() if e.future],
                               timeout=5)
        if self.handing_back:
            await asyncio.wait(self.handing_back, timeout=5)
        deadline = time.monotonic() + max(10.0, grace)
        backoff = Backoff()
        async with self.report_lock:  # no report in flight: what is held is here
            while self.outbox or self.releases:
                try:
                    await self._hand_back_outbox()
                    released = await self.backend.release(self.releases,
                                                          worker_id=self.identity.id)
                except TRANSIENT_ERRORS as exc:
                    if time.monotonic() > deadline:
                        log.error("drain gave up: %d results unreported, %d leases unreleased;"
                                  " they will be retried after their lease expires (%s)",
                                  len(self.outbox), len(self.releases), exc)
                        return
                    log.warning("handing back failed, retrying: %s", exc)
                    await backoff.wait()
                    continue
                if released:
                    log.info("released %d tasks", len(released))
                for task_id, _token in self.releases:
                    self.held.pop(task_id, None)
                self.releases = []
        log.info("drained")

    async def _hand_back_outbox(self) -> None:
        while self.outbox:
            batch = self.take_outbox(successes=True)
            try:
                await self._send(batch)
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                del self.outbox[:len(batch)]
                log.error("the database refused %d results (%s); releasing their tasks to "
                          "run again", len(batch), exc)
                self.releases += [(o.task_id, o.lease_token) for o in batch]


def _kind(outcome: Outcome) -> str:
    if outcome.cancelled:
        return "cancelled"
    if outcome.error is None:
        return "succeeded"
    return "dead" if outcome.retry_in_seconds is None else "retried"
