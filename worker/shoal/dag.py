"""Workflow DAGs: the spec users write, and the pure decisions over it.

The same model is the `Workflow` custom resource's spec (camelCase keys such
as `dependsOn`) and the Python API's argument. Nothing here does I/O:
`validate` refuses a DAG that cannot run, `ready_steps` says which blocked
steps may start, `resolve_input` fills `${...}` references from the outputs
of finished steps, and `outcome` says when a workflow is finished. The
workflow's state machine is here too: `advance` (a step changed) and
`command` (pause, resume, cancel) return a `Plan` the backend carries out.

A step's input may hold references, anywhere in its JSON:

- `${workflow.input}` or `${workflow.input.key.0}`: the workflow's input.
- `${steps.NAME.output}` or `${steps.NAME.output.key}`: the output of NAME,
  which must be one of the step's dependencies (direct or transitive).

A string that is exactly one reference becomes the referenced JSON value; a
reference inside a longer string is replaced by its text (JSON for non-strings).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from shoal.errors import InvalidCommand, InvalidInput, InvalidWorkflow
from shoal.units import parse_duration

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
TAG_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_REFERENCE = re.compile(r"\$\{([^}]*)\}")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StepSpec(_Model):
    """One step: a registered task, its input and the steps it waits for."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    task: str = Field(min_length=1, max_length=200)
    input: Any = None
    depends_on: list[str] = Field(default_factory=list)
    retries: int = Field(default=0, ge=0, le=100)
    timeout: str | None = None
    priority: int | None = None
    tags: list[str] | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout_parses(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError("timeout must be positive")
        return value

    @property
    def timeout_seconds(self) -> float | None:
        return parse_duration(self.timeout) if self.timeout else None


class WorkflowSpec(_Model):
    """A DAG of steps plus workflow-wide input, priority and tags."""

    steps: list[StepSpec] = Field(min_length=1)
    input: Any = Field(default_factory=dict)
    priority: int = 0
    tags: list[str] = Field(default_factory=list)


def validate(spec: WorkflowSpec) -> None:
    """Raise InvalidWorkflow unless every step name is unique, every dependency
    exists, the graph has no cycle, and every reference names an ancestor."""
    names = [step.name for step in spec.steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidWorkflow(f"duplicate step names: {', '.join(duplicates)}")
    for tag in spec.tags:
        if not re.match(TAG_PATTERN, tag):
            raise InvalidWorkflow(f"workflow: invalid tag {tag!r}")
    known = set(names)
    for step in spec.steps:
        missing = [d for d in step.depends_on if d not in known]
        if missing:
            raise InvalidWorkflow(
                f"step {step.name!r} depends on missing step(s): {', '.join(missing)}")
        for tag in step.tags or []:
            if not re.match(TAG_PATTERN, tag):
                raise InvalidWorkflow(f"step {step.name!r}: invalid tag {tag!r}")
    cycle = find_cycle(spec)
    if cycle:
        raise InvalidWorkflow(f"dependency cycle: {' -> '.join(cycle)}")
    ancestors = _ancestors(spec)
    for step in spec.steps:
        for ref in references(step.input):
            _check_reference(step.name, ref, ancestors[step.name])


def find_cycle(spec: WorkflowSpec) -> list[str]:
    """Return one cycle as a path that starts and ends on the same step, or []."""
    graph = {step.name: step.depends_on for step in spec.steps}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str]:
        if name in visiting:
            return [*visiting[visiting.index(name):], name]
        if name in done:
            return []
        visiting.append(name)
        for dep in graph.get(name, []):
            cycle = visit(dep)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return []

    for name in graph:
        cycle = visit(name)
        if cycle:
            return cycle
    return []


def _ancestors(spec: WorkflowSpec) -> dict[str, set[str]]:
    graph = {step.name: step.depends_on for step in spec.steps}
    result: dict[str, set[str]] = {}

    def of(name: str) -> set[str]:
        if name not in result:
            result[name] = set()
            for dep in graph[name]:
                result[name] |= {dep, *of(dep)}
        return result[name]

    for name in graph:
        of(name)
    return result


def references(value: Any) -> list[str]:
    """Every `${...}` reference inside a JSON value, in order."""
    if isinstance(value, str):
        return [m.group(1).strip() for m in _REFERENCE.finditer(value)]
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def _check_reference(step: str, ref: str, ancestors: set[str]) -> None:
    parts = ref.split(".")
    if parts[:2] == ["workflow", "input"]:
        return
    if len(parts) >= 3 and parts[0] == "steps" and parts[2] == "output":
        if parts[1] not in ancestors:
            raise InvalidWorkflow(
                f"step {step!r} references ${{{ref}}}, but {parts[1]!r} is not among its "
                "dependencies")
        return
    raise InvalidWorkflow(
        f"step {step!r} has an invalid reference ${{{ref}}}: use ${{workflow.input...}} or "
        "${steps.NAME.output...}")


def ready_steps(spec: WorkflowSpec, states: Mapping[str, str]) -> list[str]:
    """Blocked steps whose dependencies have all succeeded, in spec order."""
    return [
        step.name for step in spec.steps
        if states.get(step.name) == "blocked"
        and all(states.get(dep) == "succeeded" for dep in step.depends_on)
    ]


def outcome(states: Mapping[str, str]) -> str | None:
    """`failed` once a step is dead, `succeeded` once all are, else None (still going)."""
    if any(state == "dead" for state in states.values()):
        return "failed"
    if states and all(state == "succeeded" for state in states.values()):
        return "succeeded"
    return None


def resolve_input(template: Any, workflow_input: Any, outputs: Mapping[str, Any]) -> Any:
    """Replace every reference in a step's input template with its value."""
    context = {"workflow": {"input": workflow_input},
               "steps": {name: {"output": out} for name, out in outputs.items()}}
    if isinstance(template, str):
        whole = _REFERENCE.fullmatch(template)
        if whole:
            return _lookup(context, whole.group(1).strip())
        return _REFERENCE.sub(lambda m: _as_text(_lookup(context, m.group(1).strip())), template)
    if isinstance(template, Mapping):
        return {k: resolve_input(v, workflow_input, outputs) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve_input(v, workflow_input, outputs) for v in template]
    return template


def _lookup(context: Any, ref: str) -> Any:
    value = context
    for part in ref.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise InvalidWorkflow(f"reference ${{{ref}}} does not resolve: no {part!r}")
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- the workflow state machine -------------------------------------------------------

FINAL_STATES = frozenset({"cancelled", "succeeded", "failed"})
COMMANDS = ("pause", "resume", "cancel")


class Step(NamedTuple):
    """A step as the state machine sees it: its task's state, output and error."""

    state: str
    output: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to write for a workflow, decided by `advance` or `command`.

    The backend carries it out in one transaction under the workflow row's lock:
    blocked steps in `start` become ready with their resolved input (JSON text);
    with `cancel_pending`, blocked and ready steps become cancelled with that
    error; the workflow's state and message become `state` and `message`;
    `notify_tasks` wakes workers for new ready steps (or a resume),
    `notify_control` tells running handlers of a cancel.
    """

    state: str
    message: str | None
    start: Mapping[str, str] = field(default_factory=dict)
    cancel_pending: str | None = None
    notify_tasks: bool = False
    notify_control: bool = False


def advance(state: str, message: str | None, spec: WorkflowSpec, workflow_input: Any,
            steps: Mapping[str, Step], encode: Callable[[Any], str]) -> Plan:
    """The plan after a step of the workflow changed (finished, died, expired).

    `steps` by name in creation order; `encode` turns a resolved input into JSON
    text and raises InvalidInput when it cannot. A running or paused workflow
    makes ready every blocked step whose dependencies all succeeded (claims skip
    the steps of a paused one); a dead step, or a step whose input does not
    resolve, fails the workflow with a message saying which, and cancels its
    pending steps; once every step succeeded, so has the workflow. A
    cancelling workflow is cancelled once no step runs. Other states stay.
    """
    if state == "cancelling":
        running = any(s.state == "running" for s in steps.values())
        return Plan("cancelling" if running else "cancelled", message)
    if state not in ("running", "paused"):
        return Plan(state, message)
    states = {name: s.state for name, s in steps.items()}
    outputs = {name: s.output for name, s in steps.items() if s.state == "succeeded"}
    templates = {s.name: s.input for s in spec.steps}
    start: dict[str, str] = {}
    failure = None
    for name in ready_steps(spec, states):
        try:
            start[name] = encode(resolve_input(templates[name], workflow_input, outputs))
        except InvalidInput as exc:
            states[name] = "dead"
            failure = failure or f"step {name!r} cannot start: {exc}"
    states.update(dict.fromkeys(start, "ready"))
    result = outcome(states)
    if result == "failed":
        dead = [(name, s.error) for name, s in steps.items() if s.state == "dead"]
        failure = failure or (f"step {dead[0][0]!r} failed: {dead[0][1]}" if dead
                              else "a step failed")
        return Plan("failed", failure, cancel_pending="workflow failed: " + failure)
    if result == "succeeded":
        return Plan("succeeded", None)
    return Plan(state, message, start, notify_tasks=bool(start))


def command(command: str, state: str, steps: Mapping[str, Step], *, actor: str,
            reason: str = "") -> Plan:
    """The plan for `pause`, `resume` or `cancel` from `state`.

    Raises InvalidCommand for an unknown command, and for pausing or resuming
    a workflow that is finished or cancelling. A command the state already
    satisfies (or a cancel of a finished workflow) changes nothing: the plan
    keeps the state. A cancel cancels the pending steps and is complete at once
    when no step runs; otherwise the workflow is cancelling until the running
    handlers, told through a control notification, have stopped.
    """
    if command not in COMMANDS:
        raise InvalidCommand(f"unknown command {command!r}: use pause, resume or cancel")
    settled = state in FINAL_STATES or state == "cancelling"
    if command != "cancel" and settled:
        raise InvalidCommand(f"cannot {command} a workflow that is {state}")
    target = {"pause": "paused", "resume": "running"}.get(command, "cancelling")
    if settled or target == state:
        return Plan(state, None)
    message = f"{command} by {actor}" + (f": {reason}" if reason else "")
    if command == "cancel":
        running = any(s.state == "running" for s in steps.values())
        return Plan("cancelling" if running else "cancelled", message,
                    cancel_pending=f"workflow cancelled by {actor}", notify_control=True)
    return Plan(target, message, notify_tasks=target == "running")
