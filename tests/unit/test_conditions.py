"""Kubernetes-style conditions: one per type, transition time moves only with status."""

from __future__ import annotations

from datetime import UTC, datetime

from shoal_operator.conditions import set_condition, set_conditions

T0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_add_then_replace_keeps_transition_time_when_status_unchanged() -> None:
    first = set_condition([], "Ready", True, "AllReplicasReady", "2/2", generation=1, now=T0)
    assert first == [{"type": "Ready", "status": "True", "reason": "AllReplicasReady",
                      "message": "2/2", "lastTransitionTime": "2026-01-01T00:00:00Z",
                      "observedGeneration": 1}]
    second = set_condition(first, "Ready", True, "AllReplicasReady", "3/3", generation=2, now=T1)
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (second[0]["message"], second[0]["observedGeneration"]) == ("3/3", 2)
    third = set_condition(second, "Ready", False, "ReplicasNotReady", "1/3", now=T1)
    assert third[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert first[0]["message"] == "2/2"  # inputs are never mutated


def test_other_types_are_kept_in_order() -> None:
    conds = set_conditions(None, [
        {"type": "Ready", "status": "True", "reason": "R"},
        {"type": "BackendReachable", "status": "False", "reason": "Unreachable",
         "message": "cannot reach"}], now=T0)
    conds = set_condition(conds, "Ready", "Unknown", "Starting", now=T1)
    assert [c["type"] for c in conds] == ["Ready", "BackendReachable"]
    assert conds[1]["reason"] == "Unreachable"
    assert conds[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
