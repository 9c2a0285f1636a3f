"""The pooled worker: claims tasks in batches and runs up to `concurrency` at once.

A worker is one database connection (a `Session`: every statement and every
LISTEN, every wait on it bounded by `LinkTimeouts` sized from the claim TTL),
a `Ledger` of what it holds (`ledger.py`: every rule over its leases, without
I/O), and these services under one `Supervisor`, each in its own module and
each given only the parts of the worker it uses:

- `listener`: keeps the connection open, probes it when idle, catches up after
  a reconnect;
- `claim`: claims tasks while there is room;
- `report`: reports finished attempts;
- `heartbeat`: extends leases, refreshes the liveness row, stops lost runs;
- `fence`: stops the handlers whose lease it could not renew in time;
- `maintenance`: on the schema's leader (a role held by lease, with a term),
  reaps expired leases and dead workers and prunes finished tasks;
- `scheduler`: on the same leader, makes delayed tasks ready when they come due;
- `periodic`: enqueues the app's cron schedules (each tick once, whatever the
  number of workers);
- `metrics`: serves /metrics, /healthz and /readyz.

Guarantees of the whole:
- Start-up waits for the database and its schema with capped exponential
  backoff, logging each attempt; the worker is not ready meanwhile.
- A task runs only while this worker holds its lease by its own clock: never
  started past its deadline (a handoff read late, a claim answered late), never
  twice at once, and stopped at the deadline unless renewed (`fence`); every
  result is reported with the lease token it was claimed with, so a result
  reported after the lease moved on is refused by the backend.
- Results that cannot be reported (database down) are kept and reported after
  reconnecting.
- Ready (`ready()`) only while registered, connected, not draining, no service
  failed, and the statement in flight has heard from the database within
  `timeouts.stall` (a quarter of the claim TTL at most).
- `stop()` drains: no new claims, in-flight work gets `drain_timeout` to
  finish, what is left is cancelled and released for another worker at once,
  the maintenance role is resigned and the liveness row removed; `run()`
  returns 0.
- When a service fails (see `supervisor`), the worker is not ready at once,
  its running handlers are cancelled and their leases given up as expiries
  (`Backend.abandon`: whatever failed may be one of these tasks, so no task can
  crash-loop a pool), results waiting for their report are reported (or, when
  the database will not take them, given up too), the liveness row is
  removed, and `run()` returns 1.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from shoal import logs
from shoal.aio import Backoff, wait_event
from shoal.backend import (
    RESIGNED,
    TRANSIENT_ERRORS,
    Backend,
    ClaimedTask,
    LinkTimeouts,
    Outcome,
    WorkerIdentity,
    describe,
    parse_handoff,
    printable,
)
from shoal.errors import InvalidInput, SchemaNotMigrated
from shoal.policy import next_delay
from shoal.worker import metrics
from shoal.worker.app import App, PermanentError, TaskDefinition, encode_result
from shoal.worker.claimer import Claimer
from shoal.worker.config import WorkerConfig
from shoal.worker.fence import Fence
from shoal.worker.heartbeat import Heartbeat
from shoal.worker.ledger import (
    HAND_BACK,
    REPORT_CHUNK,
    Admission,
    Lease,
    Ledger,
    Stop,
    local_deadline,
)
from shoal.worker.listener import Listener
from shoal.worker.maintenance import Maintenance
from shoal.worker.periodic import PeriodicScheduler
from shoal.worker.reporter import Reporter
from shoal.worker.scheduler import Scheduler
from shoal.worker.signals import Signals
from shoal.worker.supervisor import Service, Supervisor

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


class DatabaseClock:
    """This host's clock against the database's, to read lease expiries the database
    wrote (handoffs, catch-up) as deadlines of this worker (`ledger.local_deadline`)."""

    def __init__(self) -> None:
        self.offset = 0.0  # the database's Unix time minus this host's

    async def sync(self, backend: Backend) -> datetime:
        """Measure the offset over one round trip; return the database's time."""
        before = time.time()
        now = await backend.clock()
        self.offset = now.timestamp() - (before + time.time()) / 2
        return now

    def deadline(self, expires_at: float) -> float:
        return local_deadline(expires_at, wall_now=time.time(), mono_now=time.monotonic(),
                              db_offset=self.offset)


