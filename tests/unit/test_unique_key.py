"""`unique_key`: how an idempotency scope becomes the key and scope stored (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shoal.client import unique_key
from shoal.errors import InvalidInput

NOW = datetime(2025, 3, 3, 9, 41, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("key", "unique", "stored"), [
    ("k", "forever", {"idempotency_key": "k", "unique": "forever"}),
    (None, "forever", {"idempotency_key": None, "unique": "forever"}),
    ("k", "active", {"idempotency_key": "k", "unique": "active"}),
    ("k", "1h", {"idempotency_key": "k@2025-03-03T09:00:00Z", "unique": "forever"}),
    ("k", "15m", {"idempotency_key": "k@2025-03-03T09:30:00Z", "unique": "forever"}),
    ("k", 86400, {"idempotency_key": "k@2025-03-03T00:00:00Z", "unique": "forever"}),
    ("k", "1s", {"idempotency_key": "k@2025-03-03T09:41:30Z", "unique": "forever"}),
])
def test_scopes(key: str | None, unique: str | float, stored: dict[str, object]) -> None:
    assert unique_key(key, unique, NOW) == stored


@pytest.mark.parametrize(("key", "unique", "error"), [
    (None, "active", "unique='active' needs an idempotency key"),
    (None, "1h", "unique='1h' needs an idempotency key"),
    ("k", "soon", "not 'soon'"),
    ("k", "0s", "not '0s'"),
    ("k", "1500ms", "not '1500ms'"),
    ("k", "Active", "not 'Active'"),
])
def test_bad_scopes_are_refused(key: str | None, unique: str, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        unique_key(key, unique, NOW)
