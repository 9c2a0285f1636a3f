"""Every spec field's default and bounds, through the models (the operator's reading).

The same table (tests/crd_cases.py) goes through the API server with the
generated CRDs in tests/operator/test_crd_table.py: together they show that
the CRD and the models agree, field by field.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from shoal.errors import InvalidInput
from shoal_operator.pools.spec import PoolSpec
from shoal_operator.workflows.spec import WorkflowResourceSpec, parse_spec
from tests.crd_cases import (
    BOUNDS,
    DEFAULTS,
    KUBE_TYPED,
    REQUIRED,
    Bound,
    Default,
    Kind,
    base_spec,
    bounded_paths,
    leaf_paths,
    value_at,
    with_value,
    without,
)

MODELS = {"WorkerPool": PoolSpec, "Workflow": WorkflowResourceSpec}


def read(kind: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    """The operator's reading of a spec, as JSON by the CR's keys; InvalidInput if refused."""
    parsed = PoolSpec.from_body(spec) if kind == "WorkerPool" else parse_spec(spec)
    dumped: dict[str, Any] = parsed.model_dump(mode="json", by_alias=True)
    return dumped


def _id(case: Default | Bound) -> str:
    value = getattr(case, "value", "")
    return f"{case.kind}:{case.path}={str(value)[:20]}"


@pytest.mark.parametrize("case", DEFAULTS, ids=_id)
def test_default(case: Default) -> None:
    if case.value == REQUIRED:
        with pytest.raises(InvalidInput, match=r"Field required"):
            read(case.kind, without(case.kind, case.path))
    else:
        assert value_at(read(case.kind, base_spec(case.kind, case.given)),
                        case.path) == case.value


@pytest.mark.parametrize("case", BOUNDS, ids=_id)
def test_bound(case: Bound) -> None:
    spec = with_value(case.kind, case.path, case.value, case.given)
    if case.accepted:
        read(case.kind, spec)
    else:
        with pytest.raises(InvalidInput):
            read(case.kind, spec)


@pytest.mark.parametrize(("path", "value"), KUBE_TYPED)
def test_kubernetes_typed_fields_are_left_to_the_api_server(path: str, value: Any) -> None:
    assert value_at(read("WorkerPool", with_value("WorkerPool", path, value)), path) == value


def _normal(path: str) -> str:
    return re.sub(r"\.\d+\.", ".0.", path)


@pytest.mark.parametrize("kind", ["WorkerPool", "Workflow"])
def test_every_field_has_its_default_row(kind: Kind) -> None:
    rows = {c.path for c in DEFAULTS if c.kind == kind}
    assert set(leaf_paths(MODELS[kind])) <= rows, set(leaf_paths(MODELS[kind])) - rows


@pytest.mark.parametrize("kind", ["WorkerPool", "Workflow"])
def test_every_bound_has_an_accepted_and_a_refused_row(kind: Kind) -> None:
    rows = [c for c in BOUNDS if c.kind == kind]
    for path in bounded_paths(MODELS[kind]):
        outcomes = {c.accepted for c in rows if _normal(c.path) == path}
        assert outcomes == {True, False}, f"{kind} {path}: rows {outcomes or 'none'}"
