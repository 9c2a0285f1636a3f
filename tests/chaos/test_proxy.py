"""The black-hole proxy against a real Postgres: it forwards, its black hole neither
answers nor closes (for the peers' kernels too), each proxy is cut on its own, and a
heal resumes the old connections as TCP would after a real partition."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.chaos.proxy import Proxy, client_socket, unacknowledged
from tests.cluster.postgres import free_port
from tests.support import eventually

SILENCE = 1.0  # how long a test watches a black hole for a sign of life

Connect = Callable[..., Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """asyncpg.connect, with every connection it made dropped at teardown."""
    opened: list[asyncpg.Connection] = []

    async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
        opened.append(await asyncpg.connect(dsn, **options))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.terminate()


async def alive(direct: asyncpg.Connection, pid: int) -> bool:
    """Whether the server still runs the session of backend `pid`."""
    return bool(await direct.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid))


async def gone(direct: asyncpg.Connection, pid: int) -> bool:
    return not await alive(direct, pid)


async def test_dsn_points_through_the_proxy(proxy: Proxy, dsn: str) -> None:
    upstream = f"{proxy.upstream_host}:{proxy.upstream_port}"
    assert (proxy.dsn(f"postgresql://me:secret@{upstream}/db?sslmode=disable")
            == f"postgresql://me:secret@127.0.0.1:{proxy.port}/db?sslmode=disable")
    assert proxy.dsn(dsn).endswith(f"@127.0.0.1:{proxy.port}/{dsn.rpartition('/')[2]}")
    with pytest.raises(ValueError, match="not on this proxy's upstream"):
        proxy.dsn(f"postgresql://me@{proxy.upstream_host}:{proxy.upstream_port + 1}/db")


async def test_forwards_and_counts(proxy: Proxy, dsn: str, connect: Connect) -> None:
    conn = await connect(proxy.dsn(dsn))
    before = proxy.forwarded
    assert await conn.fetchval("SELECT 1") == 1
    assert proxy.connections == 1
    assert proxy.forwarded > before


async def test_a_black_hole_neither_answers_nor_closes_and_a_heal_resumes(
        proxy: Proxy, dsn: str, connect: Connect) -> None:
    conn = await connect(proxy.dsn(dsn))
    direct = await connect(dsn)
    proxy.blackhole()
    query = asyncio.create_task(conn.fetchval("SELECT 1"))
    done, _ = await asyncio.wait({query}, timeout=SILENCE)
    assert not done
    assert not conn.is_closed()
    assert await alive(direct, conn.get_server_pid())  # no end of file reached Postgres
    # Not even acknowledged: the query waits in the client's send queue, retransmitted.
    assert unacknowledged(conn) > 0
    proxy.heal()
    assert await asyncio.wait_for(query, 10) == 1
    assert unacknowledged(conn) == 0


async def test_a_black_hole_holds_what_reached_the_proxy_just_before(
        proxy: Proxy, dsn: str, connect: Connect) -> None:
    conn = await connect(proxy.dsn(dsn))
    direct = await connect(dsn)
    pid = conn.get_server_pid()
    client_socket(conn).shutdown(socket.SHUT_WR)  # a FIN, in the proxy's kernel...
    proxy.blackhole()  # ...but not yet read: the proxy runs in this loop, busy here
    await asyncio.sleep(SILENCE)  # time to pass the end of file on, were it to
    assert await alive(direct, pid)
    proxy.heal()
    await eventually(lambda: gone(direct, pid), within=10, what="the end of file to cross")


async def test_a_black_hole_lets_no_new_connection_through(proxy: Proxy, dsn: str,
                                                           connect: Connect) -> None:
    proxy.blackhole()
    with pytest.raises(TimeoutError):  # not even TCP's handshake: the SYN is dropped
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), SILENCE)
    with pytest.raises(TimeoutError):
        await connect(proxy.dsn(dsn), timeout=SILENCE)
    assert proxy.connections == 0
    proxy.heal()
    conn = await connect(proxy.dsn(dsn), timeout=5)
    assert await conn.fetchval("SELECT 1") == 1


async def test_both_kernels_time_the_black_hole_out(proxy: Proxy, dsn: str,
                                                    connect: Connect) -> None:
    """TCP_USER_TIMEOUT (unacknowledged data) on the client and keepalives on the
    server end a connection across the black hole, as across a real partition: a
    proxy whose kernel acknowledged and answered probes would keep it up forever."""
    conn = await connect(proxy.dsn(dsn), server_settings={
        "tcp_keepalives_idle": "1", "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": "1"})
    client_socket(conn).setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000)
    pid = conn.get_server_pid()
    direct = await connect(dsn)
    proxy.blackhole()
    query = asyncio.create_task(conn.fetchval("SELECT 1"))
    await eventually(conn.is_closed, within=10, what="the client's kernel to give up")
    with pytest.raises(asyncpg.ConnectionDoesNotExistError) as ended:
        await query
    assert isinstance(ended.value.__cause__, OSError)
    assert ended.value.__cause__.errno == errno.ETIMEDOUT
    await eventually(lambda: gone(direct, pid), within=10, what="the server's kernel to give up")


async def test_after_a_heal_a_session_outlives_a_client_that_reset(
        proxy: Proxy, dsn: str, connect: Connect) -> None:
    closed = await connect(proxy.dsn(dsn))
    reset = await connect(proxy.dsn(dsn))
    direct = await connect(dsn)
    closed_pid, reset_pid = closed.get_server_pid(), reset.get_server_pid()
    reset_socket = client_socket(reset)
    # Its delayed ACK sent now: else the proxy's kernel, its last bytes unacknowledged,
    # would retransmit them after the heal, and the RST in reply would end the session.
    reset_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    proxy.blackhole()
    closing = asyncio.create_task(closed.close())  # its Terminate is retransmitted...
    reset_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.terminate()  # ...its RST is sent once, into the black hole
    done, _ = await asyncio.wait({closing}, timeout=SILENCE)
    assert not done  # asyncpg waits for the server to end the session
    proxy.heal()
    await asyncio.wait_for(closing, 10)
    assert await gone(direct, closed_pid)
    assert await alive(direct, reset_pid)  # half-open: nothing will ever reach it
    await proxy.close()
    await eventually(lambda: gone(direct, reset_pid), within=10,
                     what="close() to end the session")


async def test_each_proxy_is_cut_on_its_own(proxy: Proxy, dsn: str, connect: Connect) -> None:
    async with Proxy(proxy.upstream_host, proxy.upstream_port) as other:
        cut = await connect(proxy.dsn(dsn))
        kept = await connect(other.dsn(dsn))
        proxy.blackhole()
        query = asyncio.create_task(cut.fetchval("SELECT 1"))
        assert await asyncio.wait_for(kept.fetchval("SELECT 2"), SILENCE) == 2
        done, _ = await asyncio.wait({query}, timeout=SILENCE)
        assert not done
        proxy.heal()
        assert await asyncio.wait_for(query, 10) == 1


async def test_passes_ends_and_refusals_on(proxy: Proxy, dsn: str, connect: Connect) -> None:
    conn = await connect(proxy.dsn(dsn))
    direct = await connect(dsn)
    assert await direct.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
    await eventually(conn.is_closed, within=10, what="the client to see the server's end")
    async with Proxy("127.0.0.1", free_port()) as nowhere:  # nothing listens there
        with pytest.raises(ConnectionResetError):
            await connect(f"postgresql://postgres@127.0.0.1:{nowhere.port}/postgres")
