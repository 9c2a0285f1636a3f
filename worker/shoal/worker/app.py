"""The task registry users write against: `App` and its `@app.task` decorator.

    app = App()

    @app.task("resize", retries=5, timeout="30s")  # lease_expiries=3 by default
    async def resize(image: ResizeInput, ctx: TaskContext) -> ResizeOutput: ...

A task may run on a schedule too: `@app.task("report", cron="0 * * * *")` or
`app.periodic("report", cron=..., timezone=..., payload=...)` (see
`shoal.worker.periodic` for what happens to missed ticks).

A handler takes the task's payload as its first argument. When that argument
is annotated with a pydantic model, the payload is validated into it (a payload
that does not fit fails the task at once, without retries); a pydantic model
returned is stored as JSON. A parameter annotated `TaskContext` receives the
attempt's context. Sync handlers run in a thread pool, never on the event loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints
from uuid import UUID

from pydantic import BaseModel, ValidationError

from shoal.backend import DEFAULT_LEASE_EXPIRIES, Schedule, json_text
from shoal.dag import TAG_PATTERN, TASK_NAME_PATTERN
from shoal.errors import InvalidInput, UnknownTask
from shoal.units import parse_duration
from shoal.worker.periodic import check_schedule


class PermanentError(Exception):
    """Raise from a handler to fail the task now, without retries (it becomes a dead letter)."""


class TaskContext:
    """What a handler may know about the attempt it runs."""

    __slots__ = ("_cancelled", "_lapsed", "attempt", "max_attempts", "name", "step",
                 "task_id", "workflow_id")

    def __init__(self, task_id: int, name: str, attempt: int, max_attempts: int,
                 workflow_id: UUID | None = None, step: str | None = None,
                 lapsed: Callable[[], bool] | None = None) -> None:
        self.task_id = task_id
        self.name = name
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.workflow_id = workflow_id
        self.step = step
        self._cancelled = False
        self._lapsed = lapsed

    @property
    def cancelled(self) -> bool:
        """True once the attempt must stop: its workflow was cancelled, its lease lost
        or lapsed (checked against the lease's deadline at each read, so a handler
        resuming from a freeze learns it before doing anything else), or the worker
        is draining. Sync handlers should poll it in long loops."""
        return self._cancelled or (self._lapsed is not None and self._lapsed())

    def cancel(self) -> None:
        """Mark the attempt cancelled (the worker calls this; handlers read `cancelled`)."""
        self._cancelled = True


Handler = Callable[..., Any]


@dataclass(frozen=True)
class TaskDefinition:
    """A registered task: its handler and its retry, timeout and routing defaults."""

    name: str
    handler: Handler
    retries: int = 0
    lease_expiries: int = DEFAULT_LEASE_EXPIRIES
    timeout: float | None = None
    priority: int = 0
    tags: tuple[str, ...] = ()
    backoff: float = 1.0
    max_backoff: float = 300.0
    input_model: type[BaseModel] | None = None
    context_param: str | None = None
    is_async: bool = True

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def validate_payload(self, payload: Any) -> Any:
        """The handler's argument for `payload`; raises InvalidInput when it does not fit."""
        if self.input_model is None:
            return payload
        try:
            return self.input_model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(f"payload for task {self.name!r} is invalid: {exc}") from None

    def call(self, payload: Any, ctx: TaskContext) -> Any:
        """Call the handler (a coroutine for async handlers)."""
        argument = self.validate_payload(payload)
        if self.context_param is None:
            return self.handler(argument)
        return self.handler(argument, **{self.context_param: ctx})


_PLAIN = frozenset({type(None), str, int, float, bool, dict, list})


def encode_result(value: Any) -> str:
    """A handler's return value as JSON text (pydantic models are dumped first).

    Raises InvalidInput for a value the database could not store (see
    `shoal.backend.json_text`): such a result fails its task permanently.
    """
    if value is None:
        return "null"
    if type(value) not in _PLAIN and isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json_text(value)


