"""How Shoal holds its database connections, and which errors are transient.

Two holders with the same interface (`Connections`), so `Backend` runs over either:

- `Pool`: an asyncpg pool, for the client, the CLI and the operator.
- `Session`: one connection for a whole worker, carrying every statement and
  every LISTEN (see `Session`), with every wait on the network bounded
  (`LinkTimeouts`).

Both discard a connection after any error that may have left it unusable
(everything but an error the server reported on a healthy connection, such
as a constraint violation), so a connection in a bad client state
(asyncpg's "cannot switch to state ...; another operation is in progress")
is never used again. Both translate a missing schema into `SchemaNotMigrated`.

Transaction poolers (PgBouncer's `pool_mode = transaction`): a DSN whose query
says `prepared_statements=false` (see `Endpoint`) reaches the database through
one. A `Pool` over it keeps no state in a server session: no prepared
statements (asyncpg's `statement_cache_size=0`: each statement is parsed
unnamed and re-parsed with its parameters in the same message) and no startup
settings (PgBouncer 1.18 refuses parameters it does not track). What needs a
session of its own refuses such a DSN with `SessionRequired`: a `Session` (a
worker: it LISTENs, its hand-offs are addressed to its backend's pid, it sets
session timeouts) and `connect` (LISTEN), and `Pool.require_session` (the
migration lock). Through a pooler whose DSN was not marked, the errors say to
mark it (`unavailable`, `_translate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import asyncpg

from shoal.errors import BackendUnavailable, InvalidInput, SchemaNotMigrated, SessionRequired

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

# A worker's session plans each statement once (a generic plan), not at every call.
# Left to itself Postgres kept custom plans for the claim and the heartbeat, whose
# estimated generic cost looked higher: 1.2 ms of planning per claim (more than it
# ran for) and 0.36 ms per heartbeat in a 300-worker fleet. The generic plans read
# the same indexes (tests/backend/test_claim_plan.py checks the claim's).
WORKER_SESSION_SETTINGS = {"plan_cache_mode": "force_generic_plan"}

Init = Callable[[asyncpg.Connection], Any]


def _keeps_connection(exc: BaseException) -> bool:
    """Whether a connection is still usable after `exc` escaped a statement on it."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, TRANSIENT_ERRORS)


# What asyncpg's named prepared statements run into behind a transaction pooler: the
# next message of the same client went to another server connection.
_PREPARED_ELSEWHERE = (asyncpg.InvalidSQLStatementNameError,
                       asyncpg.DuplicatePreparedStatementError)
_MARK_IT = ("a transaction pooler (PgBouncer's pool_mode = transaction?) in front of the "
            "database: add prepared_statements=false to the DSN of producers, and give "
            "workers, the operator and `shoal migrate` a direct DSN")


def _translate(exc: BaseException, schema: str) -> BaseException:
    if isinstance(exc, _NOT_MIGRATED):
        return SchemaNotMigrated(
            f"schema {schema!r} is missing or not up to date ({exc}): run `shoal migrate`")
    if isinstance(exc, _PREPARED_ELSEWHERE):
        return SessionRequired(f"{str(exc).splitlines()[0]}: {_MARK_IT}")
    return exc


# The DSN query parameter that marks a transaction pooler; `false` (or 0, off, no)
# marks it. Rails spells the same switch so; asyncpg's is `statement_cache_size=0`,
# SQLAlchemy's `prepared_statement_cache_size=0`, psycopg's `prepare_threshold=None`.
POOLER_PARAMETER = "prepared_statements"
_FALSE, _TRUE = ("false", "0", "off", "no"), ("true", "1", "on", "yes")


