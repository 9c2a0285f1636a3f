"""A TCP proxy that can become a black hole: a network partition between its clients
(`shoal worker` processes) and their Postgres, in the test's own event loop.

What it guarantees, once `blackhole()` returns and until `heal()`:

- Nothing crosses, in either direction, on any connection: the proxy neither reads
  nor writes, and no connection is closed or reset (no FIN, no RST), whatever the
  peers do. (Bytes the proxy handed its kernel before the cut may still arrive, as
  packets already on the wire would; and its kernel retransmits those whose
  acknowledgement the black hole swallowed: the peer has them and drops the copies.)
- The peers see a silent *network*, not a silent proxy. A proxy that kept reading
  and discarded, or simply stopped reading, would still have its kernel acknowledge
  what the peers send (into its buffers) and answer their keepalive probes: their
  writes would succeed, and TCP_USER_TIMEOUT and keepalives, on either end, could
  never expire. So every socket of the proxy gets a socket filter (socket(7)
  `SO_ATTACH_FILTER`) that drops every segment before TCP sees it: data, ACKs,
  keepalive probes, FINs and RSTs are neither acknowledged nor answered. The peers'
  bytes stay unacknowledged in their own send queues and are retransmitted, their
  writes block once those queues fill, and their keepalives and user timeouts end
  their connections, as over a real partition.
- A new connection does not complete: the listening socket drops its SYN too, so
  the client's connect() hangs, retransmitting the SYN, as in a partition (a proxy
  that accepted and held connections would let connect() succeed at once).

`heal()` removes the filters: new connections are forwarded at once, and the
connections that lived through the black hole resume where they stopped. Nothing
was read or discarded, so each peer's next retransmission gets through (after its
backoff: up to seconds later) and the stream goes on intact, as TCP goes on after
a real partition. A peer that gave up meanwhile is gone as it would be over a real
network. One that closed its socket (even by dying: the kernel closes it) has its
FIN retransmitted, and the other side sees the end of file after the heal. One
whose connection ended without a FIN (a reset, whose RST went once into the black
hole, or its kernel's verdict after keepalives or TCP_USER_TIMEOUT) has left the
other side half-open: it learns only when it next sends something, so an idle
Postgres session outlives such a client until its own keepalives end it, or until
`close()`.

`close()` closes every connection, cut or not; each peer sees its end. Linux only
(socket filters), IPv4 or IPv6 upstream, one proxy per path a test wants to cut:
one per worker to cut one worker, or one shared (or several blackholed together)
to cut them all.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import fcntl
import socket
import struct
import termios
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# <asm-generic/socket.h> (x86 and arm); Python's socket module does not name them.
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
# A classic BPF program of one instruction, `ret #0` (BPF_RET | BPF_K): keep no byte of
# the segment, i.e. drop it. `struct sock_fprog` points at it, so the buffer lives on.
_RET_0 = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
DROP_EVERYTHING = struct.pack("HP", 1, ctypes.addressof(_RET_0))
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST
CHUNK = 64 * 1024


class Proxy:
    """Forwards connections from 127.0.0.1:`port` to the upstream until `blackhole()`;
    counts `connections` accepted and bytes `forwarded` (both directions)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0  # known once started
        self.connections = 0
        self.forwarded = 0
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._sockets: set[socket.socket] = set()  # every socket the proxy holds
        self._serving: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    @property
    def blackholed(self) -> bool:
        return not self._link_up.is_set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family, _, _, _, address = (await loop.getaddrinfo(
            self.upstream_host, self.upstream_port, type=socket.SOCK_STREAM))[0]
        listener = socket.create_server(("127.0.0.1", 0))
        self._hold(listener)
        self.port = listener.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept(listener, family, address))

    async def close(self) -> None:
        """Stop listening and close every connection."""
        tasks = [*self._serving, *([self._accepting] if self._accepting else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def dsn(self, upstream_dsn: str) -> str:
        """`upstream_dsn` through the proxy: its host and port replaced, all else kept."""
        url = urlsplit(upstream_dsn)
        if (url.hostname, url.port or 5432) != (self.upstream_host, self.upstream_port):
            raise ValueError(f"{upstream_dsn} is not on this proxy's upstream, "
                             f"{self.upstream_host}:{self.upstream_port}")
        user, at, _ = url.netloc.rpartition("@")
        return urlunsplit(url._replace(netloc=f"{user}{at}127.0.0.1:{self.port}"))

    def blackhole(self) -> None:
        """Cut every connection, existing and new, silently (see the module's docstring)."""
        if self.blackholed:
            return
        self._link_up.clear()
        for sock in self._sockets:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, DROP_EVERYTHING)

    def heal(self) -> None:
        """Forward again: new connections, and the old ones where they stopped."""
        if not self.blackholed:
            return
        for sock in self._sockets:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        self._link_up.set()

    def _hold(self, sock: socket.socket) -> None:
        """Track a new socket of the proxy; behind the black hole at once if there is one."""
        sock.setblocking(False)
        self._sockets.add(sock)
        if self.blackholed:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, DROP_EVERYTHING)

    async def _accept(self, listener: socket.socket, family: socket.AddressFamily,
                      address: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # While blackholed, only a handshake completed just before can be accepted.
            client, _ = await loop.sock_accept(listener)
            self._hold(client)
            self.connections += 1
            task = asyncio.create_task(self._serve(client, family, address))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, client: socket.socket, family: socket.AddressFamily,
                     address: tuple[Any, ...]) -> None:
        upstream = socket.socket(family)
        self._hold(upstream)
        try:
            await self._link_up.wait()  # not even a SYN crosses a black hole
            await asyncio.get_running_loop().sock_connect(upstream, address)
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(client, upstream))
                pumps.create_task(self._pump(upstream, client))
        except* OSError:  # refused, or reset by one peer: reset the other (once it can tell)
            await self._link_up.wait()
            for sock in (client, upstream):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        finally:
            for sock in (client, upstream):
                self._sockets.discard(sock)
                sock.close()

    async def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy `source` to `sink` while the link is up; pass an end of file on."""
        loop = asyncio.get_running_loop()
        while True:
            await self._link_up.wait()
            data = await loop.sock_recv(source, CHUNK)
            await self._link_up.wait()
            if not data:
                sink.shutdown(socket.SHUT_WR)
                return
            await loop.sock_sendall(sink, data)
            self.forwarded += len(data)


def client_socket(conn: asyncpg.Connection) -> socket.socket:
    """The socket of the client end of `conn`."""
    return conn._transport.get_extra_info("socket")  # type: ignore[no-any-return]


def unacknowledged(conn: asyncpg.Connection) -> int:
    """Bytes in the send queue of `conn`'s socket that its peer has not acknowledged."""
    queued = array.array("i", [0])
    fcntl.ioctl(client_socket(conn).fileno(), termios.TIOCOUTQ, queued)  # SIOCOUTQ
    return queued[0]
