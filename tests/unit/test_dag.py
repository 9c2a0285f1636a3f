"""Pure DAG decisions: validation, which steps become ready, reference resolution, outcome."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.client import parse_workflow
from shoal.dag import WorkflowSpec, find_cycle, outcome, ready_steps, resolve_input, validate
from shoal.errors import InvalidWorkflow


def spec(steps: list[dict[str, Any]], **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"steps": steps, **extra})


DIAMOND = spec([
    {"name": "a", "task": "t"},
    {"name": "b", "task": "t", "dependsOn": ["a"]},
    {"name": "c", "task": "t", "dependsOn": ["a"]},
    {"name": "d", "task": "t", "dependsOn": ["b", "c"],
     "input": {"x": "${steps.a.output}", "y": "${steps.c.output.v}"}},
])


def test_valid_diamond_passes() -> None:
    validate(DIAMOND)
    assert find_cycle(DIAMOND) == []


def test_cycle_is_named_as_a_closed_path() -> None:
    cyclic = spec([
        {"name": "a", "task": "t", "dependsOn": ["c"]},
        {"name": "b", "task": "t", "dependsOn": ["a"]},
        {"name": "c", "task": "t", "dependsOn": ["b"]},
        {"name": "z", "task": "t"},
    ])
    cycle = find_cycle(cyclic)
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    with pytest.raises(InvalidWorkflow, match="dependency cycle: "):
        validate(cyclic)


def test_self_dependency_is_a_cycle() -> None:
    assert find_cycle(spec([{"name": "a", "task": "t", "dependsOn": ["a"]}])) == ["a", "a"]


def test_missing_dependency_is_named() -> None:
    with pytest.raises(InvalidWorkflow, match=r"step 'b' depends on missing step\(s\): ghost"):
        validate(spec([{"name": "a", "task": "t"},
                       {"name": "b", "task": "t", "dependsOn": ["a", "ghost"]}]))


def test_duplicate_step_names_are_refused() -> None:
    with pytest.raises(InvalidWorkflow, match="duplicate step names: a"):
        validate(spec([{"name": "a", "task": "t"}, {"name": "a", "task": "u"}]))


@pytest.mark.parametrize("tag", ["no spaces", "a,b", "x" * 64])
def test_invalid_tag_is_refused(tag: str) -> None:
    with pytest.raises(InvalidWorkflow, match=r"^invalid workflow spec: steps\.0\.tags\.0: "
                       r"String should match pattern '\^\[A-Za-z0-9\]"):
        parse_workflow({"steps": [{"name": "a", "task": "t", "tags": [tag]}]})


@pytest.mark.parametrize(("ref", "message"), [
    ("${steps.b.output}", "'b' is not among its dependencies"),
    ("${steps.ghost.output}", "'ghost' is not among its dependencies"),
    ("${env.HOME}", "invalid reference"),
    ("${steps.a}", "invalid reference"),
])
def test_references_must_name_an_ancestor(ref: str, message: str) -> None:
    with pytest.raises(InvalidWorkflow, match=message):
        validate(spec([{"name": "a", "task": "t"}, {"name": "b", "task": "t"},
                       {"name": "c", "task": "t", "dependsOn": ["a"], "input": {"v": ref}}]))


def test_transitive_ancestor_may_be_referenced() -> None:
    validate(spec([{"name": "a", "task": "t"},
                   {"name": "b", "task": "t", "dependsOn": ["a"]},
                   {"name": "c", "task": "t", "dependsOn": ["b"],
                    "input": "${steps.a.output}"}]))


def test_ready_steps_wait_for_every_dependency() -> None:
    states = {"a": "succeeded", "b": "succeeded", "c": "running", "d": "blocked"}
    assert ready_steps(DIAMOND, states) == []
    states["c"] = "succeeded"
    assert ready_steps(DIAMOND, states) == ["d"]
    # only blocked steps become ready; a failed dependency keeps the step blocked
    assert ready_steps(DIAMOND, {"a": "succeeded", "b": "blocked", "c": "blocked",
                                 "d": "blocked"}) == ["b", "c"]
    assert ready_steps(DIAMOND, {"a": "dead", "b": "blocked", "c": "blocked",
                                 "d": "blocked"}) == []


def test_resolve_input_whole_values_and_interpolation() -> None:
    template = {
        "whole": "${steps.a.output}",
        "deep": "${steps.a.output.items.1}",
        "text": "n=${steps.a.output.n}, s=${workflow.input.s}",
        "list": ["${workflow.input}", 3, None],
        "plain": "no refs",
    }
    out = {"n": 7, "items": ["x", {"k": True}]}
    assert resolve_input(template, {"s": "hi"}, {"a": out}) == {
        "whole": out,
        "deep": {"k": True},
        "text": 'n=7, s=hi',
        "list": [{"s": "hi"}, 3, None],
        "plain": "no refs",
    }
    assert resolve_input("${ steps.a.output.n }", {}, {"a": out}) == 7


@pytest.mark.parametrize("ref", ["${steps.a.output.missing}", "${steps.a.output.items.9}",
                                 "${steps.b.output}", "${workflow.input.nope}"])
def test_unresolvable_reference_says_what_is_missing(ref: str) -> None:
    with pytest.raises(InvalidWorkflow, match="does not resolve"):
        resolve_input({"v": ref}, {}, {"a": {"items": []}})


@pytest.mark.parametrize(("states", "expected"), [
    ({}, None),
    ({"a": "succeeded", "b": "running"}, None),
    ({"a": "succeeded", "b": "succeeded"}, "succeeded"),
    ({"a": "dead", "b": "blocked"}, "failed"),
    ({"a": "succeeded", "b": "cancelled"}, None),
])
def test_outcome(states: dict[str, str], expected: str | None) -> None:
    assert outcome(states) == expected


def test_yaml_and_custom_resource_parse_to_the_same_dag() -> None:
    text = """
    input: {x: 1}
    steps:
      - {name: a, task: echo, input: "${workflow.input.x}"}
      - {name: b, task: echo, dependsOn: [a], input: "${steps.a.output}"}
    """
    cr = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Workflow",
          "metadata": {"name": "w"},
          "spec": {"poolRef": "p", "input": {"x": 1},
                   "steps": [{"name": "a", "task": "echo", "input": "${workflow.input.x}"},
                             {"name": "b", "task": "echo", "dependsOn": ["a"],
                              "input": "${steps.a.output}"}]}}
    assert parse_workflow(text) == parse_workflow(cr)
    assert parse_workflow(text).steps[1].depends_on == ["a"]


@pytest.mark.parametrize("bad", [
    "steps: [{name: a, task: t, dependsOn: [b]}, {name: b, task: t, dependsOn: [a]}]",
    "steps: []",
    "steps: [{name: A_bad, task: t}]",
    "steps: [{name: a, task: t, timeout: soon}]",
    "steps: [{name: a, task: t, unknownField: 1}]",
    "{not yaml",
])
def test_parse_workflow_refuses_bad_specs(bad: str) -> None:
    with pytest.raises(InvalidWorkflow):
        parse_workflow(bad)