@dataclass(frozen=True)
class Endpoint:
    """A DSN as Shoal reads it: `dsn` is what asyncpg gets (without Shoal's own
    `prepared_statements` parameter, which asyncpg would send to the server as a
    setting); `transaction_pooled` when that parameter is false."""

    dsn: str
    transaction_pooled: bool

    @classmethod
    def parse(cls, dsn: str) -> Endpoint:
        """InvalidInput for a `prepared_statements` value that is not a boolean."""
        base, mark, query = dsn.partition("?")
        pooled, kept = False, []
        for item in query.split("&") if query else ():
            name, _, value = item.partition("=")
            if unquote(name) != POOLER_PARAMETER:
                kept.append(item)
            elif unquote(value).lower() in _FALSE + _TRUE:
                pooled = unquote(value).lower() in _FALSE
            else:
                raise InvalidInput(f"{POOLER_PARAMETER}={unquote(value)} in the DSN: "
                                   "expected true or false")
        return cls(base + (mark + "&".join(kept) if kept else ""), pooled)

    def require_session(self, what: str) -> None:
        """SessionRequired, saying `what` needs a session, when this is a transaction pooler."""
        if self.transaction_pooled:
            raise SessionRequired(
                f"{what} needs a session of its own, and {where(self.dsn)} is marked as a "
                f"transaction pooler ({POOLER_PARAMETER}=false): give it a direct (or "
                "session-mode pooler's) DSN")


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
    if "unsupported startup parameter" in str(exc):
        return BackendUnavailable(f"cannot connect through {at}: {exc}: {_MARK_IT}")
    return BackendUnavailable(f"cannot connect to the database at {at}: {exc}")


async def connect(dsn: str, init: Init, application_name: str | None = None,
                  settings: dict[str, str] | None = None, **kwargs: Any) -> asyncpg.Connection:
    """A session: one connection with Shoal's session settings (and `settings`),
    initialised by `init`; unreachable or refused → BackendUnavailable, a DSN marked
    as a transaction pooler → SessionRequired."""
    endpoint = Endpoint.parse(dsn)
    endpoint.require_session("a LISTEN connection")
    settings = SESSION_SETTINGS | (settings or {}) | (
        {"application_name": application_name} if application_name else {})
    try:
        conn = await asyncpg.connect(endpoint.dsn, server_settings=settings, **kwargs)
    except Exception as exc:
        raise unavailable(dsn, exc) from exc
    try:
        await init(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


@dataclass(frozen=True)
class LinkTimeouts:
    """How long a worker's connection may stay silent, all sized from the claim TTL so
    that a dead link is noticed before the leases it carries lapse.

    - `statement`: every statement's bound, on the client (the connection is then
      dropped) and on the server (`statement_timeout`, and
      `idle_in_transaction_session_timeout` for a client gone mid-transaction);
    - `stall`: a statement unanswered this long makes the worker not ready;
    - `probe`: the kernel probes an idle connection's link after this long
      without traffic (TCP keepalives: no statement, nothing for the server's
      backend to do), so a link that died while idle is noticed too: its
      silence (`link_silence`) grows from the last answered probe, and reaches
      `stall` within `probe` and `stall` (plus half a `probe`, the listener's
      check);
    - `connect`: a connection attempt's bound;
    - TCP keepalives on both ends (`keepalive_idle`, `_interval`, `_count`) and
      `user_timeout` (unacknowledged data): the kernel ends a connection to a
      vanished peer, on the client and, for the server, so that a partitioned
      worker's session and its locks do not linger for the 2-hour default.
    """

    statement: float
    stall: float
    probe: float
    connect: float
    keepalive_idle: int
    keepalive_interval: int
    keepalive_count: int
    user_timeout: float

    @classmethod
    def for_claim_ttl(cls, ttl: float) -> LinkTimeouts:
        """Readiness within TTL/2 of a silent link (the keepalive's idle time, whole
        seconds, plus `stall`, shortened for TTLs under 8 s; for TTLs under 4 s
        the one-second keepalive alone is more than TTL/2), a
        hung statement dropped at TTL/2 (at least 1 s, at most 30 s), the kernel's
        verdict on a dead peer within about a TTL."""
        probe = min(5.0, ttl / 8)
        keepalive_idle = max(1, round(probe))  # the kernel counts whole seconds
        stall = min(15.0, ttl / 4, max(ttl / 8, ttl / 2 - keepalive_idle - probe / 2))
        return cls(statement=min(30.0, max(1.0, ttl / 2)), stall=stall,
                   probe=probe, connect=min(10.0, max(1.0, ttl / 2)),
                   keepalive_idle=keepalive_idle,
                   keepalive_interval=max(1, round(probe / 2)), keepalive_count=3,
                   user_timeout=max(1.0, ttl / 2))

    def server_settings(self) -> dict[str, str]:
        """Per-session server settings: the server's half of the bounds."""
        millis = round(self.statement * 1000)
        return {"statement_timeout": str(millis),
                "idle_in_transaction_session_timeout": str(millis),
                "client_connection_check_interval": str(round(self.probe * 1000)),
                **self.keepalive_settings()}

    def keepalive_settings(self) -> dict[str, str]:
        """The server's keepalives and user timeout alone: they end a session whose
        peer vanished, and never a slow statement of a live one."""
        return {"tcp_keepalives_idle": str(self.keepalive_idle),
                "tcp_keepalives_interval": str(self.keepalive_interval),
                "tcp_keepalives_count": str(self.keepalive_count),
                "tcp_user_timeout": str(round(self.user_timeout * 1000))}

    def apply_to_socket(self, conn: asyncpg.Connection) -> None:
        """The client's half: keepalives and the user timeout on the connection's
        socket (TCP only; Linux names the options as used here)."""
        sock = _tcp_socket(conn)
        if sock is None:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", self.keepalive_idle),
                              ("TCP_KEEPINTVL", self.keepalive_interval),
                              ("TCP_KEEPCNT", self.keepalive_count),
                              ("TCP_USER_TIMEOUT", round(self.user_timeout * 1000))):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)

    def link_silence(self, conn: asyncpg.Connection) -> float:
        """Seconds the connection's link has gone unanswered: since the last
        acknowledgement the kernel received, beyond the keepalive's idle time (0
        while data or keepalive probes are acknowledged, and for a local socket)."""
        sock = _tcp_socket(conn)
        if sock is None or not hasattr(socket, "TCP_INFO"):
            return 0.0
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        last_ack_ms = int.from_bytes(info[_LAST_ACK_RECV:_LAST_ACK_RECV + 4], sys.byteorder)
        return max(0.0, last_ack_ms / 1000 - self.keepalive_idle)


