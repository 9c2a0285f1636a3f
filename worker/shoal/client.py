"""The Python API for producers: enqueue tasks, submit workflows, send commands.

    async with await Client.connect(dsn, app=app) as client:
        task_id = await client.enqueue("resize", {"url": ...}, priority=5)
        result = await client.wait(task_id, timeout=30)
        workflow_id = await client.submit_workflow(spec, name="nightly")

    async with conn.transaction():            # the caller's own asyncpg connection
        await conn.execute("INSERT INTO orders ...")
        await client.enqueue("ship", {"order": 42}, connection=conn)

Given the `App`, the client refuses unknown task names and payloads that do
not fit a handler's input model before anything is written, and takes each
task's retries, lease expiries, timeout, priority and tags from its definition.
Without it, the workers supply them: retries, lease expiries and timeout when
one claims the task, tags and priority as they declared them when they started
(the enqueue reads them in its own statement).
`shoal.sync.Client` is the same API for code that is not async.

Through a transaction pooler (PgBouncer's `pool_mode = transaction`), mark the
DSN with `?prepared_statements=false` (see `shoal.backend.connections`); the
waits then LISTEN on `listen_dsn`, a direct or session-mode DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import yaml
from pydantic import BaseModel, ValidationError

from shoal import dag
from shoal.aio import wait_event
from shoal.backend import (
    FINAL_WORKFLOW_STATES,
    Backend,
    CancelResult,
    CommandRecord,
    Connection,
    DeadLetter,
    DeadLetterFilter,
    Endpoint,
    NewTask,
    QueueDepth,
    ScheduleStatus,
    Subscription,
    TaskFilter,
    TaskRow,
    TaskSummary,
    WorkflowStatus,
)
from shoal.errors import (
    InvalidInput,
    InvalidWorkflow,
    TaskFailed,
    UnknownTask,
    WaitTimeout,
    WorkflowFailed,
)
from shoal.units import parse_duration
from shoal.validation import problems
from shoal.worker.app import App, check_tags


@dataclass(frozen=True)
class Job:
    """One task to enqueue; unset options come from the task's definition."""

    name: str
    payload: Any = None
    priority: int | None = None
    tags: Sequence[str] | None = None
    delay: str | float | None = None
    retries: int | None = None
    lease_expiries: int | None = None
    timeout: str | float | None = None
    idempotency_key: str | None = None
    # How long the key holds (see `unique_key`): "forever", "active", or a period.
    unique: str | float = "forever"


