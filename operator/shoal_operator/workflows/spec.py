"""The Workflow CR's spec: Shoal's DAG (`shoal.dag.WorkflowSpec`) plus the pool it runs on.

`parse_spec` guarantees that what it returns can be submitted: the schema holds,
the DAG has no cycle, no dangling `dependsOn` and no bad reference, and (with
`check_pool_fit`) every step can be claimed by the named pool's workers.
Anything else raises `InvalidWorkflow` with a message that names the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from shoal import dag
from shoal.errors import InvalidWorkflow
from shoal_operator.errors import spec_problems
from shoal_operator.pools.spec import TaskSelector

PLURAL = "workflows"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class WorkflowResourceSpec(dag.WorkflowSpec):
    """`spec` of a Workflow CR: the DAG fields (camelCase) and `poolRef`."""

    pool_ref: str = Field(pattern=DNS_LABEL, max_length=63)

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
        raise InvalidWorkflow(f"invalid Workflow spec: {spec_problems(exc)}") from None
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
