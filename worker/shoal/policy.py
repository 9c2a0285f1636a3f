"""Pure retry decisions: how long to wait before the next attempt, if any."""

from __future__ import annotations

import random


def retry_delay(attempt: int, *, base: float, cap: float,
                rand: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential from `base`, capped, with jitter.

    Equal jitter: half of the exponential delay is kept, the other half is
    random, so retries spread out yet never come back sooner than half the
    nominal delay.
    """
    nominal = min(cap, base * 2.0 ** max(attempt - 1, 0))
    r = random.random() if rand is None else rand
    return nominal / 2 + nominal / 2 * r


def next_delay(attempt: int, max_attempts: int, *, retryable: bool, base: float,
               cap: float, rand: float | None = None) -> float | None:
    """Delay before retrying a failed attempt, or None when the task is a dead letter."""
    if not retryable or attempt >= max_attempts:
        return None
    return retry_delay(attempt, base=base, cap=cap, rand=rand)
