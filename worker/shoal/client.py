"""The Python API for producers: enqueue tasks, submit workflows, send commands.

    async with await Client.connect(dsn, app=app) as client:
        task_id = await client.enqueue("resize", {"url": ...}, priority=5)
        workflow_id = await client.submit_workflow(spec, name="nightly")

Given the `App`, the client refuses unknown task names and payloads that do
not fit a handler's input model before anything is written, and takes each
task's retries, lease expiries, timeout, priority and tags from its definition.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import yaml
from pydantic import BaseModel, ValidationError

from shoal import dag
from shoal.backend import (
    DEFAULT_LEASE_EXPIRIES,
    Backend,
    CommandRecord,
    DeadLetter,
    DeadLetterFilter,
    NewTask,
    TaskRow,
    WorkflowStatus,
)
from shoal.errors import InvalidInput, InvalidWorkflow, UnknownTask
from shoal.units import parse_duration
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


class Client:
    """Enqueue tasks and steer workflows over one backend connection pool."""

    def __init__(self, backend: Backend, app: App | None = None,
                 namespace: str = "default") -> None:
        self.backend = backend
        self.app = app
        self.namespace = namespace

    @classmethod
    async def connect(cls, dsn: str, *, schema: str = "shoal", app: App | None = None,
                      namespace: str = "default", max_size: int = 4) -> Client:
        return cls(await Backend.connect(dsn, schema=schema, max_size=max_size), app,
                   namespace)

    async def close(self) -> None:
        await self.backend.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- tasks --------------------------------------------------------------------

    async def enqueue(self, name: str, payload: Any = None, **options: Any) -> int:
        """Enqueue one task and return its id (the existing id for a known idempotency key)."""
        (task_id,) = await self.enqueue_many([Job(name, payload, **options)])
        return task_id

    async def enqueue_many(self, jobs: Sequence[Job], *, force: bool = True) -> list[int]:
        """Enqueue tasks in one statement with one wake-up notification.

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
        return await self.backend.enqueue(tasks)

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
            definition.lease_expiries if definition else DEFAULT_LEASE_EXPIRIES)
        timeout = job.timeout if job.timeout is not None else (
            definition.timeout if definition else None)
        tags = job.tags if job.tags is not None else (definition.tags if definition else ())
        priority = job.priority if job.priority is not None else (
            definition.priority if definition else 0)
        if retries is not None and retries < 0:
            raise InvalidInput(f"task {job.name!r}: retries must be >= 0")
        return NewTask(
            name=job.name, payload=payload, namespace=self.namespace, priority=priority,
            tags=tuple(check_tags(list(tags))),
            delay_seconds=parse_duration(job.delay) if job.delay is not None else 0.0,
            max_attempts=None if retries is None else retries + 1,
            lease_expiries=lease_expiries,
            timeout_seconds=parse_duration(timeout) if timeout is not None else None,
            idempotency_key=job.idempotency_key)

    async def task(self, task_id: int) -> TaskRow:
        return await self.backend.get_task(task_id)

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
            raise InvalidWorkflow(f"invalid workflow spec: {exc}") from None
    dag.validate(model)
    return model


def _actor() -> str:
    return os.environ.get("USER") or os.environ.get("POD_NAME") or "shoal-client"