# Linux's struct tcp_info: 8 one-byte fields, 9 32-bit ones, then the times in ms:
# last_data_sent, last_ack_sent, last_data_recv, last_ack_recv.
_LAST_ACK_RECV = 8 + 9 * 4 + 3 * 4
_TCP_INFO_SIZE = _LAST_ACK_RECV + 4


def _tcp_socket(conn: asyncpg.Connection) -> socket.socket | None:
    """The connection's TCP socket (None: a Unix socket, or closed)."""
    transport = getattr(conn, "_transport", None)  # asyncpg keeps it private
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock  # type: ignore[no-any-return]


def describe(exc: BaseException) -> str:
    """An exception as one line that always names its cause (`TimeoutError` has no text)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Connections(Protocol):
    """What `Backend` needs of a connection holder."""

    def acquire(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...

    async def close(self) -> None: ...

    def require_session(self, what: str) -> None: ...


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


# The pooled connections of the client, the CLI and the operator: the kernel on both
# ends gives up on a vanished peer within about a minute (keepalives, user timeout);
# statements are not bounded, since a migration may rightly take long.
POOL_LINK = LinkTimeouts.for_claim_ttl(60.0)


class Pool(_Statements):
    """An asyncpg pool whose connections are discarded after an error that may
    have broken them, whose missing-schema errors say to run `shoal migrate`, and
    whose links to a vanished server are ended by the kernel (`POOL_LINK`).
    Through a transaction pooler (`endpoint.transaction_pooled`) it keeps no
    session state: no prepared statements, no startup settings."""

    def __init__(self, pool: asyncpg.Pool, schema: str, endpoint: Endpoint) -> None:
        self.pool = pool
        self.schema = schema
        self.endpoint = endpoint

    @classmethod
    async def open(cls, dsn: str, schema: str, init: Init, reset: Init, *, min_size: int,
                   max_size: int) -> Pool:
        async def setup(conn: asyncpg.Connection) -> None:
            POOL_LINK.apply_to_socket(conn)
            await init(conn)

        endpoint = Endpoint.parse(dsn)
        if endpoint.transaction_pooled:  # the pooler keeps its own server-side keepalives
            options: dict[str, Any] = {"statement_cache_size": 0}
        else:
            options = {"server_settings": SESSION_SETTINGS | POOL_LINK.keepalive_settings()}
        try:
            pool = await asyncpg.create_pool(endpoint.dsn, min_size=min_size,
                                             max_size=max_size, init=setup, reset=reset,
                                             timeout=10, **options)
        except Exception as exc:
            raise unavailable(dsn, exc) from exc
        return cls(pool, schema, endpoint)

    def require_session(self, what: str) -> None:
        """SessionRequired when this pool goes through a transaction pooler."""
        self.endpoint.require_session(what)

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
    - Every wait on the network is bounded (`LinkTimeouts`): a statement
      unanswered for `timeouts.statement` fails with TimeoutError and drops the
      connection, and so does every error that may have broken it (see the
      module docstring); the next statement opens a new one. Each drop is logged
      once, naming its cause. `connected` says whether a connection is open now,
      `lost` is set when it closes.
    - `silence()` says for how long the statement in flight has heard nothing
      (neither its answer nor a notification), or the link nothing at all (the
      kernel's acknowledgements, keepalives included), whichever is longer: a
      hung statement or a dead link, busy or idle, is seen without queueing
      anything behind it, and without a statement to the server.
    - Every new connection listens on `channels` before any statement runs on
      it, and bumps `generation`.
    - Notifications arrive while statements run; `on_notify(channel, payload)`
      is called for each.
    """

    def __init__(self, dsn: str, schema: str, channels: list[str], on_notify: OnNotify,
                 init: Init, *, application_name: str, timeouts: LinkTimeouts) -> None:
        """SessionRequired for a DSN marked as a transaction pooler."""
        Endpoint.parse(dsn).require_session(
            "a worker (it LISTENs, its hand-offs are addressed to its backend, it sets "
            "session timeouts)")
        self.dsn = dsn
        self.application_name = application_name
        self.schema = schema
        self.channels = channels
        self.on_notify = on_notify
        self.init = init
        self.timeouts = timeouts
        self.generation = 0
        self.lost = asyncio.Event()
        self.lost.set()  # nothing connected yet
        self.last_heard = time.monotonic()  # an answer or a notification arrived
        self._busy_since: float | None = None  # a statement (or transaction) in flight
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def busy(self) -> bool:
        """Whether a statement (or a transaction) is in flight."""
        return self._busy_since is not None

    def silence(self, now: float) -> float:
        """Seconds the link has gone unanswered (`LinkTimeouts.link_silence`), or the
        work in flight without hearing from the server, whichever is longer: a
        statement sent into a link that died earlier counts from when it died."""
        conn = self._conn
        link = (self.timeouts.link_silence(conn) if conn is not None and not conn.is_closed()
                else 0.0)
        if self._busy_since is None:
            return link
        return max(link, now - max(self._busy_since, self.last_heard))

    async def connect(self) -> None:
        """Open the connection now if there is none (never waiting behind a statement in
        flight on an open one); raises a transient error if it cannot."""
        if self.connected:
            return
        async with self._lock:
            await self._ensure()

    async def _ensure(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._conn is not None:
            self._drop("the server closed it")
        t = self.timeouts
        conn = await connect(self.dsn, self.init, self.application_name,
                             WORKER_SESSION_SETTINGS | t.server_settings(), timeout=t.connect,
                             command_timeout=t.statement)
        try:
            t.apply_to_socket(conn)
            for channel in self.channels:
                await conn.add_listener(channel, self._deliver)
        except BaseException:
            conn.terminate()
            raise
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        self._conn, self.lost = conn, lost
        self.generation += 1
        self.last_heard = time.monotonic()
        return conn

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self.last_heard = time.monotonic()
        self.on_notify(channel, payload)

    def _drop(self, cause: str) -> None:
        if self._conn is not None:
            log.warning("database connection lost: %s", cause)
            self._conn.terminate()
            self._conn = None
        self.lost.set()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._lock:
            conn = await self._ensure()
            self._busy_since = time.monotonic()
            try:
                yield conn
            except BaseException as exc:
                if _keeps_connection(exc):
                    self.last_heard = time.monotonic()  # the server answered, with an error
                else:
                    self._drop(self._cause(exc))
                translated = _translate(exc, self.schema)
                if translated is exc:
                    raise
                raise translated from exc
            else:
                self.last_heard = time.monotonic()
            finally:
                self._busy_since = None

    def require_session(self, what: str) -> None:
        """Nothing: a Session is one."""

    def _cause(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return (f"no answer for {self.timeouts.statement:g}s "
                    f"(statement bound, sized from the claim TTL)")
        if isinstance(exc, asyncio.CancelledError):
            return "a statement was cancelled mid-way"
        return describe(exc)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    async with asyncio.timeout(5):
                        await self._conn.close()
                self._conn = None
            self.lost.set()
