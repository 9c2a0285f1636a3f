"""Fixtures of the end-to-end tests that only real containers make meaningful (the
operator's session fixtures come from tests/operator/fixtures.py, a root plugin)."""

from __future__ import annotations

import pytest

from tests.cluster.setup import build_images


@pytest.fixture(scope="session")
def images() -> list[str]:
    """Shoal's image and the test app image, built from the working tree (cached layers)."""
    return build_images()