class Fenced(Generator[Any, Any, Any]):
    """Drives an async handler's coroutine, but never resumes it past its lease's
    deadline: the step that would is replaced by a CancelledError thrown into the
    handler, so after a freeze (SIGSTOP, a stalled host) no handler code but its
    own clean-up runs once its task may be running elsewhere."""

    __slots__ = ("_coro", "_lease", "_on_lapse")

    def __init__(self, coro: Coroutine[Any, Any, Any], lease: Lease,
                 on_lapse: Callable[[Lease], None]) -> None:
        self._coro = coro
        self._lease = lease
        self._on_lapse = on_lapse

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def send(self, value: Any) -> Any:
        if self._lease.stop is None and self._lease.lapsed():
            self._on_lapse(self._lease)
            return self._coro.throw(asyncio.CancelledError("its lease lapsed"))
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover (the 3-argument form)

    def close(self) -> None:
        self._coro.close()


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
        self.timeouts = LinkTimeouts.for_claim_ttl(config.claim_ttl)
        self.backend = Backend.for_worker(config.dsn, schema=config.db_schema,
                                          worker_id=config.worker_id, handoff_channel=channel,
                                          on_notify=self._on_notify, timeouts=self.timeouts)
        self.signals = Signals()
        self.ledger = Ledger(config.concurrency, config.claim_ttl)
        self.clock = DatabaseClock()
        self.since = datetime.now(UTC)  # start-up in the database's clock (see `_open`)
        self.handlers: dict[int, asyncio.Task[None]] = {}
        self.handing_back: set[asyncio.Task[set[int]]] = set()
        self.report_lock = asyncio.Lock()  # one report at a time; the drain waits for it
        self.threads = ThreadPoolExecutor(max_workers=config.concurrency,
                                          thread_name_prefix="shoal-task")
        self.task_metrics = {name: metrics.task_metrics(name) for name in names}
        metrics.IN_FLIGHT.set_function(lambda: len(self.ledger.leases))  # read when scraped
        self.claimer = Claimer(self.backend, self.ledger, self.identity, config, self.signals,
                               self.start_claimed, self.settle)
        self.maintenance = Maintenance(self.backend, self.identity.id, config.claim_ttl,
                                       config.retention, self.ledger.contact, self.signals)
        self.heartbeat = Heartbeat(self.backend, self.ledger, self.identity, self.signals,
                                   self.interrupt, self.maintenance.candidacy,
                                   self.maintenance.counted)
        self.scheduler = Scheduler(self.backend, lambda: self.maintenance.term != 0,
                                   self.signals)
        services: list[Service] = [
            Listener(self.backend, self.signals, self.catch_up), self.claimer,
            Reporter(self.signals, self.report, self.claimer.will_claim), self.heartbeat,
            Fence(self.ledger, self.signals, self.lapse), self.maintenance,
            self.scheduler,
            PeriodicScheduler(self.backend, config.namespace, app.schedules)]
        if config.metrics_port:
            services.append(metrics.MetricsServer(config.metrics_host, config.metrics_port,
                                                  self.ready))
        self.supervisor = Supervisor(services)

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful drain; `run()` returns when it is done."""
        if not self.signals.stopping.is_set():
            log.info("draining: no new claims; %d in flight", self.ledger.busy)
            self.signals.stop()

    async def run(self) -> int:
        """Claim and run tasks until `stop()`, drain and return 0; after a service
        failure, give back what this worker holds and return 1."""
        try:
            if await self.supervisor.run(self._lifecycle()):
                return 0
            self.signals.stop()
            await self.supervisor.stop()
            await self._drain(grace=0, failure=self.supervisor.failure)
            return 1
        finally:
            await self.supervisor.stop()
            self.threads.shutdown(wait=False, cancel_futures=True)
            if self.signals.registered.is_set():
                try:
                    async with asyncio.timeout(5):
                        await self.maintenance.resign()
                        await self.backend.remove_worker(self.identity.id)
                except TRANSIENT_ERRORS as exc:
                    log.warning("could not resign or remove the liveness row: %s", describe(exc))
            await self.backend.close()

    async def _lifecycle(self) -> None:
        if await self._open():
            await self.signals.stopping.wait()
            await self.claimer.stopped.wait()  # a claim in flight has started its tasks
        await self._drain(self.config.drain_timeout)

    async def _open(self) -> bool:
        """Wait for the database and its schema, then register the liveness row;
        False when stopped first."""
        backoff = Backoff(first=0.2, cap=10.0)
        attempt = 0
        while not self.signals.stopping.is_set():
            attempt += 1
            try:
                self.since = await self.clock.sync(self.backend)
                await self.backend.check_migrated()
                names = self.identity.task_names
                await self.backend.register_task_names(
                    self.config.namespace, names, [self.app.get(n).tags for n in names],
                    [self.app.get(n).priority for n in names])
                await self.heartbeat.beat()
            except (*TRANSIENT_ERRORS, SchemaNotMigrated) as exc:
                delay = backoff.next()
                log.warning("database not ready (attempt %d, retrying in %.1fs): %s",
                            attempt, delay, describe(exc))
                await wait_event(self.signals.stopping, delay)
                continue
            self.signals.registered.set()
            return True
        return False

    def ready(self) -> bool:
        """Registered, connected, the work in flight heard from within the stall bound,
        not draining, and no service failed."""
        session = self.backend.session
        return (self.signals.registered.is_set() and session is not None and session.connected
                and session.silence(time.monotonic()) < self.timeouts.stall
                and not self.signals.stopping.is_set() and self.supervisor.failed is None)

    # -- taking leases ---------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self.identity.channel:
            self._handed_off(payload)
        elif channel == self.backend.control_channel:
            if payload == RESIGNED:
                self.signals.elect_due.set()
            else:
                self.signals.beat_due.set()  # learn of cancels at once
        elif payload == self.config.namespace:
            self.signals.wake.set()

    def _handed_off(self, message: str) -> None:
        """Run a task an enqueue leased to this worker (or hand it back)."""
        task = parse_handoff(message)
        if task is None:
            log.warning("unreadable handoff ignored, its lease will expire: %s",
                        printable(message[:300]))
            return
        expires_at = task.expires_at
        if expires_at is None:  # from a version before 0.2: leased for our TTL at due_at
            expires_at = task.due_at + self.config.claim_ttl
        self.take(task, self.clock.deadline(expires_at), claimed=False)
        self.signals.wake.set()  # claim again: anything else ready, and park once more

    async def catch_up(self) -> None:
        """After a new connection: claim at once, and run the leases this worker took
        since it started but never heard of (a claim whose reply was lost)."""
        self.signals.wake.set()
        if self.signals.stopping.is_set():
            return
        await self.clock.sync(self.backend)
        for task in await self.backend.leased_to(self.identity.id, self.since):
            assert task.expires_at is not None
            self.take(task, self.clock.deadline(task.expires_at), claimed=False)

    def start_claimed(self, tasks: list[ClaimedTask], deadline: float) -> None:
        for task in tasks:
            self.take(task, deadline, claimed=True)

    def take(self, task: ClaimedTask, deadline: float, *, claimed: bool) -> None:
        """Start `task`, leased to this worker until `deadline`, or hand it back
        (`Ledger.admit` decides)."""
        now = time.monotonic()
        admission = self.ledger.admit(task, deadline, now, claimed=claimed,
                                      stopping=self.signals.stopping.is_set())
        if admission is Admission.START:
            self._start(self.ledger.start(task, deadline))
            if deadline - now < self.config.claim_ttl / 2:
                self.signals.beat_due.set()  # little time left: renew it now
        elif admission is Admission.LAPSED:
            log.warning("task %s #%d reached this worker %.1fs after its lease lapsed: not "
                        "started, handed back", task.name, task.id, now - deadline)
            self._hand_back(task)
        elif admission is Admission.FULL:
            self._hand_back(task)

    def _hand_back(self, task: ClaimedTask) -> None:
        job = asyncio.create_task(self.backend.release([(task.id, task.lease_token)],
                                                       worker_id=self.identity.id))
        self.handing_back.add(job)
        job.add_done_callback(self._handed_back)

    def _handed_back(self, job: asyncio.Task[set[int]]) -> None:
        self.handing_back.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.warning("could not hand a task back, its lease will expire: %s",
                        job.exception())

    # -- running ------------------------------------------------------------------------

    def _start(self, lease: Lease) -> None:
        task = lease.task
        definition = self.app.tasks[task.name]
        self.task_metrics[task.name].claimed += 1
        metrics.CLAIM_LATENCY.observe(max(0.0, time.time() - task.due_at))
        handler = asyncio.create_task(
            self._execute(lease, definition),
            context=logs.attempt_context(task.id, task.name, task.attempt, task.workflow_id,
                                         self.identity.pod_name or self.identity.id))
        handler.add_done_callback(self._executed)
        self.handlers[task.id] = handler
        self.signals.fence_due.set()

    def _executed(self, handler: asyncio.Task[None]) -> None:
        """A bug in the bookkeeping around a handler must not pass unseen."""
        exc = None if handler.cancelled() else handler.exception()
        if exc is not None:
            self.supervisor.fail("handler runner", exc)

    async def _execute(self, lease: Lease, definition: TaskDefinition) -> None:
        task, ctx = lease.task, lease.context
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            value = await self._call(definition, lease)
        except asyncio.CancelledError:
            ctx.cancel()
            outcome = self._stopped(lease)
            if lease.stop is None:
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
            self.handlers.pop(task.id, None)
            self.ledger.ended(lease, outcome)
            self.signals.slot_free.set()
            if outcome is not None or lease.stop in HAND_BACK:
                self.signals.report_due.set()

    async def _call(self, definition: TaskDefinition, lease: Lease) -> Any:
        task = lease.task
        timeout = task.timeout_seconds or definition.timeout
        work: Awaitable[Any]
        if definition.is_async:
            work = Fenced(definition.call(task.payload, lease.context), lease,
                          lambda lease: self.lapse(lease, running=True))
        else:
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self.threads, contextvars.copy_context().run,
                                        definition.call, task.payload, lease.context)
        async with asyncio.timeout(timeout):  # None: no limit
            return await work

    def lapse(self, lease: Lease, *, running: bool = False) -> None:
        """Self-fencing: the lease passed its deadline unrenewed, so its handler stops
        (`running`: the handler's own step found out, see `Fenced`)."""
        metrics.LEASES_LAPSED.inc()
        log.warning("lease on task %s #%d not renewed within the claim TTL (%gs): stopping "
                    "its handler, another worker will run the task", lease.task.name,
                    lease.task.id, self.config.claim_ttl)
        self.interrupt(lease, Stop.LAPSED, cancel=not running)

    def _stopped(self, lease: Lease) -> Outcome | None:
        """What a stopped attempt reports: only a cancelled workflow's step reports."""
        task = lease.task
        if lease.stop is Stop.CANCELLED:
            return Outcome(task.id, task.lease_token, task.workflow_id, cancelled=True,
                           error="cancelled: the workflow was cancelled")
        if lease.stop is Stop.WITHDRAWN:  # cancel_task ended it
            self.task_metrics[task.name].finished["cancelled"] += 1
        elif lease.stop is Stop.LEASE_LOST:
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

    def interrupt(self, lease: Lease, stop: Stop, *, cancel: bool = True) -> None:
        """Stop a running handler (`cancel` its asyncio task, unless the caller stops it
        otherwise); `stop` says what becomes of its attempt. A handler stopped already
        keeps its first reason."""
        if lease.stop is not None or not lease.running:
            return
        lease.stop = stop
        lease.context.cancel()
        handler = self.handlers.get(lease.task.id)
        if handler is not None and cancel:
            handler.cancel()
        if not self.app.tasks[lease.task.name].is_async:
            metrics.SYNC_ABANDONED.inc()
            log.warning("sync handler of task %s #%d stopped (%s): told through ctx.cancelled,"
                        " its thread runs on until it returns", lease.task.name, lease.task.id,
                        stop.value)

    # -- reporting -------------------------------------------------------------------------

    async def report(self, successes: bool) -> None:
        """Report one chunk of the outbox (plain successes only if `successes`), and hand
        back the leases of stopped attempts; what fails stays for the next try."""
        async with self.report_lock:
            batch = self.ledger.take_outbox(successes)
            if len(batch) == REPORT_CHUNK:
                self.signals.report_due.set()  # there may be more
            if batch:
                await self._send(batch)
            if self.ledger.releases:
                try:
                    await self._give_back(self.supervisor.failure)
                except BaseException:
                    self.signals.report_due.set()  # try again
                    raise

    async def _send(self, batch: list[Outcome]) -> None:
        try:
            accepted = await self.backend.report(batch, worker_id=self.identity.id)
        except BaseException:
            self.ledger.put_back(batch)
            self.signals.report_due.set()
            raise
        self.settle(batch, accepted)

    def settle(self, batch: list[Outcome], accepted: set[int]) -> None:
        """Forget the reported attempts of `batch`; count them by how they ended."""
        for task, outcome, ok in self.ledger.settle(batch, accepted):
            if ok:
                self.task_metrics[task.name].finished[_kind(outcome)] += 1
                if outcome.retry_in_seconds == 0:
                    self.signals.wake.set()  # ready again now
                elif outcome.retry_in_seconds is not None and outcome.error:
                    self.scheduler.expect(outcome.retry_in_seconds)
            else:
                metrics.LEASES_LOST.inc()
                log.warning("result for task %s #%d refused: its lease moved on",
                            task.name, outcome.task_id)
        self.signals.slot_free.set()

    # -- draining ------------------------------------------------------------------------

    async def _drain(self, grace: float, failure: str | None = None) -> None:
        """Give running handlers `grace` seconds, then stop the rest: released on a
        drain, given up as expiries after a `failure`. Report what is left; results
        the database refuses have their tasks given up too."""
        self.signals.beat_due.set()  # the liveness row says draining: no more handoffs
        running = list(self.handlers.values())
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        stop = Stop.DRAIN if failure is None else Stop.ABANDON
        if self.handlers:
            log.warning("%s %d unfinished tasks", "releasing" if failure is None else
                        "giving up", len(self.handlers))
            for lease in self.ledger.running:
                self.interrupt(lease, stop)
            await asyncio.wait(list(self.handlers.values()), timeout=5)
        if self.handing_back:
            await asyncio.wait(self.handing_back, timeout=5)
        deadline = time.monotonic() + max(10.0, grace)
        backoff = Backoff()
        async with self.report_lock:  # no report in flight: what is held is here
            while self.ledger.outbox or self.ledger.releases:
                try:
                    failure = await self._hand_back_outbox(failure)
                    await self._give_back(failure)
                except TRANSIENT_ERRORS as exc:
                    if time.monotonic() > deadline:
                        log.error("drain gave up: %d results unreported, %d leases not handed "
                                  "back; they will be retried after their lease expires (%s)",
                                  len(self.ledger.outbox), len(self.ledger.releases),
                                  describe(exc))
                        return
                    log.warning("handing back failed, retrying: %s", describe(exc))
                    await backoff.wait()
        log.info("drained")

    async def _hand_back_outbox(self, failure: str | None) -> str | None:
        """Report the outbox; results the database refuses (not a transient error) are
        given up with their tasks. Returns the reason to give leases up with."""
        while self.ledger.outbox:
            batch = self.ledger.take_outbox(successes=True)
            try:
                await self._send(batch)
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                ids = {o.task_id for o in batch}
                self.ledger.take(lambda o: o.task_id in ids)  # noqa: B023 (_send put them back)
                log.error("the database refused %d results (%s); giving their tasks up to "
                          "run again", len(batch), describe(exc))
                failure = failure or f"the database refused its result: {describe(exc)}"
                for task_id in ids:
                    lease = self.ledger.leases[task_id]
                    lease.stop = Stop.ABANDON
                    self.ledger.releases.append(lease)
        return failure

    async def _give_back(self, failure: str | None) -> None:
        """Hand back the leases of stopped attempts: released on a drain (the attempt not
        counted); given up as an expiry after a `failure`, or after a lapse."""
        stopped = {stop: [lease for lease in self.ledger.releases if lease.stop is stop]
                   for stop in HAND_BACK}
        if stopped[Stop.DRAIN]:
            released = await self.backend.release(
                [(lease.task.id, lease.task.lease_token) for lease in stopped[Stop.DRAIN]],
                worker_id=self.identity.id)
            log.info("released %d tasks", len(released))
        reasons = {Stop.ABANDON: f"failed: {failure or 'unknown'}",
                   Stop.LAPSED: f"could not renew it within the claim TTL "
                                f"({self.config.claim_ttl:g}s) and stopped its handler"}
        for stop, reason in reasons.items():
            if stopped[stop]:
                given_up = await self.backend.abandon(
                    [(lease.task.id, lease.task.lease_token) for lease in stopped[stop]],
                    worker_id=self.identity.id, reason=reason)
                log.warning("gave %d tasks up (%s), each using one lease expiry; %d had "
                            "moved on already", len(given_up), stop.value,
                            len(stopped[stop]) - len(given_up))
        self.ledger.released([lease for leases in stopped.values() for lease in leases])


def _kind(outcome: Outcome) -> str:
    if outcome.cancelled:
        return "cancelled"
    if outcome.error is None:
        return "succeeded"
    return "dead" if outcome.retry_in_seconds is None else "retried"
