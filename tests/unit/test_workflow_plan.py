"""The workflow state machine as pure decisions: `dag.advance` after a step changed, and
`dag.command` for pause, resume and cancel — every transition, without a database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.dag import Plan, Step, WorkflowSpec, advance, command
from shoal.errors import InvalidCommand, InvalidInput

SPEC = WorkflowSpec.model_validate({"input": {"n": 2}, "steps": [
    {"name": "a", "task": "t", "input": "${workflow.input.n}"},
    {"name": "b", "task": "t", "dependsOn": ["a"], "input": {"x": "${steps.a.output.v}"}},
    {"name": "c", "task": "t", "dependsOn": ["a"]},
    {"name": "d", "task": "t", "dependsOn": ["b", "c"]},
]})
INPUT = {"n": 2}


def steps(**states: str | Step) -> dict[str, Step]:
    return {name: s if isinstance(s, Step) else Step(s) for name, s in states.items()}


def plan(state: str, message: str | None = None, **states: str | Step) -> Plan:
    return advance(state, message, SPEC, INPUT, steps(**states), json.dumps)


A_DONE = Step("succeeded", {"v": 7})


@pytest.mark.parametrize("state", ["running", "paused"])
def test_a_finished_step_starts_the_steps_that_waited_only_for_it(state: str) -> None:
    # paused: the steps become ready, and claims skip them until a resume
    assert plan(state, "resume by op", a=A_DONE, b="blocked", c="blocked", d="blocked") == \
        Plan(state, "resume by op", {"b": '{"x": 7}', "c": "null"}, notify_tasks=True)


def test_a_step_still_waiting_for_another_does_not_start() -> None:
    assert plan("running", None, a=A_DONE, b="succeeded", c="running", d="blocked") == \
        Plan("running", None)


def test_every_step_succeeded_the_workflow_succeeded() -> None:
    done = {n: Step("succeeded") for n in "abcd"}
    assert advance("running", "resume by op", SPEC, INPUT, done, json.dumps) == \
        Plan("succeeded", None)


def test_a_dead_step_fails_the_workflow_and_cancels_what_is_pending() -> None:
    assert plan("running", "resume by op", a=A_DONE, b=Step("dead", None, "boom"),
                c="running", d="blocked") == \
        Plan("failed", "step 'b' failed: boom", cancel_pending="workflow failed: step 'b' "
             "failed: boom")


def test_a_step_whose_input_does_not_resolve_fails_the_workflow() -> None:
    result = plan("running", None, a=Step("succeeded", {"w": 1}), b="blocked", c="blocked",
                  d="blocked")
    assert result.state == "failed" and result.start == {}
    assert result.message == "step 'b' cannot start: reference ${steps.a.output.v} does not " \
                             "resolve: no 'v'"
    assert result.cancel_pending == "workflow failed: " + result.message


def test_an_input_that_cannot_be_stored_fails_the_workflow() -> None:
    def refuse(_value: Any) -> str:
        raise InvalidInput("contains a NUL character (U+0000)")

    result = advance("running", None, SPEC, INPUT, steps(a=A_DONE, b="blocked", c="blocked",
                                                         d="blocked"), refuse)
    assert (result.state, result.message) == (
        "failed", "step 'b' cannot start: contains a NUL character (U+0000)")


@pytest.mark.parametrize(("running", "expected"), [(True, "cancelling"), (False, "cancelled")])
def test_a_cancelling_workflow_is_cancelled_once_nothing_runs(running: bool,
                                                             expected: str) -> None:
    assert plan("cancelling", "cancel by op", a=A_DONE, b="running" if running else "cancelled",
                c="cancelled", d="cancelled") == Plan(expected, "cancel by op")


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_a_finished_workflow_stays_finished(state: str) -> None:
    assert plan(state, "m", a=A_DONE, b="blocked", c="blocked", d="blocked") == Plan(state, "m")


# -- commands ---------------------------------------------------------------------------

RUNNING = steps(a="running", b="blocked", c="blocked", d="blocked")
IDLE = steps(a="ready", b="blocked", c="blocked", d="blocked")


def test_pause_and_resume() -> None:
    assert command("pause", "running", RUNNING, actor="op", reason="upgrade") == \
        Plan("paused", "pause by op: upgrade")
    assert command("resume", "paused", RUNNING, actor="op") == \
        Plan("running", "resume by op", notify_tasks=True)


@pytest.mark.parametrize(("verb", "state"), [("pause", "paused"), ("resume", "running"),
                                             ("cancel", "cancelling"), ("cancel", "cancelled"),
                                             ("cancel", "succeeded"), ("cancel", "failed")])
def test_a_command_the_state_satisfies_changes_nothing(verb: str, state: str) -> None:
    assert command(verb, state, RUNNING, actor="op") == Plan(state, None)


def test_cancel_waits_for_running_handlers_and_tells_them() -> None:
    assert command("cancel", "running", RUNNING, actor="op", reason="wrong input") == \
        Plan("cancelling", "cancel by op: wrong input",
             cancel_pending="workflow cancelled by op", notify_control=True)


@pytest.mark.parametrize("state", ["running", "paused"])
def test_cancel_with_nothing_running_is_complete_at_once(state: str) -> None:
    assert command("cancel", state, IDLE, actor="op") == \
        Plan("cancelled", "cancel by op", cancel_pending="workflow cancelled by op",
             notify_control=True)


@pytest.mark.parametrize("verb", ["pause", "resume"])
@pytest.mark.parametrize("state", ["cancelling", "cancelled", "succeeded", "failed"])
def test_pause_or_resume_of_a_settled_workflow_is_refused(verb: str, state: str) -> None:
    with pytest.raises(InvalidCommand, match=f"cannot {verb} a workflow that is {state}"):
        command(verb, state, RUNNING, actor="op")


def test_an_unknown_command_is_refused() -> None:
    with pytest.raises(InvalidCommand, match="unknown command 'stop'"):
        command("stop", "running", RUNNING, actor="op")
