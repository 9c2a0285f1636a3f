"""Backend WorkflowStatus → CR status: phases, progress, bounds, stable conditions, and the
Warning Event of a failure the backend names a reason for."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from shoal.backend import CommandRecord, StepStatus, WorkflowStatus
from shoal_operator.conditions import make_condition
from shoal_operator.kube import event
from shoal_operator.workflows.spec import WorkflowCRStatus
from shoal_operator.workflows.status import MAX_OUTPUT, cr_status, failure_event, merge_patch

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WID = uuid.UUID(int=7)


def step(name: str, state: str, output=None, error=None, started=None) -> StepStatus:
    return StepStatus(name=name, task="echo", state=state, attempts=1, max_attempts=1,
                      output=output, error=error, started_at=started,
                      finished_at=None)


def backend(state: str, steps: list[StepStatus], **kw) -> WorkflowStatus:
    return WorkflowStatus(id=WID, key="uid", name="ns/wf", namespace="default", state=state,
                          message=kw.pop("message", None), created_at=T0, updated_at=T0,
                          finished_at=kw.pop("finished_at", None), steps=steps, **kw)


def by_type(status):
    return {c["type"]: c for c in status["conditions"]}


def lifecycle(status) -> dict[str, str]:
    """{type: status} of the lifecycle conditions (not Accepted, Paused, AnnotationsValid); the
    status must also be what the CRD's schema keeps (the API server prunes unknown keys)."""
    WorkflowCRStatus.model_validate(status)
    return {c["type"]: c["status"] for c in status["conditions"]
            if c["type"] not in ("Accepted", "Paused", "AnnotationsValid")}


def test_running_progress_and_times():
    s = cr_status(backend("running", [step("a", "succeeded", {"v": 1}, started=T0),
                                      step("b", "running", started=T0 + timedelta(seconds=1)),
                                      step("c", "blocked")]),
                  previous=None, sinks=["c"], generation=2, now=T0)
    assert s["phase"] == "Running"
    assert s["progress"] == "1/3"
    assert s["observedGeneration"] == 2
    assert s["startedAt"] == "2026-01-01T00:00:00Z"
    assert "finishedAt" not in s and "output" not in s
    assert [x["state"] for x in s["steps"]] == ["succeeded", "running", "blocked"]
    conds = by_type(s)
    assert conds["Accepted"]["status"] == "True"
    assert conds["Paused"]["status"] == "False"
    assert lifecycle(s) == {"Ready": "Unknown", "Reconciling": "True", "Stalled": "False",
                            "Complete": "False", "Failed": "False"}
    assert conds["Complete"]["reason"] == "Running"


def test_succeeded_output_of_single_and_many_sinks():
    steps = [step("a", "succeeded", {"v": 1}), step("b", "succeeded", "B")]
    one = cr_status(backend("succeeded", steps, finished_at=T0), previous=None, sinks=["b"])
    assert one["phase"] == "Succeeded"
    assert one["output"] == '"B"'
    assert by_type(one)["Complete"]["reason"] == "Succeeded"
    assert lifecycle(one) == {"Ready": "True", "Reconciling": "False", "Stalled": "False",
                              "Complete": "True", "Failed": "False"}
    many = cr_status(backend("succeeded", steps), previous=None, sinks=["a", "b"])
    assert many["output"] == '{"a":{"v":1},"b":"B"}'


def test_bounded_output_and_errors():
    huge = "x" * 100_000
    s = cr_status(backend("failed", [step("a", "dead", error=huge), step("b", "succeeded", huge)],
                          message=huge), previous=None, sinks=["b"])
    assert len(s["output"]) <= MAX_OUTPUT
    assert s["output"].endswith("more characters)")
    assert len(s["steps"][0]["error"]) <= 256
    assert len(s["message"]) <= 1024
    assert s["phase"] == "Failed"
    assert lifecycle(s) == {"Ready": "False", "Reconciling": "False", "Stalled": "True",
                            "Complete": "False", "Failed": "True"}
    assert by_type(s)["Failed"]["message"] == s["message"]


