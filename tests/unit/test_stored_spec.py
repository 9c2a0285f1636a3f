"""Stored workflow specs are read leniently, input strictly: a key a newer version wrote is
ignored at every level, a spec that still does not fit is `Unreadable` (never an
exception), and `advance` turns that into a failed workflow with reason
UnreadableStoredSpec. No I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shoal.dag import (
    Plan,
    Step,
    Unreadable,
    WorkflowSpec,
    advance,
    failure_reason,
    read_stored,
)
from shoal.validation import problems

STORED: dict[str, Any] = {"input": {"n": 1}, "priority": 3, "tags": ["gpu"], "steps": [
    {"name": "a", "task": "t", "input": "${workflow.input.n}", "retries": 2},
    {"name": "b", "task": "t", "dependsOn": ["a"], "timeout": "5m"},
]}


def newer(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with the keys a newer version might add: at the top, in a step, nested."""
    return {**spec, "concurrencyPolicy": "Forbid", "steps": [
        {**spec["steps"][0], "cache": {"ttl": "1h"}, "when": "${workflow.input.n} > 0"},
        spec["steps"][1]]}


def test_keys_a_newer_version_wrote_are_ignored_at_every_level() -> None:
    read = read_stored(newer(STORED))
    assert read == WorkflowSpec.model_validate(STORED)
    assert isinstance(read, WorkflowSpec)
    assert read.steps[0].retries == 2 and read.steps[1].timeout_seconds == 300
    assert read.steps[1].depends_on == ["a"]
    # the step's input is the user's JSON, not a model: it is kept whole
    stored = newer(STORED)
    stored["steps"][0]["input"] = {"x": 1, "anything": {"deep": True}}
    read = read_stored(stored)
    assert isinstance(read, WorkflowSpec)
    assert read.steps[0].input == {"x": 1, "anything": {"deep": True}}


def test_input_is_still_validated_strictly() -> None:
    with pytest.raises(ValidationError) as refused:
        WorkflowSpec.model_validate(newer(STORED))
    assert problems(refused.value) == ("steps.0.cache: Extra inputs are not permitted; "
                                       "steps.0.when: Extra inputs are not permitted; "
                                       "concurrencyPolicy: Extra inputs are not permitted")


def test_reading_leniently_leaves_the_stored_value_alone() -> None:
    stored = newer(STORED)
    before = json.dumps(stored, sort_keys=True)
    read_stored(stored)
    assert json.dumps(stored, sort_keys=True) == before


@pytest.mark.parametrize(("change", "problem"), [
    ({"steps": "a,b"}, "spec.steps: Input should be a valid list"),
    ({"steps": []}, "spec.steps: List should have at least 1 item after validation, not 0"),
    ({"steps": [{"name": "a", "task": "t", "dependsOn": 1}]},
     "spec.steps.0.dependsOn: Input should be a valid list"),
    ({"steps": [{"name": "a", "task": "t", "retries": "forever"}]},
     "spec.steps.0.retries: Input should be a valid integer, unable to parse string as an "
     "integer"),
    ({"priority": {"level": "high"}}, "spec.priority: Input should be a valid integer"),
])
def test_what_still_does_not_fit_is_unreadable_saying_why(change: dict[str, Any],
                                                          problem: str) -> None:
    assert read_stored({**STORED, **change}) == Unreadable(problem)


def test_not_even_an_object_is_unreadable() -> None:
    assert read_stored("steps: []") == Unreadable(
        "spec: Input should be a valid dictionary or instance of WorkflowSpec")
    assert read_stored(None) == Unreadable(
        "spec: Input should be a valid dictionary or instance of WorkflowSpec")


def test_a_long_list_of_problems_is_cut_to_the_first_three() -> None:
    steps = [{"name": f"s{i}", "task": "t", "dependsOn": i} for i in range(50)]
    unreadable = read_stored({"steps": steps})
    assert isinstance(unreadable, Unreadable)
    assert unreadable.problem == ("spec.steps.0.dependsOn: Input should be a valid list; "
                                  "spec.steps.1.dependsOn: Input should be a valid list; "
                                  "spec.steps.2.dependsOn: Input should be a valid list; "
                                  "and 47 more")


UNREADABLE = Unreadable("spec.steps: Input should be a valid list")
FAILURE = "UnreadableStoredSpec: spec.steps: Input should be a valid list"


@pytest.mark.parametrize("state", ["running", "paused"])
def test_an_unreadable_spec_fails_the_workflow_and_cancels_what_is_pending(state: str) -> None:
    steps = {"a": Step("succeeded", 1), "b": Step("blocked"), "c": Step("running")}
    assert advance(state, "resume by op", UNREADABLE, {}, steps, json.dumps) == \
        Plan("failed", FAILURE, cancel_pending=f"workflow failed: {FAILURE}")
    assert failure_reason(FAILURE) == "UnreadableStoredSpec"


def test_a_cancelling_workflow_needs_no_spec_to_end() -> None:
    assert advance("cancelling", "cancel by op", UNREADABLE, {}, {"a": Step("cancelled")},
                   json.dumps) == Plan("cancelled", "cancel by op")


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_a_finished_workflow_stays_as_it_is(state: str) -> None:
    assert advance(state, "done", UNREADABLE, {}, {"a": Step("succeeded")}, json.dumps) == \
        Plan(state, "done")


@pytest.mark.parametrize(("message", "reason"), [
    (FAILURE, "UnreadableStoredSpec"),
    ("step 'a' failed: RuntimeError: boom", None),
    ("a step failed", None),
    ("cancel by kubectl: Because: reasons", None),
    (None, None),
])
def test_failure_reason_is_the_camel_case_word_a_message_starts_with(
        message: str | None, reason: str | None) -> None:
    assert failure_reason(message) == reason
