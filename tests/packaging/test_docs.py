"""The generated docs are up to date: docs/reference.md with crds/, and the README's
metrics table with the metrics the code defines (hack/gen_docs.py writes both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import load_script

REPO = Path(__file__).resolve().parents[2]


def test_generated_docs_are_current() -> None:
    gen_docs = load_script(REPO / "hack/gen_docs.py")
    stale = [str(path.relative_to(REPO)) for path in gen_docs.stale(gen_docs.generated())]
    assert not stale, f"stale: {', '.join(stale)}; run {gen_docs.REGENERATE}"


def _walk(node: dict[str, Any], path: str) -> Iterator[str]:
    """The path of every field below `node`; items of an array of objects as `path[]`.

    The fields of an embedded Kubernetes type (they have no descriptions in the
    CRD; `kubectl explain pod.spec` has them) are not the reference's.
    """
    properties = node.get("properties") or {}
    if not any("description" in child for child in properties.values()):
        return
    for name, child in properties.items():
        yield f"{path}.{name}"
        yield from _walk(child, f"{path}.{name}")
        yield from _walk(child.get("items") or {}, f"{path}.{name}[]")


def _cel_messages(node: Any) -> Iterator[str]:
    """The message of every CEL rule anywhere in a schema."""
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations") or ():
            yield rule["message"]
        for value in node.values():
            yield from _cel_messages(value)
    elif isinstance(node, list):
        for value in node:
            yield from _cel_messages(value)


def test_reference_covers_every_crd_field() -> None:
    """Every spec and status field of every CRD has a row; every CEL message is quoted."""
    reference = (REPO / "docs/reference.md").read_text()
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        root = yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            for path in _walk(root["properties"][part], part):
                assert f"| `{path}` |" in reference, f"{crd.name}: {path} is not documented"
        for message in _cel_messages(root):
            assert message in reference, f"{crd.name}: CEL message {message!r}"
