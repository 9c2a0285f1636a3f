"""The kubelet's log endpoint, so `kubectl logs` works against the node agent.

`LogServer` serves `GET /containerLogs/{namespace}/{pod}/{container}` over TLS
on 127.0.0.1 (a free port, published as the Node's kubeletEndpoint), the way
the API server calls a kubelet: `previous=true` for the last terminated run,
`tailLines=N`, `follow=true` streaming until the process stops. The API server
does not verify a kubelet's serving certificate unless told to, so the
certificate comes from a throwaway CA of the agent's own.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from tests.cluster.pki import Pki

__all__ = ["LogServer", "LogSource"]

FOLLOW_POLL_SECONDS = 0.2


class LogSource(Protocol):
    """A container whose output files the server can read."""

    def log_file(self, previous: bool) -> Path | None:
        """The current run's output file, or the previous run's; None if there is none."""

    def writing(self, path: Path) -> bool:
        """True while a running process may still append to `path`."""


Find = Callable[[str, str, str], LogSource | None]


class LogServer:
    """HTTPS server for container logs; `start()` returns its port."""

    def __init__(self, find: Find, pki_dir: Path) -> None:
        self.find = find
        self.pki_dir = pki_dir
        self.runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        app.router.add_get("/healthz", self._healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        cert = Pki(self.pki_dir).issue("kubelet", "shoal-node-agent",
                                       ip_addresses=("127.0.0.1",))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert.cert), str(cert.key))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self.runner, sock, ssl_context=context).start()
        port: int = sock.getsockname()[1]
        return port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        info, query = request.match_info, request.query
        source = self.find(info["namespace"], info["pod"], info["container"])
        if source is None:
            raise web.HTTPNotFound(text=f"container {info['container']} not found "
                                        f"in pod {info['namespace']}/{info['pod']}")
        path = source.log_file(previous=query.get("previous") == "true")
        if path is None or not path.exists():
            raise web.HTTPBadRequest(text="no logs (previous terminated container not found?)")
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        with path.open("rb") as output:
            data = output.read()
            if "tailLines" in query:
                lines = int(query["tailLines"])
                data = b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""
            await response.write(data)
            while query.get("follow") == "true" and source.writing(path):
                chunk = output.read()
                if chunk:
                    await response.write(chunk)
                else:
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)
            if query.get("follow") == "true":
                await response.write(output.read())
        await response.write_eof()
        return response