class Client:
    """Enqueue tasks and steer workflows over one backend connection pool."""

    def __init__(self, backend: Backend, app: App | None = None,
                 namespace: str = "default", listen_dsn: str | None = None) -> None:
        self.backend = backend
        self.app = app
        self.namespace = namespace
        self.listen_dsn = listen_dsn or backend.dsn
        self._completions: Completions | None = None
        self._unwatching: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, dsn: str, *, schema: str = "shoal", app: App | None = None,
                      namespace: str = "default", max_size: int = 4,
                      listen_dsn: str | None = None) -> Client:
        """A client over a pool of up to `max_size` connections to `dsn`; its waits
        LISTEN on one more, to `listen_dsn` (default `dsn`), opened by the first."""
        return cls(await Backend.connect(dsn, schema=schema, max_size=max_size), app,
                   namespace, listen_dsn)

    async def close(self) -> None:
        await asyncio.gather(*self._unwatching)
        if self._completions is not None:
            await self._completions.close()
        await self.backend.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- tasks --------------------------------------------------------------------

    async def enqueue(self, name: str, payload: Any = None, *,
                      connection: Connection | None = None, **options: Any) -> int:
        """Enqueue one task and return its id (the holder's id for an idempotency key that
        is held: forever, while its task is active, or per period, as `unique=` says;
        see `unique_key`).

        With `connection` (an asyncpg connection of the caller's, in a
        transaction), the task exists if and only if that transaction commits;
        workers are woken when it does.
        """
        (task_id,) = await self.enqueue_many([Job(name, payload, **options)],
                                             connection=connection)
        return task_id

    async def enqueue_many(self, jobs: Sequence[Job], *, connection: Connection | None = None,
                           force: bool = True) -> list[int]:
        """Enqueue tasks in one statement with one wake-up notification (see `enqueue`).

        Without an app and without `force`, a task name that no worker has ever
        served in the namespace is refused (UnknownTask): a typo would sit ready
        forever.
        """
        tasks = [self._new_task(job) for job in jobs]
        if self.app is None and not force:
            for name in sorted({t.name for t in tasks}):
                if not await self.backend.task_name_known(self.namespace, name):
                    raise UnknownTask(
                        f"no worker has served task {name!r} in namespace "
                        f"{self.namespace!r}: check the name, pass --app to check it "
                        "against your app, or --force")
        return await self.backend.enqueue(tasks, connection=connection)

    def _new_task(self, job: Job) -> NewTask:
        definition = self.app.get(job.name) if self.app is not None else None
        payload = job.payload
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        if definition is not None:
            definition.validate_payload(payload)
        retries = job.retries if job.retries is not None else (
            definition.retries if definition else None)
        lease_expiries = job.lease_expiries if job.lease_expiries is not None else (
            definition.lease_expiries if definition else None)
        timeout = job.timeout if job.timeout is not None else (
            definition.timeout if definition else None)
        # Without the app, unset tags and priority are left to the backend: the task's
        # as its workers declared them.
        tags = job.tags if job.tags is not None else (definition.tags if definition else None)
        priority = job.priority if job.priority is not None else (
            definition.priority if definition else None)
        if retries is not None and retries < 0:
            raise InvalidInput(f"task {job.name!r}: retries must be >= 0")
        return NewTask(
            name=job.name, payload=payload, namespace=self.namespace, priority=priority,
            tags=None if tags is None else tuple(check_tags(list(tags))),
            delay_seconds=parse_duration(job.delay) if job.delay is not None else 0.0,
            max_attempts=None if retries is None else retries + 1,
            lease_expiries=lease_expiries,
            timeout_seconds=parse_duration(timeout) if timeout is not None else None,
            **unique_key(job.idempotency_key, job.unique, time.time()))

    async def task(self, task_id: int) -> TaskRow:
        return await self.backend.get_task(task_id)

    async def tasks(self, where: TaskFilter | None = None, limit: int = 100) -> list[TaskSummary]:
        """Tasks matching `where`, newest first."""
        return await self.backend.list_tasks(where or TaskFilter(), limit)

    async def cancel_task(self, task_id: int, *, reason: str = "",
                          actor: str | None = None) -> CancelResult:
        """Cancel a plain task: a ready or delayed one never runs; a running one's
        handler is told (`ctx.cancelled`, and async handlers are cancelled) and
        its late result is refused. Finished tasks are left alone (not applied)."""
        return await self.backend.cancel_task(task_id, actor=actor or _actor(), reason=reason)

    async def wait(self, task_id: int, *,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the API)
        """The task's result once it succeeds, woken by the notification of its end.

        Waiting does not hold the task up: its row is not locked while it may be
        claimed (see `Backend.watch_task`). Raises TaskFailed (a dead letter, with
        its recorded error, or cancelled), WaitTimeout after `timeout` seconds,
        NotFound for an unknown id.
        """
        deadline = Deadline(timeout)
        completions = await self._listening(deadline)
        waiter = uuid.uuid4()
        with completions.watching(completions.finished, str(task_id)) as finished:
            try:
                await self.backend.watch_task(task_id, waiter)
                while True:
                    finished.clear()
                    state, result, error = await self.backend.read_watched(task_id)
                    if state == "succeeded":
                        return result
                    if state in ("dead", "cancelled"):
                        raise TaskFailed(task_id, state, error)
                    await deadline.wait(finished, f"task {task_id} is still {state}")
            finally:
                self._unwatch(task_id, waiter)

    def _unwatch(self, task_id: int, waiter: UUID) -> None:
        """Remove a wait's registration in the background (`close` waits for it), best
        effort: the wait answers, or is cancelled, at once; the maintenance leader
        deletes the registrations a failed removal leaves behind."""
        async def unwatch() -> None:
            with contextlib.suppress(Exception):
                await self.backend.unwatch_task(task_id, waiter)

        task = asyncio.create_task(unwatch())
        self._unwatching.add(task)
        task.add_done_callback(self._unwatching.discard)

    async def wait_workflow(self, workflow_id: UUID, *,
                            timeout: float | None = None  # noqa: ASYNC109 (the API)
                            ) -> WorkflowStatus:
        """The workflow's status once it succeeds, woken by its notifications.

        Raises WorkflowFailed (failed or cancelled), WaitTimeout, NotFound.
        """
        deadline = Deadline(timeout)
        completions = await self._listening(deadline)
        with completions.watching(completions.workflows, str(workflow_id)) as changed:
            while True:
                changed.clear()
                status = await self.backend.workflow_status(workflow_id)
                if status.state == "succeeded":
                    return status
                if status.state in FINAL_WORKFLOW_STATES:
                    raise WorkflowFailed(workflow_id, status.state, status.message)
                await deadline.wait(changed, f"workflow {workflow_id} is still {status.state}")

    async def _listening(self, deadline: Deadline) -> Completions:
        if self._completions is None:
            Endpoint.parse(self.listen_dsn).require_session("waiting (LISTEN: pass listen_dsn)")
            self._completions = Completions(self.backend, self.listen_dsn)
        await deadline.wait(self._completions.start(), "not listening for notifications yet")
        return self._completions

    async def queue(self, namespace: str | None = None) -> list[QueueDepth]:
        """Tasks by namespace, name and state, with the age of the oldest ready one."""
        return await self.backend.queue_depth(namespace)

    async def schedules(self, namespace: str | None = None) -> list[ScheduleStatus]:
        """The periodic schedules the workers declared, with their last tick."""
        return await self.backend.list_periodic(namespace)

    # -- workflows ----------------------------------------------------------------

    async def submit_workflow(self, spec: dag.WorkflowSpec | dict[str, Any] | str, *,
                              name: str, key: str | None = None) -> UUID:
        """Validate and submit a DAG (model, dict or YAML text); idempotent by `key`."""
        model = parse_workflow(spec)
        if self.app is not None:
            for step in model.steps:
                self.app.get(step.task)
        return await self.backend.submit_workflow(model, name=name, namespace=self.namespace,
                                                  key=key)

    async def pause(self, workflow_id: UUID, *, reason: str = "",
                    actor: str | None = None) -> CommandRecord:
        return await self.backend.command(workflow_id, "pause", actor=actor or _actor(),
                                          reason=reason)

    async def resume(self, workflow_id: UUID, *, reason: str = "",
                     actor: str | None = None) -> CommandRecord:
        return await self.backend.command(workflow_id, "resume", actor=actor or _actor(),
                                          reason=reason)

    async def cancel(self, workflow_id: UUID, *, reason: str = "",
                     actor: str | None = None) -> CommandRecord:
        return await self.backend.command(workflow_id, "cancel", actor=actor or _actor(),
                                          reason=reason)

    async def status(self, workflow_id: UUID) -> WorkflowStatus:
        return await self.backend.workflow_status(workflow_id)

    # -- dead letters -------------------------------------------------------------

    async def dead_letters(self, where: DeadLetterFilter | None = None,
                           limit: int = 100) -> list[DeadLetter]:
        return await self.backend.dead_letters(where or DeadLetterFilter(), limit)

    async def count_dead_letters(self, where: DeadLetterFilter | None = None) -> int:
        return await self.backend.count_dead_letters(where or DeadLetterFilter())

    async def retry_dead_letters(self, where: DeadLetterFilter | None = None) -> int:
        """Retry matching dead letters with fresh attempts; return how many."""
        return await self.backend.retry_dead_letters(where or DeadLetterFilter())


