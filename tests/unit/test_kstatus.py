"""The status the operator writes, read by the kstatus rules (sigs.k8s.io/cli-utils).

kstatus is what Flux, Config Sync and kapply wait on. Each status here comes
from the operator's own pure functions (`cr_status`, `readiness`) and is read
by the real rules (tests/cluster/kstatus.py builds them once, with Go).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.backend import StepStatus, WorkflowStatus
from shoal_operator.conditions import make_condition
from shoal_operator.pools.status import readiness
from shoal_operator.workflows.status import cr_status
from tests.cluster.kstatus import kstatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def workflow(state: str, step_state: str) -> WorkflowStatus:
    step = StepStatus(name="a", task="echo", state=step_state, attempts=1, max_attempts=1,
                      output=None, error=None, started_at=T0, finished_at=None)
    return WorkflowStatus(id=uuid.UUID(int=1), key="uid", name="ns/wf", namespace="default",
                          state=state, message=None, created_at=T0, updated_at=T0,
                          finished_at=None, steps=[step])


def obj(kind: str, status: dict[str, Any], generation: int = 3) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "namespace": "default", "generation": generation},
            "status": status}


WORKFLOWS = [
    ("running", "running", "InProgress"),
    ("paused", "ready", "InProgress"),
    ("cancelling", "running", "InProgress"),
    ("succeeded", "succeeded", "Current"),
    ("failed", "dead", "Failed"),
    ("cancelled", "cancelled", "Failed"),
]


@pytest.mark.parametrize(("state", "step", "expected"), WORKFLOWS)
def test_workflow_phases(state: str, step: str, expected: str) -> None:
    status = cr_status(workflow(state, step), previous=None, generation=3, now=T0)
    [result] = kstatus([obj("Workflow", status)])
    assert result["status"] == expected, (status["phase"], result)


def test_workflow_not_yet_submitted_or_refused() -> None:
    refused = make_condition("Accepted", False, "InvalidSpec", "dependency cycle: a -> a")
    waiting = make_condition("Accepted", False, "PoolNotFound", "WorkerPool x/p does not exist")
    results = kstatus([obj("Workflow", cr_status(None, previous=None, notes=[note],
                                                 generation=3))
                       for note in (refused, waiting)])
    assert [r["status"] for r in results] == ["Failed", "InProgress"]
    assert results[0]["message"] == "dependency cycle: a -> a"


def test_a_status_of_an_older_generation_is_in_progress() -> None:
    status = cr_status(workflow("succeeded", "succeeded"), previous=None, generation=2)
    [result] = kstatus([obj("Workflow", status, generation=3)])
    assert result["status"] == "InProgress"


@pytest.mark.parametrize(("state", "expected"), [
    (True, "Current"), (None, "InProgress"), (False, "Failed")])
def test_pool_readiness(state: bool | None, expected: str) -> None:
    conditions = [*readiness(state, "Because", "the reason in words", generation=3),
                  make_condition("BackendReachable", False, "Unreachable", "", generation=3)]
    [result] = kstatus([obj("WorkerPool", {"observedGeneration": 3,
                                           "conditions": conditions})])
    assert result["status"] == expected
