"""The Workflow CR's models (the source of its CRD): Shoal's DAG plus the pool it runs on.

`parse_spec` guarantees that what it returns can be submitted: the schema holds,
the DAG has no cycle, no dangling `dependsOn` and no bad reference, and (with
`check_pool_fit`) every step can be claimed by the named pool's workers.
Anything else raises `InvalidWorkflow` with a message that names the problem.
`WorkflowCRStatus` is the status the operator writes (`status.cr_status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from shoal import dag
from shoal.errors import InvalidWorkflow
from shoal.validation import Rule, problems
from shoal_operator.conditions import Conditions
from shoal_operator.pools.spec import DNS_LABEL, TaskSelector
from shoal_operator.resource import Column, Resource

Phase = Literal["Pending", "Running", "Paused", "Cancelling", "Cancelled", "Succeeded", "Failed"]


class WorkflowResourceSpec(dag.WorkflowSpec):
    """The DAG to run and the pool that runs it; immutable once submitted."""

    pool_ref: str = Field(pattern=DNS_LABEL, max_length=63, description=(
        "Name of the WorkerPool (same namespace) whose database and workers run the steps."))

    def dag(self) -> dag.WorkflowSpec:
        """The DAG alone, as the backend stores and re-reads it (no `poolRef`)."""
        return dag.WorkflowSpec.model_validate(
            self.model_dump(mode="json", by_alias=True, exclude={"pool_ref"}))


def sinks(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The sink steps of a raw Workflow `spec` (read leniently: it may be invalid)."""
    steps = [s for s in spec.get("steps") or () if isinstance(s, Mapping)]
    needed = {d for s in steps for d in s.get("dependsOn") or ()}
    return tuple(str(s.get("name")) for s in steps if s.get("name") not in needed)


def parse_spec(spec: Mapping[str, Any]) -> WorkflowResourceSpec:
    """Validate a CR's `spec` as a runnable DAG; raise InvalidWorkflow naming the problem."""
    try:
        parsed = WorkflowResourceSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidWorkflow(f"invalid Workflow spec: {problems(exc, 'spec')}") from None
    dag.validate(parsed)
    return parsed


def check_pool_fit(spec: WorkflowResourceSpec, pool: TaskSelector) -> None:
    """Raise InvalidWorkflow when a step could never be claimed by the pool's workers.

    A worker claims a task whose tags are a subset of its own and, when the
    pool lists task names, whose name is among them.
    """
    for step in spec.steps:
        tags = set(spec.tags if step.tags is None else step.tags)
        extra = sorted(tags - set(pool.tags))
        if extra:
            raise InvalidWorkflow(
                f"step {step.name!r} has tags {extra} that pool {spec.pool_ref!r} does not "
                f"serve (pool tags: {sorted(pool.tags)})")
        if pool.names and step.task not in pool.names:
            raise InvalidWorkflow(
                f"step {step.name!r} runs task {step.task!r}, which pool {spec.pool_ref!r} "
                f"does not run (pool tasks: {sorted(pool.names)})")


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StepStatus(_Status):
    """One step as the backend sees it."""

    name: str = Field(description="The step's name.")
    task: str = Field(description="The step's task.")
    state: str = Field(description="blocked, ready, running, succeeded, dead or cancelled.")
    attempts: int = Field(description="Attempts started so far.")
    max_attempts: int = Field(description="retries + 1.")
    started_at: datetime | None = Field(None, description="When the last attempt started.")
    finished_at: datetime | None = Field(None, description="When the step finished.")
    error: str | None = Field(None, description="The last error (cut at 256 characters).")


class CommandStatus(_Status):
    """One command recorded for the workflow."""

    command: str = Field(description="pause, resume or cancel.")
    by: str = Field(description=(
        "Who asked: the field manager that set the annotation (e.g. kubectl-annotate), or "
        "the CLI's --actor."))
    at: datetime | None = Field(None, description="When it was recorded.")
    applied: bool = Field(description="False when it changed nothing (already in effect).")
    request_id: str | None = Field(None, description="Deduplicates re-sent commands.")


class WorkflowCRStatus(_Status):
    """Written by the operator; mirrors the backend instance."""

    observed_generation: int | None = Field(None, json_schema_extra={"format": "int64"},
                                            description="The spec generation the status "
                                            "reflects.")
    workflow_id: str | None = Field(None, description=(
        "The backend instance's id (for `shoal status ID`)."))
    phase: Phase | None = Field(None, description=(
        "Pending until submitted (or while the pool or database is unusable); Failed also "
        "when the spec was refused."))
    progress: str | None = Field(None, description="Succeeded steps / all steps.")
    succeeded_steps: int | None = Field(None, description="Steps that succeeded.")
    total_steps: int | None = Field(None, description="Steps in the workflow.")
    paused: bool | None = Field(None, description="True while the workflow is paused.")
    message: str | None = Field(None, description=(
        "Why the workflow failed, was refused or is waiting (cut at 1 KiB)."))
    output: str | None = Field(None, description=(
        "JSON of the final steps' outputs (cut at 4 KiB)."))
    submitted_at: datetime | None = Field(None, description=(
        "When the backend instance was created."))
    started_at: datetime | None = Field(None, description="When the first step started.")
    finished_at: datetime | None = Field(None, description="When the workflow finished.")
    steps: list[StepStatus] = Field(default_factory=list, description=StepStatus.__doc__)
    commands: list[CommandStatus] = Field(default_factory=list, description=(
        "The last commands recorded for this workflow, with who asked and when."))
    conditions: Conditions = Field(
        default_factory=list, description=(
            "Ready, Complete, Failed, Reconciling, Stalled (kstatus), Accepted, Paused and "
            "AnnotationsValid."))


RESOURCE = Resource(
    kind="Workflow", plural="workflows", short_names=("shwf",),
    about=("""Workflow: a DAG of steps run by a WorkerPool's workers, steered with annotations.

  kubectl annotate workflows.shoal.dev nightly-etl pause=true   # running steps finish
  kubectl annotate workflows.shoal.dev nightly-etl pause=false  # (or remove it) resume
  kubectl annotate workflows.shoal.dev nightly-etl cancel=true  # irreversible
  kubectl wait --for=condition=Complete workflows.shoal.dev/nightly-etl  # success only

The shoal.dev/pause and shoal.dev/cancel keys mean the same. `workflows.shoal.dev`
(or the short name `shwf`) stays unambiguous on a cluster that also has Argo
Workflows. The operator judges what the schema cannot (cycles, missing dependencies,
a pool that cannot serve a step) and reports it as condition Accepted=False plus a
Warning Event."""),
    spec=WorkflowResourceSpec, status=WorkflowCRStatus,
    columns=(
        Column("Phase", ".status.phase"),
        Column("Progress", ".status.progress", "succeeded steps / all steps"),
        Column("Paused", ".status.paused"),
        Column("Pool", ".spec.poolRef", wide=True),
        Column("Message", ".status.message", wide=True),
        Column("Age", ".metadata.creationTimestamp"),
    ),
    rules=(Rule("!has(oldSelf.status) || !has(oldSelf.status.workflowId) "
                "|| self.spec == oldSelf.spec",
                "spec is immutable once the workflow has started: create a new Workflow",
                reason="FieldValueForbidden",
                enforced_by="the operator ignores a changed spec (Warning Event SpecIgnored)"),),
)
PLURAL = RESOURCE.plural
