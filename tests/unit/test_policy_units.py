"""Pure retry delays (exponential, capped, equal jitter) and duration parsing."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidInput
from shoal.policy import next_delay, retry_delay
from shoal.units import parse_duration


@pytest.mark.parametrize(("attempt", "nominal"), [(0, 1), (1, 1), (2, 2), (3, 4), (5, 16),
                                                  (10, 60), (50, 60)])
def test_retry_delay_is_exponential_and_capped(attempt: int, nominal: float) -> None:
    assert retry_delay(attempt, base=1, cap=60, rand=0.0) == nominal / 2
    assert retry_delay(attempt, base=1, cap=60, rand=1.0) == nominal


def test_retry_delay_jitter_stays_within_half_and_full() -> None:
    delays = {retry_delay(3, base=0.5, cap=100) for _ in range(200)}
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len(delays) > 1


def test_next_delay_none_means_dead_letter() -> None:
    assert next_delay(1, 3, retryable=True, base=1, cap=10, rand=0.5) == 0.75
    assert next_delay(2, 3, retryable=True, base=1, cap=10, rand=0.5) == 1.5
    assert next_delay(3, 3, retryable=True, base=1, cap=10) is None
    assert next_delay(1, 3, retryable=False, base=1, cap=10) is None
    assert next_delay(1, 1, retryable=True, base=1, cap=10) is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800),
    ("1.5s", 1.5), ("10", 10), ("0", 0), (" 2M ", 120), (3, 3), (0.5, 0.5),
])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 m", "1h 30m", "30x", "s", "-5s", "-1",
                                  "1h-30m", "5mm"])
def test_parse_duration_refuses_with_a_hint(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(text)
