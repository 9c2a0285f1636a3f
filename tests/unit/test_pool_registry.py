"""The pool registry: a spec parsed once per generation; a Deployment's newest count wins."""

from __future__ import annotations

from typing import Any

import pytest

from shoal_operator.errors import InvalidPoolSpec
from shoal_operator.pools.registry import PoolRegistry

SPEC = {"app": "tasks.py:app", "template": {"image": "shoal:1"},
        "database": {"secretRef": {"name": "pg"}}}


def pool(generation: int, spec: dict[str, Any], uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "p", "uid": uid, "generation": generation},
            "spec": spec}


def test_a_spec_is_parsed_once_per_generation() -> None:
    registry = PoolRegistry()
    first = registry.spec(pool(1, SPEC))
    assert registry.spec(pool(1, SPEC)) is first
    changed = registry.spec(pool(2, SPEC | {"concurrency": 7}))
    assert changed is not first and changed.concurrency == 7
    assert registry.spec(pool(1, SPEC, uid="u2")) is not changed  # a new pool of that name
    for _ in range(2):  # an invalid spec says so every time
        with pytest.raises(InvalidPoolSpec, match="invalid WorkerPool spec"):
            registry.spec(pool(3, {}))


def test_an_older_deployment_event_never_overrides_a_newer_count() -> None:
    registry = PoolRegistry()
    assert registry.replicas("ns", "p") is None

    def deployment(generation: int, replicas: int, uid: str = "d1") -> dict[str, Any]:
        return {"metadata": {"uid": uid, "generation": generation},
                "spec": {"replicas": replicas}}

    registry.observe_deployment("ns", "p", deployment(3, 4))
    registry.observe_deployment("ns", "p", deployment(2, 1))  # a late watch event
    assert registry.replicas("ns", "p") == 4
    registry.observe_deployment("ns", "p", deployment(1, 2, uid="d2"))  # re-created
    assert registry.replicas("ns", "p") == 2
    registry.forget_deployment("ns", "p")
    assert registry.replicas("ns", "p") is None
