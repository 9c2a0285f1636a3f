"""The pooled worker: claims tasks in batches and runs up to `concurrency` at once.

Guarantees:
- A task runs only while this worker holds its lease; every lease is extended
  by one heartbeat statement every `claim_ttl / 2`. When a heartbeat shows a
  lease lost (or its workflow cancelled), the handler is cancelled.
- Every result is reported with the lease token it was claimed with, so a
  result reported after the lease moved on is refused by the backend.
- Results that cannot be reported (database down) are kept and reported after
  reconnecting; calls to the database back off exponentially up to 5 s.
- Successes waiting to be reported ride on the next claim (one statement, one
  commit) unless a report is already in flight; the rest go in reports.
- An idle worker is parked on its own notification channel by the claim that
  found nothing more; an enqueue of one task may then lease the task to it and
  send it in that notification, and the handler starts without a claim round
  trip. A handoff it cannot take now (draining, no free slot) is released at
  once; one notified while its listener was down is found when it reconnects.
- `stop()` drains: no new claims, in-flight work gets `drain_timeout` to
  finish, what is left is cancelled and released for another worker at once,
  and the liveness row is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg

from shoal import logs
from shoal.aio import Backoff, wait_event
from shoal.backend import (
    Backend,
    ClaimedTask,
    Outcome,
    Subscription,
    WorkerIdentity,
    parse_handoff,
)
from shoal.errors import InvalidInput
from shoal.policy import next_delay
from shoal.worker import metrics
from shoal.worker.app import App, PermanentError, TaskContext, TaskDefinition, encode_result
from shoal.worker.config import WorkerConfig
from shoal.worker.periodic import PeriodicScheduler

log = logging.getLogger(__name__)

DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError)
# Results per report statement: bounds each statement's cost whatever plan the
# database picks, and lets a heartbeat run between two chunks.
REPORT_CHUNK = 500


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
        self.identity = WorkerIdentity(
            id=config.worker_id, namespace=config.namespace, tags=config.tags,
            task_names=names, concurrency=config.concurrency, pool=config.pool,
            max_attempts=tuple(app.get(name).max_attempts for name in names),
            pod_name=config.pod_name, channel=f"shoal_handoff_{secrets.token_hex(8)}")
        self.backend: Backend | None = None
        self.executions: dict[int, Execution] = {}
        self.held: dict[int, ClaimedTask] = {}  # claimed and not yet reported
        self.outbox: list[Outcome] = []
        self.report_lock = asyncio.Lock()
        self.releases: list[tuple[int, int]] = []
        self.handing_back: set[asyncio.Task[set[int]]] = set()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.report_due = asyncio.Event()
        self.beat_due = asyncio.Event()
        self.last_db_ok = 0.0
        self.threads = ThreadPoolExecutor(max_workers=config.concurrency,
                                          thread_name_prefix="shoal-task")
        self.task_metrics = {name: metrics.task_metrics(name) for name in names}
        metrics.IN_FLIGHT.set_function(lambda: len(self.held))  # read when scraped

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful drain; `run()` returns when it is done."""
        if not self.stopping.is_set():
            log.info("draining: no new claims; %d in flight", len(self.executions))
            self.stopping.set()
            self.wake.set()
            self.slot_free.set()
            self.beat_due.set()

    async def run(self) -> None:
        """Claim and run tasks until `stop()`, then drain and return."""
        self.backend = await Backend.connect(self.config.dsn, schema=self.config.db_schema,
                                             min_size=1, max_size=4)
        q = self.backend.queries
        assert self.identity.channel is not None
        listener = Subscription(
            self.config.dsn, [q.tasks_channel, q.control_channel, self.identity.channel],
            self._on_notify, on_connect=self._on_listen)
        services: list[Callable[[], Coroutine[Any, Any, None]]] = [
            listener.run, self._report_loop, self._heartbeat_loop, self._reaper_loop,
            PeriodicScheduler(self.backend, self.config.namespace, self.app.schedules).run]
        if self.config.metrics_port:
            services.append(metrics.MetricsServer(self.config.metrics_host,
                                                  self.config.metrics_port, self.ready).run)
        background = [asyncio.create_task(s(), name=s.__qualname__) for s in services]
        try:
            await self._beat()  # register the liveness row before the first claim
            await self._claim_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.threads.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(*DATABASE_ERRORS):
                await self.backend.remove_worker(self.identity.id)
            await self.backend.close()

    @property
    def busy(self) -> int:
        """Handlers running now (results awaiting their report not counted)."""
        return len(self.executions)

    def ready(self) -> bool:
        """Reached the database within one claim TTL and not draining."""
        recent = time.monotonic() - self.last_db_ok < self.config.claim_ttl
        return recent and not self.stopping.is_set()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self.identity.channel:
            self._on_handoff(parse_handoff(payload))
            return
        if not channel.endswith("_tasks"):
            self.beat_due.set()  # a control message: learn of cancels at once
            return
        if payload == self.config.namespace:
            self.wake.set()

    def _wake_in(self, seconds: float) -> None:
        if seconds <= 0:
            self.wake.set()
        else:
            asyncio.get_running_loop().call_later(seconds, self.wake.set)

    def _on_handoff(self, task: ClaimedTask) -> None:
        """Run a task an enqueue leased to this worker, or hand it back at once."""
        if task.id in self.held:
            return  # heard of twice: notified and found on reconnecting
        if self.stopping.is_set() or self.busy >= self.config.concurrency:
            self._hand_back(task)
            return
        self._start(task, time.time())
        self.wake.set()  # claim again: anything else ready, and park once more

    def _hand_back(self, task: ClaimedTask) -> None:
        assert self.backend is not None
        job = asyncio.create_task(self.backend.release([(task.id, task.lease_token)],
                                                       worker_id=self.identity.id))
        self.handing_back.add(job)
        job.add_done_callback(self._handed_back)

    def _handed_back(self, job: asyncio.Task[set[int]]) -> None:
        self.handing_back.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.warning("could not hand a task back, its lease will expire: %s", job.exception())

    async def _on_listen(self) -> None:
        """(Re)connected listener: claim now, and run handoffs notified while it was down."""
        assert self.backend is not None
        self.wake.set()
        if self.stopping.is_set():
            return
        try:
            # Under the report lock no report is in flight, so every lease found
            # here is one this worker has not finished: it runs at most once.
            async with self.report_lock:
                for task in await self.backend.leased_to(self.identity.id):
                    self._on_handoff(task)
        except DATABASE_ERRORS as exc:
            log.warning("could not look for handoffs missed while not listening: %s", exc)

    # -- claiming -------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        assert self.backend is not None
        backoff = Backoff()
        while not self.stopping.is_set():
            # Backpressure: at most `concurrency` handlers running, and at most
            # `concurrency` more results waiting for their report.
            free = min(self.config.concurrency - self.busy,
                       2 * self.config.concurrency - len(self.held))
            if free <= 0:
                self.slot_free.clear()
                await self.slot_free.wait()
                continue
            want = min(self.config.batch_size, free)
            self.wake.clear()
            try:
                claimed = await self._claim(want)
            except DATABASE_ERRORS as exc:
                metrics.DB_ERRORS.labels("claim").inc()
                log.warning("claim failed: %s", exc)
                await backoff.wait()
                continue
            backoff.reset()
            now = time.time()
            for task in claimed:
                self._start(task, now)
            if len(claimed) < want:
                await wait_event(self.wake, self.config.poll_interval)

    async def _claim(self, want: int) -> list[ClaimedTask]:
        """Claim up to `want` tasks, reporting the plain successes waiting in the
        outbox in the same statement unless a report is in flight already."""
        assert self.backend is not None
        if not self.outbox or self.report_lock.locked():
            claimed = await self.backend.claim(self.identity, want, self.config.claim_ttl)
            self.last_db_ok = time.monotonic()
            return claimed
        async with self.report_lock:
            succeeded = [o for o in self.outbox if o.error is None and not o.cancelled
                         and o.workflow_id is None][:REPORT_CHUNK]
            taken = {o.task_id for o in succeeded}
            self.outbox = [o for o in self.outbox if o.task_id not in taken]
            try:
                claimed, accepted = await self.backend.claim_and_complete(
                    self.identity, want, self.config.claim_ttl, succeeded)
            except DATABASE_ERRORS:
                self.outbox = succeeded + self.outbox
                self.report_due.set()
                raise
            self.last_db_ok = time.monotonic()
            self._settle(succeeded, accepted)
        return claimed

    def _start(self, task: ClaimedTask, now: float) -> None:
        running = self.executions.get(task.id)
        if running is not None:
            # This worker claimed a task it is still running: its lease expired
            # while the worker was cut off and another worker's reaper made it
            # ready again. One run is enough; it goes on under the new lease.
            running.task = task
            self.held[task.id] = task
            return
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

    # -- running ----------------------------------------------------------------------

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
            except (TypeError, ValueError) as exc:
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
                self._forget(task.id)

    async def _call(self, definition: TaskDefinition, task: ClaimedTask,
                    ctx: TaskContext) -> Any:
        timeout = task.timeout_seconds or definition.timeout
        if definition.is_async:
            work: Awaitable[Any] = definition.call(task.payload, ctx)
        else:
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self.threads, contextvars.copy_context().run,
                                        definition.call, task.payload, ctx)
        return await (asyncio.wait_for(work, timeout) if timeout else work)

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
        return Outcome(task.id, task.lease_token, task.workflow_id, error=error[:4000],
                       retry_in_seconds=delay)

    def _forget(self, task_id: int) -> ClaimedTask | None:
        return self.held.pop(task_id, None)

    # -- reporting -----------------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Reports finished attempts in batches as they come; retries with backoff."""
        backoff = Backoff()
        while True:
            await self.report_due.wait()
            self.report_due.clear()
            if await self._report_once():
                backoff.reset()
            else:
                self.report_due.set()
                await backoff.wait()

    async def _report_once(self) -> bool:
        """Report up to REPORT_CHUNK results; on failure keep them and return False."""
        assert self.backend is not None
        async with self.report_lock:
            batch, self.outbox = self.outbox[:REPORT_CHUNK], self.outbox[REPORT_CHUNK:]
            if self.outbox:
                self.report_due.set()
            if not batch:
                return True
            try:
                accepted = await self.backend.report(batch, worker_id=self.identity.id)
            except DATABASE_ERRORS as exc:
                metrics.DB_ERRORS.labels("report").inc()
                log.warning("report of %d results failed, will retry: %s", len(batch), exc)
                self.outbox = batch + self.outbox
                return False
            self.last_db_ok = time.monotonic()
            self._settle(batch, accepted)
            return True

    def _settle(self, batch: list[Outcome], accepted: set[int]) -> None:
        """Forget the reported attempts of `batch`; count them by how they ended."""
        for outcome in batch:
            task = self._forget(outcome.task_id)
            if task is None:
                continue
            if outcome.task_id in accepted:
                self.task_metrics[task.name].finished[_kind(outcome)] += 1
                if outcome.error and outcome.retry_in_seconds is not None:
                    self._wake_in(outcome.retry_in_seconds)  # due from the report on
            else:
                metrics.LEASES_LOST.inc()
                log.warning("result for task %s #%d refused: its lease moved on",
                            task.name, outcome.task_id)
        self.slot_free.set()

    # -- heartbeats --------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Extends every held lease each claim_ttl/2, or at once when poked."""
        while True:
            await wait_event(self.beat_due, self.config.claim_ttl / 2)
            self.beat_due.clear()
            try:
                await self._beat()
            except DATABASE_ERRORS as exc:
                metrics.DB_ERRORS.labels("heartbeat").inc()
                log.warning("heartbeat failed: %s", exc)
                await asyncio.sleep(min(1.0, self.config.claim_ttl / 10))
                self.beat_due.set()

    async def _beat(self) -> None:
        assert self.backend is not None
        # Under the report lock: a heartbeat and a report locking the same
        # rows in different orders on two connections would deadlock.
        async with self.report_lock:
            leases = [(task.id, task.lease_token) for task in self.held.values()]
            reply = await self.backend.heartbeat(
                self.identity, leases, self.config.claim_ttl, in_flight=len(leases),
                draining=self.stopping.is_set())
        self.last_db_ok = time.monotonic()
        for task_id, _token in leases:
            execution = self.executions.get(task_id)
            if execution is None or execution.stop_reason is not None:
                continue
            if task_id not in reply.held:
                log.warning("lease on task #%d lost; cancelling its handler", task_id)
                self._interrupt(execution, "lease_lost")
            elif task_id in reply.withdrawn:
                log.info("task #%d was cancelled; cancelling its handler", task_id)
                self._interrupt(execution, "withdrawn")
            elif task_id in reply.cancel:
                log.info("task #%d: workflow cancelled; cancelling its handler", task_id)
                self._interrupt(execution, "cancelled")

    def _interrupt(self, execution: Execution, reason: str) -> None:
        execution.stop_reason = reason
        execution.context.cancel()
        if execution.future is not None:
            execution.future.cancel()

    # -- maintenance -------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        """Reclaims expired leases, forgets stale workers and prunes old finished tasks."""
        assert self.backend is not None
        interval = max(0.5, self.config.claim_ttl / 2)
        last_prune = 0.0
        while True:
            await asyncio.sleep(interval * (0.75 + random.random() / 2))
            try:
                reclaimed = await self.backend.reap_expired()
                if reclaimed:
                    metrics.RECLAIMED.inc(reclaimed)
                    log.info("reclaimed %d tasks with expired leases", reclaimed)
                if time.monotonic() - last_prune > 60:
                    await self.backend.reap_workers(stale_seconds=3 * self.config.claim_ttl)
                    await self.backend.prune(self.config.retention)
                    last_prune = time.monotonic()
            except DATABASE_ERRORS as exc:
                metrics.DB_ERRORS.labels("maintenance").inc()
                log.warning("maintenance failed: %s", exc)

    # -- draining ------------------------------------------------------------------------

    async def _drain(self) -> None:
        assert self.backend is not None
        self.beat_due.set()
        running = [e.future for e in self.executions.values() if e.future is not None]
        if running:
            _done, pending = await asyncio.wait(running, timeout=self.config.drain_timeout)
            if pending:
                log.warning("drain timeout: releasing %d unfinished tasks", len(pending))
                for execution in list(self.executions.values()):
                    self._interrupt(execution, "drain")
                await asyncio.wait(pending, timeout=5)
        deadline = time.monotonic() + max(5.0, self.config.drain_timeout)
        backoff = Backoff()
        while time.monotonic() < deadline:
            reported = await self._report_once()  # waits for a report already in flight
            try:
                released = await self.backend.release(self.releases,
                                                      worker_id=self.identity.id)
            except DATABASE_ERRORS as exc:
                log.warning("release failed, retrying: %s", exc)
                released = None
            if released is not None:
                for task_id, _token in self.releases:
                    self._forget(task_id)
                self.releases = []
            if reported and released is not None and not self.outbox:
                log.info("drained")
                return
            await backoff.wait()
        log.error("drain gave up: %d results unreported, %d leases unreleased; they will be "
                  "retried after their lease expires", len(self.outbox), len(self.releases))


def _kind(outcome: Outcome) -> str:
    if outcome.cancelled:
        return "cancelled"
    if outcome.error is None:
        return "succeeded"
    return "dead" if outcome.retry_in_seconds is None else "retried"
