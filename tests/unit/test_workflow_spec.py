"""The Workflow CR spec: the DAG plus poolRef, refused with a message that names the problem."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidWorkflow
from shoal_operator.pools.spec import TaskSelector
from shoal_operator.workflows.spec import check_pool_fit, parse_spec, sinks


def spec(**extra):
    return {
        "poolRef": "demo",
        "input": {"x": 1},
        "steps": [
            {"name": "a", "task": "echo", "input": {"v": "${workflow.input.x}"}},
            {"name": "b", "task": "echo", "dependsOn": ["a"],
             "input": {"v": "${steps.a.output.v}"}},
            {"name": "c", "task": "noop", "dependsOn": ["a"]},
        ],
        **extra,
    }


def test_parses_and_strips_pool_ref_from_the_dag():
    parsed = parse_spec(spec())
    assert parsed.pool_ref == "demo"
    dag = parsed.dag()
    assert type(dag).__name__ == "WorkflowSpec"
    assert "poolRef" not in dag.model_dump(by_alias=True)
    assert [s.depends_on for s in dag.steps] == [[], ["a"], ["a"]]
    assert sinks(spec()) == ("b", "c")


def test_cycle_is_refused_with_its_path():
    body = spec()
    body["steps"][0]["dependsOn"] = ["b"]
    with pytest.raises(InvalidWorkflow, match=r"dependency cycle: a -> b -> a"):
        parse_spec(body)


def test_dangling_dependency_and_schema_errors_name_the_field():
    body = spec()
    body["steps"][2]["dependsOn"] = ["nope"]
    with pytest.raises(InvalidWorkflow, match="'c' depends on missing step"):
        parse_spec(body)
    with pytest.raises(InvalidWorkflow, match=r"spec.poolRef: Field required"):
        parse_spec({"steps": [{"name": "a", "task": "t"}]})
    with pytest.raises(InvalidWorkflow, match=r"spec.steps.0.retries"):
        parse_spec(spec(steps=[{"name": "a", "task": "t", "retries": -1}]))


def test_pool_fit_tags_and_names():
    parsed = parse_spec(spec(tags=["gpu"]))
    with pytest.raises(InvalidWorkflow, match=r"tags \['gpu'\] that pool 'demo' does not serve"):
        check_pool_fit(parsed, TaskSelector(tags=("cpu",)))
    check_pool_fit(parsed, TaskSelector(tags=("gpu", "cpu")))
    with pytest.raises(InvalidWorkflow, match=r"task 'noop', which pool 'demo' does not run"):
        check_pool_fit(parse_spec(spec()), TaskSelector(names=("echo",)))
