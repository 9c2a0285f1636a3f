"""An idle worker's link is watched by the kernel, not by statements: through the
black-hole proxy, a worker's session with its listener service running (the
service that used to ping an idle link) sends no byte of its own while healthy and
reads as not silent; cut off, it reads as silent past the stall bound within the
keepalive's idle time and `stall`, with nothing sent into the black hole."""

from __future__ import annotations

import asyncio
import time

from shoal.backend import Backend, LinkTimeouts
from shoal.worker.listener import Listener
from shoal.worker.signals import Signals
from tests.chaos.proxy import Proxy, unacknowledged
from tests.support import eventually

TTL = 8.0  # probe 1 s, keepalive after 1 s idle, stall 2 s


async def test_an_idle_link_is_checked_without_statements(proxy: Proxy, dsn: str) -> None:
    timeouts = LinkTimeouts.for_claim_ttl(TTL)
    worker = Backend.for_worker(proxy.dsn(dsn), schema="shoal", worker_id="idle",
                                handoff_channel="idle", on_notify=lambda _c, _p: None,
                                timeouts=timeouts)
    session = worker.session
    assert session is not None
    signals = Signals()
    signals.registered.set()

    async def catch_up() -> None:
        pass

    listener = asyncio.create_task(Listener(worker, signals, catch_up).run())
    try:
        await eventually(lambda: session.connected, within=10, what="the listener to connect")
        await asyncio.sleep(0.5)  # the connection's start-up bytes are through
        forwarded = proxy.forwarded
        watched_until = time.monotonic() + 3 * timeouts.keepalive_idle + 1
        while time.monotonic() < watched_until:  # keepalives answered: not silent
            assert session.silence(time.monotonic()) < timeouts.stall
            await asyncio.sleep(0.1)
        assert proxy.forwarded == forwarded  # keepalives carry no payload: no statement

        conn = session._conn
        assert conn is not None
        sent: list[int] = []  # bytes unacknowledged when it read as silent

        def silent() -> bool:
            if session.silence(time.monotonic()) < timeouts.stall:
                return False
            sent.append(unacknowledged(conn))  # before the kernel's user timeout ends it
            return True

        proxy.blackhole()
        cut = time.monotonic()
        await eventually(silent, within=timeouts.keepalive_idle + timeouts.stall + 2,
                         interval=0.05, what="the idle link to read as silent")
        assert time.monotonic() - cut <= timeouts.keepalive_idle + timeouts.stall + 0.5
        assert not session.busy  # seen with nothing in flight
        assert sent == [0]  # nothing was sent into the black hole
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        proxy.heal()
        await worker.close()