def unique_key(key: str | None, unique: str | float, now: float) -> dict[str, Any]:
    """The idempotency key and scope a task is stored with, for `unique`:

    - "forever" (the default): the key is the task's until retention prunes it;
    - "active": until the task ended (succeeded, cancelled, dead): River's unique
      states without the finished ones, PgQueuer's dedupe key;
    - a period ("1h", or seconds): one task per key per clock-aligned window of
      that length (River's ByPeriod), by the producer's clock (`now`): the key is
      stored as `KEY@WINDOW-START`, e.g. `img-42@2025-03-03T09:00:00Z`, for good.
    """
    if unique == "forever":
        return {"idempotency_key": key, "unique": "forever"}
    if key is None:
        raise InvalidInput(f"unique={unique!r} needs an idempotency key")
    if unique == "active":
        return {"idempotency_key": key, "unique": "active"}
    try:
        period = parse_duration(unique)
    except InvalidInput:
        period = 0.0
    if period < 1 or not period.is_integer():
        raise InvalidInput(f"unique must be 'forever', 'active' or a period of whole seconds "
                           f"such as 1h, not {unique!r}")
    window = datetime.fromtimestamp(now - now % period, UTC)
    return {"idempotency_key": f"{key}@{window:%Y-%m-%dT%H:%M:%SZ}", "unique": "forever"}


