"""The import rule the README states: `shoal.backend` ← `shoal.worker` ← `shoal_operator` ←
`shoal.cli`; and only the backend talks to asyncpg."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(package_dir: Path) -> dict[str, set[str]]:
    """Every module each file under `package_dir` imports (absolute names)."""
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


# Layers, lowest first; each may import only the ones before it. `shoal.cli`
# (the `shoal` console script) is the top: it hands `shoal operator ...` to
# shoal_operator.main, and nothing imports it.
CLI = "worker/shoal/cli"


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("worker/shoal/backend", ("shoal.worker", "shoal.client", "shoal.cli", "shoal_operator",
                              "kopf", "kubernetes", "kubernetes_asyncio")),
    ("worker/shoal", ("shoal.cli", "shoal_operator", "kopf", "kubernetes",
                      "kubernetes_asyncio")),
    ("operator/shoal_operator", ("shoal.cli",)),
])
def test_lower_layers_never_import_upper_ones(layer: str, forbidden: tuple[str, ...]) -> None:
    offences = {f"{path}: {name}" for path, names in imported_modules(REPO / layer).items()
                for name in names if not path.startswith(CLI)
                and (name in forbidden or any(name.startswith(f + ".") for f in forbidden))}
    assert not offences, sorted(offences)


def test_only_the_backend_imports_asyncpg() -> None:
    """The driver, its errors (`shoal.backend.TRANSIENT_ERRORS`) and its connections stay
    behind `shoal.backend`: nothing above it names an asyncpg class."""
    importers = {path for root in ("worker", "operator")
                 for path, names in imported_modules(REPO / root).items()
                 if any(n == "asyncpg" or n.startswith("asyncpg.") for n in names)}
    outside = sorted(p for p in importers if not p.startswith("worker/shoal/backend/"))
    assert importers and not outside, outside


def test_only_the_cli_imports_the_operator() -> None:
    """The one arrow up the layers that used to exist (worker/shoal/cli.py) is gone for good."""
    importers = {path for path, names in imported_modules(REPO / "worker").items()
                 if any(n == "shoal_operator" or n.startswith("shoal_operator.") for n in names)}
    assert importers == {f"{CLI}/__init__.py"}, sorted(importers)


def test_the_operator_writes_no_sql() -> None:
    """Every statement is in worker/shoal/backend/queries.py; the operator calls the Backend."""
    sql = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|LISTEN|NOTIFY)\b")
    statements = {
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in (REPO / "operator" / "shoal_operator").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and sql.match(node.value)}
    assert not statements, sorted(statements)


def test_the_worker_services_never_import_the_worker() -> None:
    """Each service gets the parts of the worker it uses (the ledger, the backend, the
    signals, a callable or two), never the whole `Worker`: no import circle, and the
    rules over leases (`shoal.worker.ledger`) stay pure, I/O-free and tested alone."""
    importers = {path for path, names in imported_modules(REPO / "worker/shoal/worker").items()
                 if "shoal.worker.runtime" in names}
    assert importers == {"worker/shoal/worker/__init__.py"}, sorted(importers)
    ledger = imported_modules(REPO / "worker/shoal/worker")["worker/shoal/worker/ledger.py"]
    assert not {n for n in ledger if n in ("asyncio", "asyncpg") or n.startswith("shoal.backend.")}
