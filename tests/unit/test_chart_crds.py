"""The Helm chart ships the same CRDs as crds/ (kubectl apply -f crds/ and helm agree)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chart_crds_match_crds_folder() -> None:
    source = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (REPO / "charts/shoal/crds").glob("*.yaml")}
    assert "workerpools.shoal.dev.yaml" in source
    assert shipped == source