def parse_workflow(spec: dag.WorkflowSpec | dict[str, Any] | str) -> dag.WorkflowSpec:
    """A validated WorkflowSpec from a model, a dict, YAML text, or a whole Workflow CR."""
    if isinstance(spec, dag.WorkflowSpec):
        model = spec
    else:
        data = spec
        if isinstance(spec, str):
            try:
                data = yaml.safe_load(spec)
            except yaml.YAMLError as exc:
                raise InvalidWorkflow(f"workflow is not valid YAML: {exc}") from None
        if isinstance(data, dict) and data.get("kind") == "Workflow":
            data = data.get("spec") or {}
            data = {k: v for k, v in data.items() if k != "poolRef"}
        try:
            model = dag.WorkflowSpec.model_validate(data)
        except ValidationError as exc:
            raise InvalidWorkflow(f"invalid workflow spec: {problems(exc)}") from None
    dag.validate(model)
    return model


class Deadline:
    """The end of a wait of `timeout` seconds (None: no end) from its creation."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.end = None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def wait(self, event: asyncio.Event, what: str) -> None:
        """Until `event` is set; WaitTimeout saying `what` once the deadline passed."""
        if self.end is None:
            await event.wait()
        elif not await wait_event(event, self.end - asyncio.get_running_loop().time()):
            raise WaitTimeout(f"timed out after {self.timeout:g}s: {what}")


class Completions:
    """One LISTEN connection for all of a client's waits, started by the first.

    A wait registers an event for (channel, payload) before it reads the state,
    so a notification between the read and the sleep is not lost; after the
    connection is re-established every event is set, so each wait reads again.
    """

    def __init__(self, backend: Backend, dsn: str) -> None:
        self.finished = backend.queries.finished_channel
        self.workflows = backend.queries.workflows_channel
        self.events: dict[tuple[str, str], set[asyncio.Event]] = {}
        self.subscription = Subscription(dsn, [self.finished, self.workflows],
                                         self._notified, self._reconnected)
        self.listener: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Event:
        """Start listening (once); the event is set while the connection listens."""
        if self.listener is None:
            self.listener = asyncio.create_task(self.subscription.run(), name="shoal-waits")
        return self.subscription.connected

    @contextlib.contextmanager
    def watching(self, channel: str, payload: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        watchers = self.events.setdefault((channel, payload), set())
        watchers.add(event)
        try:
            yield event
        finally:
            watchers.discard(event)
            if not watchers:
                del self.events[(channel, payload)]

    def _notified(self, channel: str, payload: str) -> None:
        for event in self.events.get((channel, payload), ()):
            event.set()

    def _reconnected(self) -> None:
        for events in self.events.values():
            for event in events:
                event.set()

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            await asyncio.gather(self.listener, return_exceptions=True)


def _actor() -> str:
    return os.environ.get("USER") or os.environ.get("POD_NAME") or "shoal-client"
