"""A WorkerPool's status: its kstatus conditions, and the writes of its status subresource.

`readiness` (pure) gives the three conditions tools read (kstatus, `kubectl
wait`): Ready, Reconciling while the pool is getting there, Stalled with the
reason when its spec cannot be served without a change.

`patch_status` guarantees: writers for one pool are serialized; conditions
are merged into the freshest copy of the object (so the scaler, the
reconciler and the Deployment watcher never erase each other's conditions);
a write that changes nothing is skipped, so status never churns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from shoal_operator.conditions import Condition, make_condition, set_conditions
from shoal_operator.kube import KubeError, kube, workerpool_path

_locks: dict[tuple[str, str], asyncio.Lock] = {}


def readiness(state: bool | None, reason: str, message: str, *,
              generation: int | None) -> list[Condition]:
    """Ready, Reconciling and Stalled for one judgement of the pool, all with its reason.

    `state` True: serving as the spec says. None: getting there (rolling out,
    scaling, retrying). False: it cannot be served until the spec (or the
    cluster) changes.
    """
    return [
        make_condition("Ready", state is True, reason, message, generation=generation),
        make_condition("Reconciling", state is None, reason,
                       message if state is None else "", generation=generation),
        make_condition("Stalled", state is False, reason,
                       message if state is False else "", generation=generation),
    ]


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
