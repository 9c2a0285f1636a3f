"""Fixtures of the end-to-end tests that only real containers make meaningful (the
operator's session fixtures come from tests/operator/fixtures.py, a root plugin), and
the partition scenario's table, printed at the end of the test run."""

from __future__ import annotations

import pytest

from tests.cluster.setup import build_images
from tests.e2e.support import PARTITION_HEADER, PARTITION_ROWS


@pytest.fixture(scope="session")
def images() -> list[str]:
    """Shoal's image and the test app image, built from the working tree (cached layers)."""
    return build_images()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if PARTITION_ROWS:
        terminalreporter.section("partition")
        terminalreporter.write_line(PARTITION_HEADER)
        for row in PARTITION_ROWS:
            terminalreporter.write_line(row)
