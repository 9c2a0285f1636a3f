"""How Shoal holds its database connections, and which errors are transient.

Two holders with the same interface (`Connections`), so `Backend` runs over either:

- `Pool`: an asyncpg pool, for the client, the CLI and the operator.
- `Session`: one connection for a whole worker, carrying every statement and
  every LISTEN (see `Session`).

Both discard a connection after any error that may have left it unusable
(everything but an error the server reported on a healthy connection, such
as a constraint violation), so a connection in a bad client state
(asyncpg's "cannot switch to state ...; another operation is in progress")
is never used again. Both translate a missing schema into `SchemaNotMigrated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import asyncpg

from shoal.errors import BackendUnavailable, SchemaNotMigrated

log = logging.getLogger(__name__)

# Errors after which the same call may succeed later: the database is (re)starting,
# unreachable, full, failing over, or the connection broke. Every layer retries
# these and nothing else; anything else is a bug or bad data and must be seen.
TRANSIENT_ERRORS = (
    BackendUnavailable,  # cannot connect (raised by `connect`)
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # connection closed, in a transaction it should not be ...
    asyncpg.InternalClientError,  # the client-side protocol state is broken
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # too many connections, disk full, out of memory
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.ReadOnlySQLTransactionError,  # a primary that became a standby (failover)
)

# Server errors that mean Shoal's schema is not there (or not up to date).
_NOT_MIGRATED = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError,
                 asyncpg.UndefinedColumnError, asyncpg.UndefinedFunctionError,
                 asyncpg.UndefinedObjectError)

# Session settings of every Shoal connection. JIT off: once ANALYZE has seen a
# large backlog, the claim's estimated cost passes jit_above_cost, and LLVM then
# compiled every claim (tens of ms of CPU each, for a statement that runs in a
# few): 16 workers fell from 10,000 to 4,000 tasks/s with Postgres CPU per task
# four times as high. Shoal's statements are short; JIT never pays for them.
SESSION_SETTINGS = {"jit": "off"}

Init = Callable[[asyncpg.Connection], Any]


def _keeps_connection(exc: BaseException) -> bool:
    """Whether a connection is still usable after `exc` escaped a statement on it."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, TRANSIENT_ERRORS)


def _translate(exc: BaseException, schema: str) -> BaseException:
    if isinstance(exc, _NOT_MIGRATED):
        return SchemaNotMigrated(
            f"schema {schema!r} is missing or not up to date ({exc}): run `shoal migrate`")
    return exc


def where(dsn: str) -> str:
    """The DSN without its password."""
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", dsn)


def unavailable(dsn: str, exc: BaseException) -> BackendUnavailable:
    """A BackendUnavailable that says why, without leaking the password."""
    at = where(dsn)
    refused = asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    if isinstance(exc, refused):
        return BackendUnavailable(f"database refused the credentials for {at}: {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return BackendUnavailable(f"database does not exist at {at}: {exc}")
    if isinstance(exc, OSError | TimeoutError | asyncpg.CannotConnectNowError):
        return BackendUnavailable(f"cannot reach the database at {at}: {exc}")
    return BackendUnavailable(f"cannot connect to the database at {at}: {exc}")


async def connect(dsn: str, init: Init, application_name: str | None = None,
                  **kwargs: Any) -> asyncpg.Connection:
    """One connection with Shoal's session settings, initialised by `init`;
    unreachable or refused → BackendUnavailable."""
    settings = SESSION_SETTINGS | ({"application_name": application_name}
                                   if application_name else {})
    try:
        conn = await asyncpg.connect(dsn, server_settings=settings, **kwargs)
    except Exception as exc:
        raise unavailable(dsn, exc) from exc
    try:
        await init(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


class Connections(Protocol):
    """What `Backend` needs of a connection holder."""

    def acquire(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...

    async def close(self) -> None: ...


class _Statements:
    """fetch/fetchrow/fetchval/execute, each on a connection from `acquire()`."""

    def acquire(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        raise NotImplementedError

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)  # type: ignore[no-any-return]

    async def fetchrow(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args)  # type: ignore[no-any-return]


class Pool(_Statements):
    """An asyncpg pool whose connections are discarded after an error that may
    have broken them, and whose missing-schema errors say to run `shoal migrate`."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    @classmethod
    async def open(cls, dsn: str, schema: str, init: Init, reset: Init, *, min_size: int,
                   max_size: int) -> Pool:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                             server_settings=SESSION_SETTINGS, init=init,
                                             reset=reset, timeout=10)
        except Exception as exc:
            raise unavailable(dsn, exc) from exc
        return cls(pool, schema)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    if not _keeps_connection(exc):
                        conn.terminate()  # the pool opens a fresh one next time
                    raise
        except BaseException as exc:
            translated = _translate(exc, self.schema)
            if translated is exc:
                raise
            raise translated from exc

    async def close(self) -> None:
        await self.pool.close()


OnNotify = Callable[[str, str], None]


class Session(_Statements):
    """One connection for a whole worker: every statement and every LISTEN.

    Guarantees:
    - Statements run one at a time, in the order they were asked for.
    - After an error that may have broken the connection (see the module
      docstring) it is closed; the next statement opens a new one. `connected`
      says whether a connection is open now, `lost` is set when it closes.
    - Every new connection listens on `channels` before any statement runs on
      it, and bumps `generation`: whoever keeps session state (an advisory
      lock) knows it lasts only as long as the generation that took it.
    - Notifications arrive while statements run; `on_notify(channel, payload)`
      is called for each.
    """

    def __init__(self, dsn: str, schema: str, channels: list[str], on_notify: OnNotify,
                 init: Init, *, application_name: str, command_timeout: float = 30.0) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.schema = schema
        self.channels = channels
        self.on_notify = on_notify
        self.init = init
        self.command_timeout = command_timeout
        self.generation = 0
        self.lost = asyncio.Event()
        self.lost.set()  # nothing connected yet
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._held: dict[str, int] = {}  # advisory lock statement -> generation holding it

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        """Open the connection now if there is none; raises a transient error if it cannot."""
        async with self._lock:
            await self._ensure()

    async def _ensure(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._drop()
        conn = await connect(self.dsn, self.init, self.application_name, timeout=10,
                             command_timeout=self.command_timeout)
        try:
            for channel in self.channels:
                await conn.add_listener(channel, self._deliver)
        except BaseException:
            conn.terminate()
            raise
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        self._conn, self.lost = conn, lost
        self.generation += 1
        return conn

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self.on_notify(channel, payload)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self.lost.set()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._lock:
            conn = await self._ensure()
            try:
                yield conn
            except BaseException as exc:
                if not _keeps_connection(exc):
                    self._drop()
                translated = _translate(exc, self.schema)
                if translated is exc:
                    raise
                raise translated from exc

    async def hold_lock(self, statement: str) -> bool:
        """Whether this session holds the advisory lock `statement` takes (a
        `pg_try_advisory_lock` that answers true or false), trying it when not."""
        async with self.acquire() as conn:
            if self._held.get(statement) == self.generation:
                return True
            if await conn.fetchval(statement):
                self._held[statement] = self.generation
                return True
            return False

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    async with asyncio.timeout(5):
                        await self._conn.close()
            self._drop()
