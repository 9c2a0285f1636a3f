"""LISTEN/NOTIFY: one dedicated connection that survives database restarts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from shoal.aio import Backoff, wait_event
from shoal.backend.codec import init_connection
from shoal.backend.connections import TRANSIENT_ERRORS, connect

log = logging.getLogger(__name__)

OnNotify = Callable[[str, str], None]
OnConnect = Callable[[], Awaitable[None] | None]


class Subscription:
    """Listens on channels and calls `on_notify(channel, payload)` for each notification.

    `run()` keeps one connection open until cancelled; when it drops, it
    reconnects with bounded exponential backoff and then calls `on_connect`,
    so the caller can catch up on what was sent while nobody listened.
    """

    def __init__(self, dsn: str, channels: Sequence[str], on_notify: OnNotify,
                 on_connect: OnConnect | None = None) -> None:
        self.dsn = dsn
        self.channels = list(channels)
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = Backoff(first=0.1)
        while True:
            try:
                conn = await connect(self.dsn, init_connection, timeout=10)
            except TRANSIENT_ERRORS as exc:
                log.warning("listen: %s; retrying", exc)
                await backoff.wait()
                continue
            backoff.reset()
            try:
                await self._listen(conn)
            finally:
                self.connected.clear()
                if not conn.is_closed():
                    conn.terminate()

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())

        def deliver(_conn: object, _pid: int, channel: str, payload: str) -> None:
            self.on_notify(channel, payload)

        try:
            for channel in self.channels:
                await conn.add_listener(channel, deliver)
        except TRANSIENT_ERRORS as exc:
            log.warning("listen: %s", exc)
            return
        self.connected.set()
        if self.on_connect is not None:
            result = self.on_connect()
            if result is not None:
                await result
        # asyncpg reports a dropped socket through the termination listener;
        # a periodic no-op query notices a half-open connection too.
        while not lost.is_set():
            if not await wait_event(lost, 15):
                try:
                    await conn.execute("SELECT 1", timeout=5)
                except TRANSIENT_ERRORS:
                    return
