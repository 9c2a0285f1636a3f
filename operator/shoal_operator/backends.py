"""One shared asyncpg `Backend` per (DSN, schema) for the whole operator (`Backends`).

Every WorkerPool (and Workflow) that points at the same database shares one
small connection pool and one LISTEN connection (`Backends.notifications`),
and the operator creates or upgrades its schema on first use.
`Backends.backend_for_spec` resolves a pool's Secret into a DSN and guarantees
one of: a connected Backend, or an error that says what to fix —
`DatabaseSecretError` (Secret missing, key missing, not a postgresql:// URL),
`SchemaNotReady` or `BackendUnavailable` (unreachable, refused). No message
ever contains a password.
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
from shoal_operator.errors import DatabaseSecretError, SchemaNotReady
from shoal_operator.kube import Kube, KubeError, secret_path
from shoal_operator.pools.spec import Database, PoolSpec

log = logging.getLogger(__name__)

# Successful Secret reads are remembered briefly: every scaler evaluates its pool
# at least every re-check interval, and the DSN almost never changes.
DSN_TTL = 5.0


class Backends:
    """The operator's shared Backends, one per (DSN, schema), and its one NotifyHub.

    A database's Backend is connected and migrated on first use; a DSN read
    from a Secret is remembered for DSN_TTL seconds (and read again for every
    re-check round: `refresh_dsns`), and concurrent reads of one Secret share
    one request.
    """

    def __init__(self, kube: Kube, default_schema: str) -> None:
        self.kube = kube
        self.default_schema = default_schema  # for resources that name none
        self.notifications = NotifyHub()
        self._backends: dict[tuple[str, str], Backend] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._dsns: dict[tuple[str, str, str], tuple[float, asyncio.Future[str]]] = {}
        self._databases: dict[tuple[str, str, str], Database] = {}  # whose Secret it is
        self._used: set[tuple[str, str, str]] = set()  # read since the last refresh

    def schema_of(self, database: Database) -> str:
        """The schema a resource's database settings select."""
        return database.schema_ or self.default_schema

    async def backend_for(self, dsn: str, schema: str) -> Backend:
        """The shared Backend for (dsn, schema), connected and migrated on first use.

        Raises BackendUnavailable when the database cannot be reached, and
        SchemaNotReady when the schema cannot be created or upgraded.
        """
        key = (dsn, schema)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            backend = self._backends.get(key)
            if backend is None:
                backend = await Backend.connect(dsn, schema=schema, min_size=1, max_size=4)
                try:
                    await _ensure_schema(backend)
                except BaseException:
                    await backend.close()
                    raise
                self._backends[key] = backend
            return backend

    async def read_dsn(self, namespace: str, database: Database) -> str:
        """The DSN stored in the pool's database Secret, checked for shape (not reachability).

        A change to a valid Secret is seen within DSN_TTL seconds; a failed
        read is never remembered, so a fixed Secret is seen at once.
        """
        ref = database.secret_ref
        key = (namespace, ref.name, ref.key)
        self._used.add(key)
        known = self._dsns.get(key)
        if known is None or time.monotonic() - known[0] >= DSN_TTL:
            known = self._fetch(key, database)
        try:
            return await asyncio.shield(known[1])
        except Exception:
            if self._dsns.get(key) is known:
                del self._dsns[key]
            raise

    async def refresh_dsns(self) -> None:
        """Read again, all at once, every Secret read since the last refresh, so that
        the evaluations of a round find their DSNs fresh and read their backlogs together."""
        used, self._used = self._used, set()
        entries = {key: self._fetch(key, self._databases[key]) for key in used}
        await asyncio.gather(*(asyncio.shield(future) for _, future in entries.values()),
                             return_exceptions=True)
        for key, (at, future) in entries.items():
            failed = future.cancelled() or future.exception() is not None
            if failed and self._dsns.get(key) == (at, future):
                del self._dsns[key]  # the evaluation that meets it says what to fix

    def _fetch(self, key: tuple[str, str, str], database: Database
               ) -> tuple[float, asyncio.Future[str]]:
        self._databases[key] = database
        entry = self._dsns[key] = (time.monotonic(), asyncio.ensure_future(
            _fetch_dsn(self.kube, key[0], database)))
        return entry

    async def backend_for_spec(self, namespace: str, spec: PoolSpec) -> Backend:
        """The shared Backend of a parsed pool spec."""
        dsn = await self.read_dsn(namespace, spec.database)
        return await self.backend_for(dsn, self.schema_of(spec.database))

    async def close(self) -> None:
        """Close every LISTEN connection and shared Backend (operator shutdown)."""
        await self.notifications.close()
        backends = list(self._backends.values())
        self._backends.clear()
        await asyncio.gather(*(b.close() for b in backends), return_exceptions=True)


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


async def _fetch_dsn(kube: Kube, namespace: str, database: Database) -> str:
    ref = database.secret_ref
    where = f"Secret {namespace}/{ref.name}"
    try:
        secret = await kube.get(secret_path(namespace, ref.name))
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
