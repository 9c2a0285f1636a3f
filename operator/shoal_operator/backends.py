"""One shared asyncpg `Backend` per (DSN, schema) for the whole operator.

Every WorkerPool (and Workflow) that points at the same database shares one
small connection pool and one LISTEN connection (`notifications`), and the
operator creates or upgrades its schema on first use.
`pool_backend` resolves a pool's Secret into a DSN and guarantees one
of: a connected Backend, or an error that says what to fix — `PoolNotFound`,
`DatabaseSecretError` (Secret missing, key missing, not a postgresql:// URL)
or `BackendUnavailable` (unreachable, refused). No message ever contains a password.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.backend import TRANSIENT_ERRORS, Backend, Subscription
from shoal.errors import MigrationFailed
from shoal_operator.errors import DatabaseSecretError, PoolNotFound, SchemaNotReady
from shoal_operator.kube import KubeError, kube, secret_path, workerpool_path
from shoal_operator.pools.spec import Database, PoolSpec

log = logging.getLogger(__name__)

_backends: dict[tuple[str, str], Backend] = {}
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_default_schema = "shoal"


def set_default_schema(schema: str) -> None:
    """The schema for resources that name none (`shoal operator --schema`)."""
    global _default_schema
    _default_schema = schema


def schema_of(database: Database) -> str:
    """The schema a resource's database settings select."""
    return database.schema_ or _default_schema


async def backend_for(dsn: str, schema: str) -> Backend:
    """The shared Backend for (dsn, schema), connected and migrated on first use.

    Raises BackendUnavailable when the database cannot be reached, and its
    SchemaNotReady when the schema cannot be created or upgraded.
    """
    key = (dsn, schema)
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        backend = _backends.get(key)
        if backend is None:
            backend = await Backend.connect(dsn, schema=schema, min_size=1, max_size=4)
            try:
                await _ensure_schema(backend)
            except BaseException:
                await backend.close()
                raise
            _backends[key] = backend
        return backend


async def _ensure_schema(backend: Backend) -> None:
    """`shoal migrate` on first use, so a pool on an empty database just works.

    A role without the right to create or alter the schema is left to its
    administrator's own `shoal migrate`: a missing schema then shows as a
    failed backlog read.
    """
    schema = backend.schema
    try:
        applied = await backend.migrate()
    except MigrationFailed as exc:
        if exc.privileges:
            log.info("schema %s not migrated by the operator (%s); run `shoal migrate`",
                     schema, exc)
            return
        raise SchemaNotReady(str(exc)) from None
    except TRANSIENT_ERRORS as exc:
        raise SchemaNotReady(f"cannot create or upgrade schema {schema!r}: {exc}") from None
    if applied:
        log.info("schema %s: applied migrations %s", schema, applied)


# Successful Secret reads, remembered briefly: the scaler may evaluate a pool
# ten times a second during a burst, and the DSN almost never changes. A
# failed read is never remembered, so a fixed Secret is seen at once.
DSN_TTL = 5.0
_dsns: dict[tuple[str, str, str], tuple[float, str]] = {}


async def read_dsn(namespace: str, database: Database) -> str:
    """The DSN stored in the pool's database Secret, checked for shape (not reachability).

    A change to a valid Secret is seen within DSN_TTL seconds.
    """
    ref = database.secret_ref
    key = (namespace, ref.name, ref.key)
    known = _dsns.get(key)
    if known is not None and time.monotonic() - known[0] < DSN_TTL:
        return known[1]
    dsn = await _fetch_dsn(namespace, database)
    _dsns[key] = (time.monotonic(), dsn)
    return dsn


