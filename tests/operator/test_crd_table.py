"""Every spec field's default and bounds, through the API server with the generated CRDs.

The same table as tests/unit/test_crd_table.py (the models): each case is
created with `kubectl create --dry-run=server`, which runs the CRD's
defaulting, schema and CEL rules and stores nothing. One request per table.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.access import KubeAccess
from tests.crd_cases import (
    BOUNDS,
    DEFAULTS,
    KUBE_TYPED,
    REQUIRED,
    Kind,
    base_spec,
    value_at,
    with_value,
    without,
)

pytestmark = pytest.mark.kube


def dry_run(kube: KubeAccess, kind: Kind, specs: list[dict[str, Any]]
            ) -> tuple[list[dict[str, Any] | None], str]:
    """Each spec as the API server would store it (None: refused), and what it said."""
    items = [{"apiVersion": "shoal.dev/v1alpha1", "kind": kind,
              "metadata": {"name": f"case-{i}", "namespace": "default"}, "spec": spec}
             for i, spec in enumerate(specs)]
    result = kube.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                          input="\n---\n".join(json.dumps(item) for item in items))
    created: dict[str, dict[str, Any]] = {}
    decoder, text, at = json.JSONDecoder(), result.stdout, 0
    while text[at:].strip():
        obj, end = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
        created[obj["metadata"]["name"]] = obj
        at = end
    return [created.get(f"case-{i}") for i in range(len(specs))], result.stderr


@pytest.mark.parametrize("kind", ["WorkerPool", "Workflow"])
def test_defaults_agree(kube: KubeAccess, crds: None, kind: Kind) -> None:
    cases = [c for c in DEFAULTS if c.kind == kind]
    specs = [without(kind, c.path) if c.value == REQUIRED else base_spec(kind, c.given)
             for c in cases]
    stored, said = dry_run(kube, kind, specs)
    wrong = []
    for case, obj in zip(cases, stored, strict=True):
        if case.value == REQUIRED:
            if obj is not None:
                wrong.append(f"{case.path}: accepted without it")
        elif obj is None:
            wrong.append(f"{case.path}: refused")
        elif value_at(obj["spec"], case.path) != case.value:
            wrong.append(f"{case.path}: {value_at(obj['spec'], case.path)!r}, "
                         f"the table says {case.value!r}")
    assert not wrong, "\n".join(wrong) + "\n" + said


@pytest.mark.parametrize("kind", ["WorkerPool", "Workflow"])
def test_bounds_agree(kube: KubeAccess, crds: None, kind: Kind) -> None:
    cases = [c for c in BOUNDS if c.kind == kind]
    stored, said = dry_run(kube, kind, [with_value(kind, c.path, c.value, c.given)
                                        for c in cases])
    wrong = [f"{c.path}={str(c.value)[:40]}: {'refused' if obj is None else 'accepted'}"
             for c, obj in zip(cases, stored, strict=True) if (obj is not None) != c.accepted]
    assert not wrong, "\n".join(wrong) + "\n" + said


def test_kubernetes_typed_fields_are_checked_at_apply_time(kube: KubeAccess,
                                                           crds: None) -> None:
    stored, said = dry_run(kube, "WorkerPool", [with_value("WorkerPool", path, value)
                                                for path, value in KUBE_TYPED])
    accepted = [f"{path}={value}" for (path, value), obj in zip(KUBE_TYPED, stored, strict=True)
                if obj is not None]
    assert not accepted, accepted
    assert "tolerationSeconds in body must be of type integer" in said, said
    assert 'unknown field "spec.template.volumes[0].configMap.bogus"' in said, said