class App:
    """A set of task definitions, by name."""

    def __init__(self, name: str = "shoal") -> None:
        self.name = name
        self.tasks: dict[str, TaskDefinition] = {}
        self.schedules: dict[str, Schedule] = {}

    def task(self, name: str | None = None, *, retries: int = 0,
             lease_expiries: int = DEFAULT_LEASE_EXPIRIES,
             timeout: str | float | None = None, priority: int = 0,
             tags: tuple[str, ...] | list[str] = (), backoff: str | float = "1s",
             max_backoff: str | float = "5m", cron: str | None = None,
             timezone: str = "UTC", payload: Any = None) -> Callable[[Handler], Handler]:
        """Register the decorated function as task `name` (default: the function's name).

        `retries` counts handler failures; `lease_expiries` counts runs whose lease
        expired (the worker was killed, frozen or cut off), which are not
        failures and use up no attempt. Either budget used up: a dead letter.
        With `cron`, the task also runs on that schedule (in `timezone`, with
        `payload`): `periodic(name, cron=...)` in one go.
        """

        def register(fn: Handler) -> Handler:
            task_name = name or fn.__name__
            if task_name in self.tasks:
                raise ValueError(f"task {task_name!r} is registered twice")
            if retries < 0:
                raise ValueError(f"task {task_name!r}: retries must be >= 0")
            if lease_expiries < 0:
                raise ValueError(f"task {task_name!r}: lease_expiries must be >= 0")
            self.tasks[task_name] = _definition(
                task_name, fn, retries=retries, lease_expiries=lease_expiries,
                timeout=parse_duration(timeout) if timeout is not None else None,
                priority=priority, tags=tuple(check_tags(tags)),
                backoff=parse_duration(backoff), max_backoff=parse_duration(max_backoff))
            if cron is not None:
                self.periodic(task_name, cron=cron, timezone=timezone, payload=payload)
            return fn

        return register

    def periodic(self, task: str, *, cron: str, name: str | None = None,
                 timezone: str = "UTC", payload: Any = None,
                 priority: int | None = None) -> Schedule:
        """Run registered task `task` on schedule `cron` in `timezone` with `payload`.

        `name` (default: the task's name) identifies the schedule; give each
        schedule of one task its own. The task's tags and (unless given) its
        priority apply. Raises UnknownTask, or ValueError for a bad cron
        expression, time zone or payload.
        """
        definition = self.get(task)
        schedule_name = name or task
        if schedule_name in self.schedules:
            raise ValueError(f"schedule {schedule_name!r} is declared twice")
        if not re.match(TASK_NAME_PATTERN, schedule_name):
            raise ValueError(f"invalid schedule name {schedule_name!r}")
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        definition.validate_payload(payload)
        schedule = check_schedule(Schedule(
            name=schedule_name, task=task, cron=cron, timezone=timezone, payload=payload,
            priority=definition.priority if priority is None else priority,
            tags=definition.tags))
        self.schedules[schedule_name] = schedule
        return schedule

    def get(self, name: str) -> TaskDefinition:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r}; registered tasks: {known}") from None


def _definition(name: str, fn: Handler, **options: Any) -> TaskDefinition:
    if not re.match(TASK_NAME_PATTERN, name):
        raise ValueError(f"invalid task name {name!r}")
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise ValueError(f"task {name!r}: the handler must take the payload as first argument")
    hints = get_type_hints(fn)
    payload_type = hints.get(params[0].name)
    input_model = (payload_type if inspect.isclass(payload_type)
                   and issubclass(payload_type, BaseModel) else None)
    context_param = next((p.name for p in params[1:] if hints.get(p.name) is TaskContext), None)
    return TaskDefinition(name=name, handler=fn, input_model=input_model,
                          context_param=context_param,
                          is_async=inspect.iscoroutinefunction(fn), **options)


def check_tags(tags: list[str] | tuple[str, ...]) -> list[str]:
    """The tags, unchanged; raises InvalidInput when one is not a valid tag."""
    bad = [t for t in tags if not re.match(TAG_PATTERN, t)]
    if bad:
        raise InvalidInput(f"invalid tag(s) {bad!r}: use letters, digits, '-', '_' and '.'")
    return list(tags)


def load_app(reference: str) -> App:
    """Import `module:attr` or `path/to/file.py:attr` and return the App it names."""
    target, sep, attr = reference.rpartition(":")
    if not sep or not target or not attr:
        raise InvalidInput(f"--app {reference!r}: use MODULE:APP or path/to/file.py:APP")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.exists():
                raise InvalidInput(f"--app {reference!r}: no such file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise InvalidInput(f"--app {reference!r}: cannot import {target!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise InvalidInput(f"--app {reference!r}: {attr!r} in {target!r} is not a shoal.App")
    return app
