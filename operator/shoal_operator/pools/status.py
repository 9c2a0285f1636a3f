"""Writes of a WorkerPool's status subresource.

`patch_status` guarantees: writers for one pool are serialized; conditions
are merged into the freshest copy of the object (so the scaler, the
reconciler and the Deployment watcher never erase each other's conditions);
a write that changes nothing is skipped, so status never churns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from shoal_operator.conditions import Condition, set_conditions
from shoal_operator.kube import KubeError, kube, workerpool_path

_locks: dict[tuple[str, str], asyncio.Lock] = {}


async def patch_status(namespace: str, name: str, fields: Mapping[str, Any] | None = None,
                       conditions: Iterable[Condition] = ()) -> Mapping[str, Any] | None:
    """Merge `fields` and `conditions` into the pool's status; None if the pool is gone."""
    lock = _locks.setdefault((namespace, name), asyncio.Lock())
    async with lock:
        k = await kube()
        try:
            body = await k.get(workerpool_path(namespace, name))
        except KubeError as exc:
            if exc.not_found:
                return None
            raise
        status = body.get("status") or {}
        new: dict[str, Any] = dict(fields or {})
        updates = list(conditions)
        if updates:
            new["conditions"] = set_conditions(status.get("conditions"), updates)
        if all(status.get(key) == value for key, value in new.items()):
            return body
        try:
            return await k.merge_patch(workerpool_path(namespace, name) + "/status",
                                       {"status": new})
        except KubeError as exc:
            if exc.not_found:
                return None
            raise


def forget(namespace: str, name: str) -> None:
    """Drop the lock of a deleted pool."""
    _locks.pop((namespace, name), None)
