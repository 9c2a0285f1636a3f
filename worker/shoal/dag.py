"""Workflow DAGs: the spec users write, and the pure decisions over it.

The same model is the `Workflow` custom resource's spec (camelCase keys such
as `dependsOn`) and the Python API's argument. Nothing here does I/O:
`validate` refuses a DAG that cannot run, `ready_steps` says which blocked
steps may start, `resolve_input` fills `${...}` references from the outputs
of finished steps, and `outcome` says when a workflow is finished. The
workflow's state machine is here too: `advance` (a step changed) and
`command` (pause, resume, cancel) return a `Plan` the backend carries out.

Input is validated strictly (an unknown key is refused), but a spec the
backend stored is read with `read_stored`, which ignores keys this version
does not know (a newer version may have written them) and returns
`Unreadable` for a spec it still cannot read; `advance` then fails that
workflow with reason `UnreadableStoredSpec`.

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
from functools import cache
from typing import Annotated, Any, Final, NamedTuple

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel

from shoal.errors import InvalidCommand, InvalidInput, InvalidWorkflow
from shoal.units import parse_duration
from shoal.validation import Checked, Duration, Rule, problems

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
TAG_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # at most 63 characters
TASK_NAME_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.:]{0,199}$"
MAX_STEPS = 200
INT32 = {"ge": -(2**31), "le": 2**31 - 1}
_REFERENCE = re.compile(r"\$\{([^}]*)\}")

# A tag, as tasks, workers and pools carry them.
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
StepName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
Priority = Annotated[int, Field(**INT32, json_schema_extra={"format": "int32"})]


# The validation context under which a stored spec is read (see `_Model`).
STORED: Final = {"stored": True}


class _Model(Checked):
    """Refuses unknown keys in input; validated with context `STORED`, ignores them instead.

    The context reaches every nested model, so a stored spec's steps are read
    as leniently as its top level; the keys this version knows are checked as
    strictly either way.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _ignore_unknown_keys_when_stored(cls, data: Any, info: ValidationInfo) -> Any:
        if not (info.context or {}).get("stored") or not isinstance(data, Mapping):
            return data
        known = _known_keys(cls)
        return {key: value for key, value in data.items() if key in known}


@cache
def _known_keys(model: type[_Model]) -> frozenset[str]:
    """The keys `model` reads: its fields' names and their camelCase aliases."""
    return frozenset(key for name, info in model.model_fields.items()
                     for key in (name, info.alias) if key)


class StepSpec(_Model):
    """One step: a registered task, its input and the steps it waits for."""

    name: StepName = Field(
        description="Unique in the workflow; what dependsOn and ${steps.NAME...} refer to.")
    task: str = Field(pattern=TASK_NAME_PATTERN,
                      description="A task name registered in the pool's app.")
    input: Any = Field(None, description="The task's input; may reference "
                       "${steps.NAME.output.KEY} of a dependency or ${workflow.input.KEY}.")
    depends_on: list[StepName] = Field(
        default_factory=list, max_length=MAX_STEPS,
        description="Names of the steps that must succeed before this one starts.")
    retries: int = Field(0, ge=0, le=100, description=(
        "Retries after a failed attempt, with exponential backoff; then the step is a dead "
        "letter and the workflow fails."))
    timeout: Annotated[str, Duration(gt=0)] | None = Field(
        None, description="Per attempt, e.g. 30s, 5m, 1h30m (unset: no timeout).")
    priority: Priority | None = Field(None, description="This step's priority (unset: "
                                      "spec.priority).")
    tags: list[Tag] | None = Field(None, max_length=32,
                                   description="This step's tags (unset: spec.tags).")

    @property
    def timeout_seconds(self) -> float | None:
        return parse_duration(self.timeout) if self.timeout else None


