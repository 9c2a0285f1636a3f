"""The operator's memory of Workflow CRs, fed by watch events (no I/O)."""

from __future__ import annotations

import uuid

from shoal_operator.workflows.sync import WorkflowRegistry

WID = uuid.UUID(int=1)


def body(uid: str = "u1", status: dict | None = None, labels: dict | None = None) -> dict:
    return {"metadata": {"uid": uid, "namespace": "ns", "name": "wf", "labels": labels or {}},
            "spec": {"poolRef": "demo", "steps": [
                {"name": "a", "task": "t"},
                {"name": "b", "task": "t", "dependsOn": ["a"]},
                {"name": "c", "task": "t", "dependsOn": ["a"]}]},
            "status": status or {}}


def test_first_sight_is_new_and_later_events_update_in_place():
    registry = WorkflowRegistry()
    entry, new = registry.observe(body())
    assert new and entry.pool == "demo" and entry.sinks == ("b", "c")
    assert entry.workflow_id is None
    again, new = registry.observe(body(status={"workflowId": str(WID), "observedGeneration": 3,
                                               "phase": "Running"},
                                       labels={"shoal.dev/phase": "Running"}))
    assert again is entry and not new
    assert entry.workflow_id == WID and registry.by_workflow[WID] == "u1"
    assert entry.generation == 3 and entry.phase_label == "Running"
    assert not entry.final


def test_final_phase_and_forget():
    registry = WorkflowRegistry()
    entry, _ = registry.observe(body(status={"workflowId": str(WID), "phase": "Succeeded"}))
    assert entry.final
    registry.forget("u1")
    assert registry.entries == {} and registry.by_workflow == {}
    registry.forget("u1")  # twice is fine
