"""Small asyncio helpers every layer uses."""

from __future__ import annotations

import asyncio


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
