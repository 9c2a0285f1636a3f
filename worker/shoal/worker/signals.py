"""The events a worker's services wake each other with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Signals:
    """One set per worker; each event says who sets it and who waits for it."""

    # the liveness row exists: claims, heartbeats and maintenance may begin
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    # the worker drains (or fails): no new claims, handoffs or adoptions
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # work may be ready: an enqueue in the namespace, a retry coming due, a reconnect
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # a handler ended or a report settled: the claimer may have room again
    slot_free: asyncio.Event = field(default_factory=asyncio.Event)
    # results wait in the outbox for the reporter
    report_due: asyncio.Event = field(default_factory=asyncio.Event)
    # the heartbeat should beat now (a cancel was announced, the worker drains)
    beat_due: asyncio.Event = field(default_factory=asyncio.Event)
    # a lease was taken or renewed: the fence recomputes its next deadline
    fence_due: asyncio.Event = field(default_factory=asyncio.Event)
    # the maintenance leader resigned: followers stand for election now
    elect_due: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Stop claiming, and wake every loop that must notice."""
        self.stopping.set()
        self.wake.set()
        self.slot_free.set()
        self.beat_due.set()
