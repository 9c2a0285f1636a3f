"""The CRDs are generated from the models (hack/gen_crds.py): the committed files in
crds/ and charts/shoal/crds/ are exactly what the models give, so a hand edit of
either fails here, and every rule the CRDs carry is checked by the models too."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.validation import Rule
from tests.crd_cases import leaf_paths
from tests.support import load_script

REPO = Path(__file__).resolve().parents[2]


GEN = load_script(REPO / "hack/gen_crds.py")


def test_committed_crds_are_the_generated_ones() -> None:
    texts = GEN.generated()
    assert {p.relative_to(REPO).as_posix() for p in texts} == {
        f"{folder}/{name}.shoal.dev.yaml" for folder in ("crds", "charts/shoal/crds")
        for name in ("workerpools", "workflows")}
    stale = [str(path.relative_to(REPO)) for path in GEN.GEN_DOCS.stale(texts)]
    assert not stale, f"stale: {', '.join(stale)}; run {GEN.REGENERATE} (make crds)"


@pytest.mark.parametrize("folder", ["crds", "charts/shoal/crds"])
def test_a_hand_edit_of_either_copy_is_caught(tmp_path: Path, folder: str) -> None:
    """The same check on a copy of the repository's CRDs, one of them edited by hand."""
    texts = {tmp_path / path.relative_to(REPO): text for path, text in GEN.generated().items()}
    for path in texts:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path.relative_to(tmp_path), path)
    assert GEN.GEN_DOCS.stale(texts) == []
    edited = tmp_path / folder / "workerpools.shoal.dev.yaml"
    edited.write_text(edited.read_text().replace("default: 4\n", "default: 8\n", 1))
    assert GEN.GEN_DOCS.stale(texts) == [edited]


def test_both_copies_are_the_same() -> None:
    source = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (REPO / "charts/shoal/crds").glob("*.yaml")}
    assert "workerpools.shoal.dev.yaml" in source
    assert shipped == source


def _rules(node: Any) -> list[dict[str, str]]:
    if isinstance(node, dict):
        return [*node.get("x-kubernetes-validations", ()),
                *(r for v in node.values() for r in _rules(v))]
    if isinstance(node, list):
        return [r for v in node for r in _rules(v)]
    return []


def test_every_rule_is_checked_by_the_models_or_says_where() -> None:
    """A CEL rule without its Python check must name what checks it instead."""
    rules: list[Rule] = []
    for resource in GEN.resources():
        rules += resource.rules
        for model in GEN.models(resource.spec):
            rules += getattr(model, "cel_rules", ())
            rules += [m for m in GEN.field_markers(model) if isinstance(m, Rule)]
    assert len(rules) >= 7
    unchecked = [r for r in rules if r.check is None and not r.enforced_by]
    assert not unchecked, unchecked


def test_the_schema_has_every_field_of_the_models() -> None:
    for resource in GEN.resources():
        crd = yaml.safe_load((REPO / "crds" / f"{resource.name}.yaml").read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for path in leaf_paths(resource.spec):
            node = spec
            for part in path.split("."):
                node = node["items"] if part == "0" else node["properties"][part]
            assert node.get("description"), path
        assert len(_rules(crd)) >= 3


def test_embedded_kubernetes_types_are_structural() -> None:
    """What a CRD refuses in an embedded type: $ref, allOf, defaults, patch strategies."""
    text = (REPO / "crds/workerpools.shoal.dev.yaml").read_text()
    for forbidden in ("$ref", "allOf", "x-kubernetes-patch", "oneOf"):
        assert forbidden not in text, forbidden
    crd = yaml.safe_load(text)
    template = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["template"]["properties"]
    toleration = template["tolerations"]["items"]["properties"]
    assert toleration["tolerationSeconds"] == {"type": "integer", "format": "int64"}
    assert template["env"]["x-kubernetes-list-map-keys"] == ["name"]
    assert template["resources"]["properties"]["limits"]["additionalProperties"][
        "x-kubernetes-int-or-string"] is True
