"""A WorkerPool's status: its kstatus conditions, and the writes of its status subresource.

`readiness` (pure) gives the three conditions tools read (kstatus, `kubectl
wait`): Ready, Reconciling while the pool is getting there, Stalled with the
reason when its spec cannot be served without a change.

`StatusWriter.patch` guarantees: writers for one pool are serialized;
conditions are merged into the status as the operator last wrote it (the
answer of its last patch; before the first, the body the caller holds), so
the scaler, the reconciler and the Deployment watcher never erase each
other's conditions and no write needs a read first (the operator is the one
writer of pool status); a write that changes nothing is not sent, so status
never churns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from shoal_operator.conditions import Condition, make_condition, set_conditions
from shoal_operator.kube import Kube, KubeError, workerpool_path

Key = tuple[str, str]  # (namespace, pool name)


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


class StatusWriter:
    """Every write of WorkerPool status; see the module docstring for its guarantees."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._locks: dict[Key, asyncio.Lock] = {}
        self._written: dict[Key, tuple[str, Mapping[str, Any]]] = {}  # key -> (uid, status)

    async def patch(self, pool: Mapping[str, Any], fields: Mapping[str, Any] | None = None,
                    conditions: Iterable[Condition] = ()) -> bool:
        """Merge `fields` and `conditions` into the status of `pool` (the body the caller
        holds); False if the pool is gone."""
        meta = pool["metadata"]
        key, uid = (meta["namespace"], meta["name"]), str(meta.get("uid"))
        async with self._locks.setdefault(key, asyncio.Lock()):
            written = self._written.get(key)
            status = written[1] if written and written[0] == uid else pool.get("status") or {}
            new: dict[str, Any] = dict(fields or {})
            updates = list(conditions)
            if updates:
                new["conditions"] = set_conditions(status.get("conditions"), updates)
            if all(status.get(name) == value for name, value in new.items()):
                return True
            try:
                body = await self.kube.merge_patch(workerpool_path(*key) + "/status",
                                                   {"status": new})
            except KubeError as exc:
                if exc.not_found:
                    self.forget(*key)
                    return False
                raise
            self._written[key] = (uid, body.get("status") or {})
            return True

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept of a deleted pool."""
        self._locks.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
