"""A small JSON client for the Kubernetes API, shared by the whole operator.

kopf watches and posts Events with its own client; the operator's own reads
and writes (Deployments, Pods, Secrets, CR status, and the Events of services
that run outside kopf's handlers) go through `Kube`, one
`kubernetes_asyncio` ApiClient loaded from the in-cluster service account or,
outside a cluster, from `$KUBECONFIG` (`connect`; the operator keeps one in its
context). Objects are plain dicts, exactly what the API server sends; any
non-2xx answer raises `KubeError` with its status. Every request is counted in
`shoal_operator_api_requests_total` by verb and resource.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from kubernetes_asyncio import client, config

from shoal_operator import metrics
from shoal_operator.conditions import now_rfc3339
from shoal_operator.resource import GROUP, VERSION

FIELD_MANAGER = "shoal-operator"

Obj = dict[str, Any]


class KubeError(Exception):
    """The API server answered with an error status (404, 409, 422...)."""

    def __init__(self, status: int, reason: str, message: str,
                 causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the reason of each of the Status's details.causes

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted: nothing is worth retrying."""
        return "NamespaceTerminating" in self.causes


def resource_of(path: str) -> str:
    """The resource (and subresource) an API path names: `workerpools/status`, `pods`."""
    parts = path.partition("?")[0].strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]  # after /api/V or /apis/G/V
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]
    return "/".join(rest[:1] + rest[2:3])


class Kube:
    """GET and PATCH of API paths with JSON bodies; returns decoded objects."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    async def request(self, method: str, path: str, *, body: Any = None,
                      query: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> Obj:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        metrics.api_requests.labels(method, resource_of(path)).inc()
        response = await self.api.call_api(
            path, method, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True, _request_timeout=30)
        try:
            raw = await response.read()
        finally:
            response.release()
        data: Obj = json.loads(raw) if raw else {}
        if not 200 <= response.status <= 299:
            causes = tuple(str(c.get("reason")) for c in
                           (data.get("details") or {}).get("causes") or [])
            raise KubeError(response.status, str(data.get("reason", response.reason)),
                            str(data.get("message", raw[:200])), causes)
        return data

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Obj:
        return await self.request("GET", path, query=query)

    async def find(self, path: str) -> Obj | None:
        """The object at `path`; None when there is none (404)."""
        try:
            return await self.get(path)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        return await self.request("PATCH", path, body=patch,
                                  content_type="application/merge-patch+json")

    async def apply(self, path: str, manifest: Obj) -> Obj:
        """Server-side apply as the operator's field manager, taking over conflicts."""
        return await self.request("PATCH", path, body=manifest,
                                  query={"fieldManager": FIELD_MANAGER, "force": "true"},
                                  content_type="application/apply-patch+yaml")

    async def close(self) -> None:
        await self.api.close()


def namespaced(namespace: str | None) -> str:
    """The namespace kopf passes to handlers of a namespaced resource, which always has one."""
    if namespace is None:
        raise TypeError("a namespaced resource without a namespace")
    return namespace


def workerpool_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/workerpools"
    return f"{base}/{quote(name)}" if name else base


def deployment_path(namespace: str, name: str = "") -> str:
    base = f"/apis/apps/v1/namespaces/{quote(namespace)}/deployments"
    return f"{base}/{quote(name)}" if name else base


def pods_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{quote(namespace)}/pods"
    return f"{base}/{quote(name)}" if name else base


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/events"


def event(involved: Mapping[str, str], type_: str, reason: str, message: str, *,
          now: datetime | None = None) -> Obj:
    """A core/v1 Event about `involved` (apiVersion, kind, namespace, name, uid), from
    the operator, as `kubectl describe` and `kubectl get events` show it."""
    stamp = now_rfc3339(now)
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.",
                         "namespace": involved["namespace"]},
            "involvedObject": dict(involved), "type": type_, "reason": reason,
            "message": message, "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER, "firstTimestamp": stamp,
            "lastTimestamp": stamp, "count": 1}


async def connect() -> Kube:
    """A new client: the in-cluster service account, or `$KUBECONFIG` read now."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:  # read $KUBECONFIG now, not when kubernetes_asyncio was imported
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return Kube(client.ApiClient())