def test_identical_input_gives_identical_status_and_keeps_transition_times():
    wf = backend("paused", [step("a", "running")], message="pause by kubectl-annotate")
    first = cr_status(wf, previous=None, now=T0)
    later = cr_status(wf, previous=first, now=T0 + timedelta(hours=1))
    assert later == first
    assert merge_patch(first, later) == {}
    assert by_type(first)["Paused"]["message"] == "pause by kubectl-annotate"
    resumed = cr_status(replace(wf, state="running"), previous=first, now=T0 + timedelta(hours=1))
    assert by_type(resumed)["Paused"]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert by_type(resumed)["Accepted"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_commands_are_acknowledged_and_bounded():
    cmds = [CommandRecord(id=i, command="pause" if i % 2 else "resume", actor=f"kubectl-{i}",
                          reason="", request_id=f"uid/x/{i}", applied=True, created_at=T0)
            for i in range(1, 9)]
    s = cr_status(backend("paused", [step("a", "ready")], commands=cmds), previous=None)
    assert len(s["commands"]) == 5
    assert s["commands"][-1] == {"command": "resume", "by": "kubectl-8",
                                 "at": "2026-01-01T00:00:00Z", "applied": True,
                                 "requestId": "uid/x/8"}
    assert s["paused"] is True and s["phase"] == "Paused"


def test_refused_before_submission():
    note = make_condition("Accepted", False, "InvalidSpec", "dependency cycle: a -> b -> a",
                          now=T0)
    s = cr_status(None, previous=None, notes=[note], generation=1)
    assert s["phase"] == "Failed"
    assert s["message"] == "dependency cycle: a -> b -> a"
    assert lifecycle(s) == {"Ready": "False", "Reconciling": "False",
                            "Stalled": "True", "Complete": "False", "Failed": "True"}
    assert by_type(s)["Failed"]["reason"] == "InvalidSpec"
    waiting = make_condition("Accepted", False, "PoolNotFound", "WorkerPool x/p does not exist")
    pending = cr_status(None, previous=None, notes=[waiting])
    assert pending["phase"] == "Pending"
    assert lifecycle(pending) == {"Ready": "Unknown", "Reconciling": "True",
                                  "Stalled": "False", "Complete": "False", "Failed": "False"}
    assert by_type(pending)["Reconciling"]["reason"] == "PoolNotFound"
    # Handler-owned conditions survive a restart: the previous status carries them.
    again = cr_status(None, previous=s)
    assert again["phase"] == "Failed" and again["observedGeneration"] == 1


def test_merge_patch_removes_vanished_keys_but_not_kopf_state():
    assert merge_patch({"a": 1, "b": 2, "kopf": {}}, {"a": 1, "c": 3}) == {"b": None, "c": 3}


UNREADABLE = "UnreadableStoredSpec: spec.steps: Input should be a valid list"


def test_a_reason_the_backend_names_is_the_failed_conditions_reason():
    steps = [step("a", "succeeded"),
             step("b", "cancelled", error=f"workflow failed: {UNREADABLE}")]
    s = cr_status(backend("failed", steps, message=UNREADABLE, finished_at=T0), previous=None,
                  generation=1)
    assert s["phase"] == "Failed" and s["message"] == UNREADABLE
    assert lifecycle(s) == {"Ready": "False", "Reconciling": "False", "Stalled": "True",
                            "Complete": "False", "Failed": "True"}
    failed = by_type(s)["Failed"]
    assert (failed["reason"], failed["message"]) == ("UnreadableStoredSpec", UNREADABLE)
    assert by_type(s)["Stalled"]["reason"] == "UnreadableStoredSpec"
    # a failed step names no reason: the phase is the reason, as before
    plain = cr_status(backend("failed", [step("a", "dead", error="boom")],
                              message="step 'a' failed: boom"), previous=None)
    assert by_type(plain)["Failed"]["reason"] == "Failed"
    # only a failure carries a reason: a paused workflow's message is just a message
    paused = cr_status(backend("paused", [step("a", "ready")], message="Pause: by op"),
                       previous=None)
    assert by_type(paused)["Reconciling"]["reason"] == "Paused"


def test_the_warning_event_is_due_once_when_the_failure_first_shows():
    running = backend("running", [step("a", "running")])
    failed = backend("failed", [step("a", "succeeded")], message=UNREADABLE)
    before = cr_status(running, previous=None, now=T0)
    assert failure_event(running, before) is None
    assert failure_event(failed, before) == ("UnreadableStoredSpec", UNREADABLE)
    assert failure_event(failed, None) == ("UnreadableStoredSpec", UNREADABLE)
    after = cr_status(failed, previous=before, now=T0)
    assert failure_event(failed, after) is None  # written already: not again
    step_failed = backend("failed", [step("a", "dead", error="boom")],
                          message="step 'a' failed: boom")
    assert failure_event(step_failed, before) is None
    assert failure_event(None, before) is None
    long = replace(failed, message=UNREADABLE + "; x" * 1000)
    reason, message = failure_event(long, before) or ("", "")
    assert reason == "UnreadableStoredSpec" and len(message) <= 1024


def test_the_event_names_the_workflow_as_kubectl_describe_shows_it():
    involved = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Workflow", "namespace": "ns",
                "name": "nightly", "uid": "u1"}
    assert event(involved, "Warning", "UnreadableStoredSpec", UNREADABLE, now=T0) == {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": "nightly.", "namespace": "ns"},
        "involvedObject": involved, "type": "Warning", "reason": "UnreadableStoredSpec",
        "message": UNREADABLE, "source": {"component": "shoal-operator"},
        "reportingComponent": "shoal-operator", "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1}
