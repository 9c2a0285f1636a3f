"""Small asyncio helpers every layer uses."""

from __future__ import annotations

import asyncio
import random

MAX_BACKOFF = 5.0


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True when it is set.

    Not `asyncio.wait_for(event.wait(), ...)`: on Python 3.11 that swallows a
    cancellation arriving just as the event is set, so a loop using it could
    never be stopped (stop() sets the event and then cancels the loop).
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return bool(done)


class Backoff:
    """Bounded exponential delays with jitter, for retrying database calls."""

    def __init__(self, first: float = 0.05, cap: float = MAX_BACKOFF) -> None:
        self.first, self.cap, self.current = first, cap, first

    def reset(self) -> None:
        self.current = self.first

    def next(self) -> float:
        """The next delay, in seconds (the one after it doubles, up to the cap)."""
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.current * 2, self.cap)
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next())
