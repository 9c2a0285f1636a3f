"""The chaos suite's own Postgres server (scenarios restart and stop it), a black-hole
proxy in front of the tests' Postgres, and the suite's table, printed at the end of
the test run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from tests.chaos.harness import HEADER, RESULTS
from tests.chaos.proxy import Proxy
from tests.cluster.postgres import PostgresServer
from tests.support import log, spawn

__all__ = ["chaos_dsn", "log", "proxy", "server", "spawn"]

# 100 workers hold one connection each; the tests' own and a margin on top.
MAX_CONNECTIONS = 130


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer(max_connections=MAX_CONNECTIONS) as pg:
        yield pg


@pytest.fixture
def chaos_dsn(server: PostgresServer) -> str:
    return server.create_database(f"chaos_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def proxy(dsn: str) -> AsyncIterator[Proxy]:
    """A black-hole proxy (`tests.chaos.proxy`) in front of the tests' Postgres."""
    url = urlsplit(dsn)
    assert url.hostname is not None
    async with Proxy(url.hostname, url.port or 5432) as started:
        yield started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.section("chaos")
        terminalreporter.write_line(HEADER)
        for report in RESULTS:
            terminalreporter.write_line(f"{report.row()}  {report.notes}")
