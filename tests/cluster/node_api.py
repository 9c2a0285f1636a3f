"""A thin JSON client for the node agent, on top of kubernetes_asyncio's ApiClient.

The agent works on plain dicts (the API's own camelCase JSON) rather than the
generated models, so that a read-modify-write of a Pod never drops a field the
client library does not know. `KubeApi` guarantees: authentication exactly as
the kubeconfig says (the ApiClient's TLS and token handling), errors raised as
`ApiException` with the HTTP status, and `watch()` yielding decoded events
until the server ends the stream; an expired resourceVersion surfaces as
`ApiException(status=410)` whether the server says so in the HTTP status or in
an ERROR event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import load_kube_config

__all__ = ["ApiException", "Json", "KubeApi"]

Json = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"


class KubeApi:
    """Raw JSON requests against one API server; an async context manager."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    @classmethod
    async def from_kubeconfig(cls, path: str) -> KubeApi:
        """Connect as the kubeconfig's current context says."""
        configuration = Configuration()
        await load_kube_config(config_file=path, client_configuration=configuration)
        return cls(ApiClient(configuration))

    async def __aenter__(self) -> KubeApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def _send(self, method: str, path: str, query: dict[str, Any] | None,
                    body: Json | None, content_type: str, request_timeout: float | None) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        return await self.client.call_api(
            path, method,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=request_timeout,
        )

    async def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                      body: Json | None = None, content_type: str = "application/json",
                      request_timeout: float = 30) -> Json:
        """Send one request; return the decoded JSON body or raise ApiException."""
        response = await self._send(method, path, query, body, content_type, request_timeout)
        async with response:
            data = await response.read()
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=data.decode(errors="replace"))
        return json.loads(data) if data else {}

    async def get(self, path: str, **query: Any) -> Json:
        return await self.request("GET", path, query=query)

    async def watch(self, path: str, **query: Any) -> AsyncIterator[Json]:
        """Yield watch events ({type, object}) until the server closes the stream."""
        query = {**query, "watch": "true"}
        limit = float(query.get("timeoutSeconds", 300)) + 30
        response = await self._send("GET", path, query, None, "application/json", limit)
        async with response:
            if response.status != 200:
                raise ApiException(status=response.status,
                                   reason=(await response.read()).decode(errors="replace"))
            async for line in response.content:
                if not line.strip():
                    continue
                event: Json = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiException(status=status.get("code", 500),
                                       reason=status.get("message", ""))
                yield event