class WorkflowSpec(_Model):
    """A DAG of steps plus workflow-wide input, priority and tags."""

    steps: Annotated[list[StepSpec], Rule(
        "self.all(s, self.exists_one(t, t.name == s.name))", "step names must be unique",
        enforced_by="shoal.dag.validate")] = Field(
        min_length=1, max_length=MAX_STEPS, description=(
            "The steps. A step starts when every step in its dependsOn has succeeded; cycles "
            "and missing dependencies are refused."))
    input: Any = Field(default_factory=dict, description=(
        "Workflow input, referenced in step inputs as ${workflow.input.KEY}."))
    priority: Priority = Field(0, description=(
        "Default priority of every step (higher runs first; a waiting task gains one point "
        "per aging interval, so low priority never starves)."))
    tags: list[Tag] = Field(default_factory=list, max_length=32, description=(
        "Default tags of every step; a worker claims a step only if it has all its tags."))


UNREADABLE_STORED_SPEC: Final = "UnreadableStoredSpec"
_REASON = re.compile(r"([A-Z][A-Za-z0-9]*): ")


class Unreadable(NamedTuple):
    """A stored spec this version cannot read, and why (one line)."""

    problem: str


def read_stored(data: Any) -> WorkflowSpec | Unreadable:
    """A spec as the backend stored it, possibly by a newer version.

    Keys this version does not know are ignored at every level (the stored
    row keeps them); the rest is checked as on input, except the DAG rules of
    `validate`, which held when the spec was stored. Unreadable, saying what
    is wrong (the first few problems), when it does not fit this version's model.
    """
    try:
        return WorkflowSpec.model_validate(data, context=STORED)
    except ValidationError as exc:
        return Unreadable(problems(exc, "spec", limit=3))


def failure_reason(message: str | None) -> str | None:
    """The reason a failed workflow's message starts with, if it names one.

    A failure that programs may act on (e.g. `UnreadableStoredSpec`) starts
    its message with that CamelCase reason and a colon; a failed step's
    message (`step 'a' failed: ...`) names none.
    """
    found = _REASON.match(message or "")
    return found.group(1) if found else None


def validate(spec: WorkflowSpec) -> None:
    """Raise InvalidWorkflow unless every step name is unique, every dependency
    exists, the graph has no cycle, and every reference names an ancestor."""
    names = [step.name for step in spec.steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidWorkflow(f"duplicate step names: {', '.join(duplicates)}")
    known = set(names)
    for step in spec.steps:
        missing = [d for d in step.depends_on if d not in known]
        if missing:
            raise InvalidWorkflow(
                f"step {step.name!r} depends on missing step(s): {', '.join(missing)}")
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


def advance(state: str, message: str | None, spec: WorkflowSpec | Unreadable,
            workflow_input: Any, steps: Mapping[str, Step],
            encode: Callable[[Any], str]) -> Plan:
    """The plan after a step of the workflow changed (finished, died, expired).

    `spec` as `read_stored` returns it; `steps` by name in creation order;
    `encode` turns a resolved input into JSON text and raises InvalidInput
    when it cannot. A running or paused workflow makes ready every blocked
    step whose dependencies all succeeded (claims skip the steps of a paused
    one); a dead step, a step whose input does not resolve, or an unreadable
    spec (`UnreadableStoredSpec: ...`) fails the workflow with a message
    saying which, and cancels its pending steps; once every step succeeded,
    so has the workflow. A cancelling workflow is cancelled once no step
    runs. Other states stay.
    """
    if state == "cancelling":
        running = any(s.state == "running" for s in steps.values())
        return Plan("cancelling" if running else "cancelled", message)
    if state not in ("running", "paused"):
        return Plan(state, message)
    if isinstance(spec, Unreadable):
        return _fail(f"{UNREADABLE_STORED_SPEC}: {spec.problem}")
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
        return _fail(failure or (f"step {dead[0][0]!r} failed: {dead[0][1]}" if dead
                                 else "a step failed"))
    if result == "succeeded":
        return Plan("succeeded", None)
    return Plan(state, message, start, notify_tasks=bool(start))


def _fail(failure: str) -> Plan:
    """The workflow fails with `failure` as its message; its pending steps are cancelled."""
    return Plan("failed", failure, cancel_pending="workflow failed: " + failure)


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