async def _fetch_dsn(namespace: str, database: Database) -> str:
    ref = database.secret_ref
    where = f"Secret {namespace}/{ref.name}"
    try:
        secret = await (await kube()).get(secret_path(namespace, ref.name))
    except KubeError as exc:
        if exc.not_found:
            raise DatabaseSecretError(f"{where} does not exist") from None
        raise DatabaseSecretError(f"cannot read {where}: {exc}") from None
    encoded = (secret.get("data") or {}).get(ref.key)
    if encoded is None:
        keys = ", ".join(sorted(secret.get("data") or {})) or "none"
        raise DatabaseSecretError(f"{where} has no key {ref.key!r} (keys: {keys})")
    try:
        dsn = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        raise DatabaseSecretError(f"{where} key {ref.key!r} is not UTF-8 text") from None
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise DatabaseSecretError(
            f"{where} key {ref.key!r} is not a DSN: expected postgresql://user:pass@host/db")
    return dsn


async def backend_for_spec(namespace: str, spec: PoolSpec) -> Backend:
    """The shared Backend of a parsed pool spec."""
    dsn = await read_dsn(namespace, spec.database)
    return await backend_for(dsn, schema_of(spec.database))


async def pool_backend(namespace: str, pool_name: str) -> tuple[PoolSpec, Backend]:
    """WorkerPool `namespace/pool_name`'s parsed spec and its shared Backend.

    Raises PoolNotFound, InvalidPoolSpec, DatabaseSecretError or BackendUnavailable.
    """
    try:
        body = await (await kube()).get(workerpool_path(namespace, pool_name))
    except KubeError as exc:
        if exc.not_found:
            raise PoolNotFound(f"WorkerPool {namespace}/{pool_name} does not exist") from None
        raise
    spec = PoolSpec.from_body(body.get("spec") or {})
    return spec, await backend_for_spec(namespace, spec)


OnPayload = Callable[[str], None]


@dataclass
class _Listener:
    task: asyncio.Task[None]
    # channel -> payload (None: any) -> callbacks; one entry per subscription
    on_notify: dict[str, dict[str | None, list[OnPayload]]] = field(default_factory=dict)
    on_connect: list[Callable[[], None]] = field(default_factory=list)


class NotifyHub:
    """One LISTEN connection per (DSN, schema), on both Shoal channels, for the whole operator.

    Subscribers are called for the notifications of their channel (and payload,
    if they name one), and `on_connect` after every (re)connect, so they can
    catch up on what was sent while nobody listened. The connection closes
    when its last subscriber leaves.
    """

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, str], _Listener] = {}

    def subscribe(self, backend: Backend, channel: str, payload: str | None,
                  on_notify: OnPayload, on_connect: Callable[[], None]) -> Callable[[], None]:
        """Start calling `on_notify(payload)`; returns the function that stops it."""
        key = (backend.dsn, backend.schema)
        listener = self._listeners.get(key)
        if listener is None:
            listener = self._listeners[key] = self._listen(backend)
        listener.on_notify.setdefault(channel, {}).setdefault(payload, []).append(on_notify)
        listener.on_connect.append(on_connect)

        def unsubscribe() -> None:
            listener.on_notify[channel][payload].remove(on_notify)
            listener.on_connect.remove(on_connect)
            if not listener.on_connect and self._listeners.get(key) is listener:
                listener.task.cancel()
                del self._listeners[key]

        return unsubscribe

    def _listen(self, backend: Backend) -> _Listener:
        def notified(channel: str, payload: str) -> None:
            by_payload = listener.on_notify.get(channel, {})
            for callback in (*by_payload.get(payload, ()), *by_payload.get(None, ())):
                callback(payload)

        def connected() -> None:
            for callback in list(listener.on_connect):
                callback()

        subscription = Subscription(backend.dsn, [backend.tasks_channel,
                                                  backend.workflows_channel],
                                    notified, connected)
        listener = _Listener(asyncio.create_task(subscription.run(),
                                                 name=f"listen:{backend.schema}"))
        return listener

    async def close(self) -> None:
        """Close every LISTEN connection (operator shutdown)."""
        tasks = [listener.task for listener in self._listeners.values()]
        self._listeners.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


notifications = NotifyHub()


async def close_all() -> None:
    """Close every LISTEN connection and shared Backend (operator shutdown)."""
    await notifications.close()
    backends = list(_backends.values())
    _backends.clear()
    await asyncio.gather(*(b.close() for b in backends), return_exceptions=True)
