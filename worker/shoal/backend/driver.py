"""The Postgres backend: every read and write Shoal makes, over one asyncpg pool.

`Backend` is the driver boundary: the worker runtime, the client and the
operator call its methods and never see SQL. Each method is one statement or
one short transaction, so a lost connection never leaves half a change.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
from pydantic_core import PydanticSerializationError

from shoal import dag
from shoal.backend import migrate as migrations
from shoal.backend.codec import check_text, from_json, init_connection, json_text, printable
from shoal.backend.connections import (
    TRANSIENT_ERRORS,
    Connections,
    LinkTimeouts,
    OnNotify,
    Pool,
    Session,
)
from shoal.backend.models import (
    DEFAULT_LEASE_EXPIRIES,
    Backlog,
    CancelResult,
    Candidacy,
    ClaimedTask,
    CommandRecord,
    DeadLetter,
    DeadLetterFilter,
    Election,
    HeartbeatReply,
    KilledLease,
    KilledWorker,
    NewTask,
    Outcome,
    PoolTasks,
    QueueDepth,
    Reroute,
    Schedule,
    ScheduleStatus,
    StepStatus,
    TaskFilter,
    TaskFlow,
    TaskRow,
    TaskSummary,
    WorkerIdentity,
    WorkerRow,
    WorkflowStatus,
)
from shoal.backend.queries import Queries
from shoal.errors import (
    InvalidCommand,
    InvalidInput,
    MigrationFailed,
    NotFound,
    SchemaNotMigrated,
)

# A caller's own connection (transactional enqueue); the only asyncpg name
# the layers above the backend see.
Connection: TypeAlias = asyncpg.Connection

SCHEMA_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
FINAL_WORKFLOW_STATES = dag.FINAL_STATES
HEARTBEAT_CHUNK = 1000


def check_schema(schema: str) -> str:
    if not SCHEMA_PATTERN.match(schema):
        raise InvalidInput(f"invalid schema name {schema!r}: use lower-case letters, digits, _")
    return schema


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Make a released pool connection reusable, without asyncpg's reset round trip.

    asyncpg's default sends RESET ALL, UNLISTEN *, CLOSE ALL and an advisory
    unlock on every release: one more round trip per call, which was 40% of
    an idle claim. Shoal's statements leave no session state (settings are
    transaction-local, pool connections never LISTEN, locks are
    transaction-scoped), so only an unfinished transaction needs undoing.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _json(value: Any, what: str) -> str:
    try:
        return json_text(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None


class Backend:
    """Shoal's Postgres schema and every query over it."""

    def __init__(self, connections: Connections, dsn: str, schema: str) -> None:
        self.pool = connections
        self.session = connections if isinstance(connections, Session) else None
        self.dsn = dsn
        self.queries = Queries(check_schema(schema))

    @classmethod
    async def connect(cls, dsn: str, *, schema: str = "shoal", min_size: int = 1,
                      max_size: int = 10) -> Backend:
        """Open a pool; raises BackendUnavailable with the reason when it cannot."""
        pool = await Pool.open(dsn, check_schema(schema), init_connection, _reset_connection,
                               min_size=min_size, max_size=max_size)
        return cls(pool, dsn, schema)

    @classmethod
    def for_worker(cls, dsn: str, *, schema: str, worker_id: str, handoff_channel: str,
                   on_notify: OnNotify, timeouts: LinkTimeouts) -> Backend:
        """A Backend over one connection (a `Session`, in `.session`) that also
        listens on the tasks, control and `handoff_channel` channels, every wait
        on it bounded by `timeouts`. It connects on first use; `pg_stat_activity`
        shows it as application `shoal worker WORKER_ID`."""
        queries = Queries(check_schema(schema))
        channels = [queries.tasks_channel, queries.control_channel, handoff_channel]
        session = Session(dsn, schema, channels, on_notify, init_connection,
                          application_name=f"shoal worker {worker_id}"[:63],
                          timeouts=timeouts)
        return cls(session, dsn, schema)

    @property
    def schema(self) -> str:
        return self.queries.schema

    @property
    def tasks_channel(self) -> str:
        """Where enqueues announce ready tasks (payload: the namespace)."""
        return self.queries.tasks_channel

    @property
    def workflows_channel(self) -> str:
        """Where workflow changes are announced (payload: the workflow id)."""
        return self.queries.workflows_channel

    @property
    def control_channel(self) -> str:
        """Where cancels are announced to running workers (payload: the workflow id)."""
        return self.queries.control_channel

    async def close(self) -> None:
        await self.pool.close()

    async def migrate(self, aging_seconds: float | None = None) -> list[int]:
        """Create or upgrade the schema; see `shoal.backend.migrate`.

        Raises InvalidInput for an aging interval out of bounds, MigrationFailed
        (with `privileges` when the role may not), SessionRequired through a
        transaction pooler (its lock is a session's) or a transient error.
        """
        self.pool.require_session("migrating the schema (a session advisory lock)")
        if aging_seconds is not None and not 0 < aging_seconds <= MAX_AGING_SECONDS:
            raise InvalidInput(f"aging interval must be positive and at most 30 days, not "
                               f"{aging_seconds:g}s")
        try:
            async with self.pool.acquire() as conn:
                return await migrations.migrate(conn, self.queries, aging_seconds)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MigrationFailed(f"schema {self.schema!r}: {exc}", privileges=True) from None
        except asyncpg.PostgresError as exc:
            if isinstance(exc, TRANSIENT_ERRORS):
                raise
            raise MigrationFailed(f"cannot create or upgrade schema {self.schema!r}: "
                                  f"{exc}") from None

    async def aging_seconds(self) -> float:
        return float(await self.pool.fetchval(self.queries.aging_interval))

    async def check_migrated(self) -> None:
        """Raise SchemaNotMigrated unless every migration this version ships is applied."""
        needed = migrations.latest_version()
        try:
            applied = await self.pool.fetchval(self.queries.schema_version)
        except SchemaNotMigrated:
            applied = None
        if applied is None or applied < needed:
            found = "missing" if applied is None else f"at version {applied}"
            raise SchemaNotMigrated(f"schema {self.schema!r} is {found}, this Shoal needs "
                                    f"version {needed}: run `shoal migrate`")

    async def elect(self, holder: str, term: int, seconds: float,
                    grace: float = 0.0) -> Election:
        """Renew the maintenance role for `seconds` if `holder` leads it under `term`
        (0: none), or take it under a new term if it lapsed at least `grace` seconds
        ago (see Queries.elect)."""
        row = await self.pool.fetchrow(self.queries.elect, holder, term, seconds, grace)
        return Election(term=row["term"], holder=row["holder"], remaining=row["remaining"])

    async def resign(self, holder: str, term: int) -> bool:
        """End `holder`'s term `term` of the maintenance role now, if it is current;
        whether it was."""
        return bool(await self.pool.fetch(self.queries.resign, holder, term))

    # -- tasks -----------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask], *,
                      connection: Connection | None = None) -> list[int]:
        """Insert tasks in one statement with one NOTIFY per namespace; return their ids.

        A task whose idempotency key is held in its namespace is not inserted
        again; the holder's id is returned in its place. A key is held by the
        task enqueued with it, for good (`unique="forever"`) or while that task
        is active (`"active"`: until it succeeded, was cancelled or is dead);
        a key of one scope is not a key of the other.
        A task whose tags or priority are None gets those its workers declared
        (`register_task_names`), else none and 0.
        With `connection` (the caller's, inside its transaction), the tasks
        exist if and only if that transaction commits, and Postgres delivers
        the wake-up NOTIFY on commit; no task is handed off to a parked worker
        then (that would hold the worker's row until the caller commits).
        """
        if not tasks:
            return []
        for t in tasks:
            _check_task(t)
        target: Connections | Connection = self.pool if connection is None else connection
        ids: dict[int, int] = {}
        pending = list(range(len(tasks)))
        # A key's holder that was active at the insert may have ended before the
        # lookup of its id: that key is free now, so its task is enqueued again. Each
        # round either inserts or finds a holder, unless holders keep ending meanwhile.
        for _ in range(ENQUEUE_ROUNDS):
            found = await self._insert(target, [tasks[i] for i in pending], connection is None)
            ids.update((i, task_id) for i, task_id in zip(pending, found, strict=True)
                       if task_id is not None)
            pending = [i for i in pending if i not in ids]
            if not pending:
                return [ids[i] for i in range(len(tasks))]
        raise RuntimeError(f"the holders of idempotency keys "
                           f"{sorted({tasks[i].idempotency_key or '' for i in pending})} kept "
                           f"ending while {ENQUEUE_ROUNDS} enqueues looked them up")

    async def _insert(self, target: Connections | Connection, tasks: Sequence[NewTask],
                      handoff: bool) -> list[int | None]:
        """One enqueue statement (and a lookup of the keys' holders); per task, its id,
        its key's holder's, or None when that holder ended before it was looked up."""
        payloads = [_json(t.payload, f"payload of task {t.name!r}") for t in tasks]
        active = any(t.unique == "active" for t in tasks)
        rows = await target.fetch(
            self.queries.enqueue_active if active else self.queries.enqueue,
            [t.namespace for t in tasks], [t.name for t in tasks], payloads,
            [t.priority for t in tasks],
            [None if t.tags is None else ",".join(t.tags) for t in tasks],
            [t.delay_seconds for t in tasks], [t.max_attempts for t in tasks],
            [_millis(t.timeout_seconds) for t in tasks],
            [t.idempotency_key if t.unique == "forever" else None for t in tasks],
            [t.lease_expiries for t in tasks], handoff,
            [t.idempotency_key if t.unique == "active" else None for t in tasks])
        by_key: dict[tuple[str, str, str], int] = {}
        for r in rows:
            if r["idempotency_key"] or r["active_key"]:
                scope = "forever" if r["idempotency_key"] else "active"
                by_key[(r["namespace"], scope, r["idempotency_key"] or r["active_key"])] = r["id"]
        inserted = iter(r["id"] for r in rows if not r["idempotency_key"] and not r["active_key"])
        missing: dict[tuple[str, str], list[str]] = {}
        for t in tasks:
            if t.idempotency_key and (t.namespace, t.unique, t.idempotency_key) not in by_key:
                missing.setdefault((t.namespace, t.unique), []).append(t.idempotency_key)
        for (namespace, scope), keys in missing.items():
            for key, task_id in (await self._holders(target, namespace, scope, keys)).items():
                by_key[(namespace, scope, key)] = task_id
        return [by_key.get((t.namespace, t.unique, t.idempotency_key)) if t.idempotency_key
                else next(inserted) for t in tasks]

    async def _holders(self, target: Connections | Connection, namespace: str, scope: str,
                       keys: Sequence[str]) -> dict[str, int]:
        """The ids of the tasks holding `keys` of `scope` in `namespace` now, by key."""
        query = self.queries.active_keys if scope == "active" else self.queries.existing_keys
        return {r["key"]: r["id"] for r in await target.fetch(query, namespace, list(keys))}

    async def claim(self, worker: WorkerIdentity, limit: int,
                    lease_seconds: float) -> list[ClaimedTask]:
        """Lease up to `limit` claimable tasks to `worker` (see `claim_and_complete`)."""
        claimed, _ = await self.claim_and_complete(worker, limit, lease_seconds, ())
        return claimed

    async def claim_and_complete(
            self, worker: WorkerIdentity, limit: int, lease_seconds: float,
            succeeded: Sequence[Outcome], holding: Iterable[int] = ()
    ) -> tuple[list[ClaimedTask], set[int]]:
        """Lease up to `limit` claimable tasks to `worker` and, in the same
        transaction, record the successes `worker` holds the leases of.

        Returns the claimed tasks and the ids whose success was accepted (as
        `report` does). `succeeded` must be plain successes: no error, not
        cancelled, no workflow step. Tasks in `holding` (what the worker still
        runs or has to report) are never claimed, even when their lease expired
        meanwhile. When fewer tasks are found, the worker is parked on
        `worker.channel` (if it has one) until its next claim or a handoff:
        see `parse_handoff`.
        """
        rows = await self.pool.fetch(
            self.queries.claim, worker.namespace, list(worker.task_names), list(worker.tags),
            limit, lease_seconds, worker.id, _max_attempts(worker), worker.channel,
            [o.task_id for o in succeeded], [o.lease_token for o in succeeded],
            [o.result_json for o in succeeded], list(holding), _max_expiries(worker))
        completed = set(rows[-1]["completed"])
        return ([_claimed(r) for r in rows[:-1]],
                completed | await self._acknowledged(succeeded, completed))

    async def leased_to(self, worker_id: str, since: datetime) -> list[ClaimedTask]:
        """The unexpired leases `worker_id` took at or after `since` (the database's
        clock): handoffs and claims whose reply it may have missed. Leases of an
        earlier process under the same id (a restarted container) are not
        among them: they expire, and each expiry counts, so a task that kills
        its worker ends as a dead letter instead of killing every restart."""
        rows = await self.pool.fetch(self.queries.leased_to, worker_id, since)
        return [_claimed(r) for r in rows]

    async def clock(self) -> datetime:
        """The database's time now."""
        now: datetime = await self.pool.fetchval(self.queries.clock)
        return now

    async def report(self, outcomes: Sequence[Outcome], *,
                     worker_id: str | None = None) -> set[int]:
        """Record finished attempts; return the ids whose report was accepted.

        A report is accepted only with the task's current lease token (and,
        when given, by the worker holding it), so a worker that lost its lease
        cannot overwrite the new holder's result. A report whose outcome was
        recorded already under the same lease (the reply to the first one was
        lost) is accepted again and changes nothing.
        Workflow steps are recorded in one transaction with the workflow's
        next steps, so a crash never leaves a DAG stuck between two steps.
        """
        plain = [o for o in outcomes if o.workflow_id is None]
        steps = [o for o in outcomes if o.workflow_id is not None]
        accepted: set[int] = set()
        if plain:
            async with self.pool.acquire() as conn:
                accepted |= await self._report(conn, plain, worker_id)
        if steps:
            async with self.pool.acquire() as conn, conn.transaction():
                done = await self._report(conn, steps, worker_id)
                accepted |= done
                for workflow_id in sorted({o.workflow_id for o in steps
                                           if o.task_id in done and o.workflow_id}):
                    await self._advance(conn, workflow_id)
        return accepted | await self._acknowledged(outcomes, accepted)

    async def _acknowledged(self, outcomes: Sequence[Outcome], accepted: set[int]) -> set[int]:
        """Of the outcomes the fence refused, those recorded already under the same
        lease: a re-report (its first reply was lost) is acknowledged, not refused."""
        refused = [o for o in outcomes if o.task_id not in accepted]
        if not refused:
            return set()
        rows = await self.pool.fetch(self.queries.reported, [o.task_id for o in refused],
                                     [o.lease_token for o in refused])
        return {r["id"] for r in rows}

    async def _report(self, conn: asyncpg.Connection, outcomes: Sequence[Outcome],
                      worker_id: str | None) -> set[int]:
        q = self.queries
        ok = [o for o in outcomes if o.error is None and not o.cancelled]
        failed = [o for o in outcomes if o.error is not None and not o.cancelled]
        cancelled = [o for o in outcomes if o.cancelled]
        accepted: set[int] = set()
        if ok:
            rows = await conn.fetch(q.complete, [o.task_id for o in ok],
                                    [o.lease_token for o in ok],
                                    [o.result_json for o in ok], worker_id)
            accepted |= {r["id"] for r in rows}
        if failed:
            rows = await conn.fetch(q.fail, [o.task_id for o in failed],
                                    [o.lease_token for o in failed],
                                    [o.error for o in failed],
                                    [o.retry_in_seconds for o in failed], worker_id)
            accepted |= {r["id"] for r in rows}
        if cancelled:
            rows = await conn.fetch(q.cancelled, [o.task_id for o in cancelled],
                                    [o.lease_token for o in cancelled],
                                    [o.error or "cancelled" for o in cancelled], worker_id)
            accepted |= {r["id"] for r in rows}
        return accepted

    async def release(self, leases: Sequence[tuple[int, int]], *,
                      worker_id: str | None = None) -> set[int]:
        """Hand (task id, lease token) pairs back as ready now, without using up an attempt."""
        if not leases:
            return set()
        rows = await self.pool.fetch(self.queries.release, [i for i, _ in leases],
                                     [t for _, t in leases], worker_id)
        return {r["id"] for r in rows}

    async def heartbeat(self, worker: WorkerIdentity, leases: Sequence[tuple[int, int]],
                        lease_seconds: float, in_flight: int, draining: bool,
                        stand: Candidacy | None = None) -> HeartbeatReply:
        """Extend every lease held and refresh the worker's liveness row; with `stand`,
        stand for the maintenance role in the same statement (as `elect` would).

        One statement per HEARTBEAT_CHUNK leases (one in all for most workers).
        """
        rows: list[asyncpg.Record] = []
        election: Election | None = None
        for start in range(0, max(len(leases), 1), HEARTBEAT_CHUNK):
            chunk = leases[start:start + HEARTBEAT_CHUNK]
            ballot = stand if start == 0 else None
            *beat, outcome = await self.pool.fetch(
                self.queries.heartbeat, [i for i, _ in chunk], [t for _, t in chunk],
                lease_seconds, worker.id, worker.pool, worker.pod_name, worker.namespace,
                list(worker.tags), list(worker.task_names), worker.concurrency, in_flight,
                draining, _max_attempts(worker), worker.channel, _max_expiries(worker),
                ballot and ballot.holder, ballot and ballot.seconds, ballot and ballot.grace)
            rows += beat
            if ballot is not None:
                election = Election(term=outcome["term"], holder=outcome["holder"],
                                    remaining=outcome["remaining"])
        return HeartbeatReply(held=frozenset(r["id"] for r in rows),
                              cancel=frozenset(r["id"] for r in rows if r["cancel"]),
                              withdrawn=frozenset(r["id"] for r in rows if r["withdrawn"]),
                              election=election)

    async def remove_worker(self, worker_id: str) -> None:
        await self.pool.execute(self.queries.remove_worker, worker_id)

    async def register_task_names(self, namespace: str, names: Sequence[str],
                                  tags: Sequence[Sequence[str]] | None = None,
                                  priorities: Sequence[int] | None = None) -> None:
        """Remember that a worker serves `names` in `namespace` (see `task_name_known`),
        each with the tags and priority it declares (default none and 0), which an
        enqueue that sets neither takes (see `enqueue`)."""
        await self.pool.execute(
            self.queries.register_task_names, namespace, list(names),
            [",".join(t) for t in tags] if tags is not None else [""] * len(names),
            list(priorities) if priorities is not None else [0] * len(names))

    async def task_name_known(self, namespace: str, name: str) -> bool:
        """Whether any worker ever served task `name` in `namespace`."""
        return bool(await self.pool.fetchval(self.queries.task_name_known, namespace, name))

    async def get_task(self, task_id: int) -> TaskRow:
        row = await self.pool.fetchrow(self.queries.get_task, task_id)
        if row is None:
            raise NotFound(f"no task with id {task_id}")
        return TaskRow(**dict(row))

    # -- maintenance -------------------------------------------------------------

    # Maintenance: `term` is the maintenance role's term the caller leads under; a
    # term that is not the current one (or lapsed) does nothing. None: an
    # administrator's call, on behalf of no leader.

    async def reap_expired(self, limit: int = 1000, term: int | None = None) -> int:
        """Make tasks with expired leases claimable again (or dead); return how many."""
        return await self._expire(self.queries.reap_expired, limit, term)

    async def abandon(self, leases: Sequence[tuple[int, int]], *, worker_id: str,
                      reason: str) -> set[int]:
        """Give up (task id, lease token) pairs `worker_id` holds, as an expiry would
        (`reason` completes "worker W ...": "failed: ...", "could not renew ...").
        Returns the ids given up."""
        if not leases:
            return set()
        rows = await self._expire_rows(self.queries.abandon, [i for i, _ in leases],
                                       [t for _, t in leases], worker_id,
                                       printable(reason[:1000]))
        return {r["id"] for r in rows}

    async def end_killed_leases(self, killed: KilledWorker,
                                reroute: Reroute | None = None) -> list[KilledLease]:
        """End the leases a killed run of a pool's pod held (see Queries.end_killed_leases).

        Each is counted as a lease expiry whose reason is `killed.cause`: the task is
        ready again at once (with `reroute`'s tags, where given and its names allow)
        or, its lease-expiry budget used up, a dead letter. Fenced: a task that
        finished or was claimed again meanwhile is left as it is, so calling again
        changes nothing. A lease the reaper ended first gets the cause added to its
        error (`reaped`). Raises InvalidInput for a cause or tags that cannot be stored.
        """
        check_text(killed.cause, "cause")
        if reroute is not None:
            _check_tags(reroute.tags, "reroute")
        rows = await self._expire_rows(
            self.queries.end_killed_leases, killed.pool, killed.pod_name, killed.started_at,
            killed.killed_at, killed.cause[:1000],
            None if reroute is None else list(reroute.tags),
            None if reroute is None or reroute.names is None else list(reroute.names))
        return [KilledLease(task_id=r["id"], state=r["state"], rerouted=r["rerouted"],
                            reaped=r["reaped"]) for r in rows]

    async def _expire(self, query: str, *args: Any) -> int:
        return len(await self._expire_rows(query, *args))

    async def _expire_rows(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Run an expiring statement (see Queries._expiry) and, in its transaction, wake
        the workers of what is ready again and advance the workflows of dead steps."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            for namespace in {r["namespace"] for r in rows if r["state"] == "ready"}:
                await conn.execute(self.queries.notify_tasks, namespace)
            for workflow_id in sorted({r["workflow_id"] for r in rows if r["workflow_id"]}):
                await self._advance(conn, workflow_id)
        return rows

    async def promote(self, limit: int = 10_000) -> tuple[int, float | None]:
        """Make up to `limit` delayed tasks that came due ready, waking their workers;
        return how many, and the seconds until the next one comes due (None: none)."""
        row = await self.pool.fetchrow(self.queries.promote, limit)
        return int(row["promoted"]), row["next_in"]

    async def reap_workers(self, stale_seconds: float | None = None,
                           term: int | None = None) -> list[str]:
        """Forget workers not seen for `stale_seconds` (None: three of their own
        claim TTLs, i.e. six missed heartbeats); return their ids."""
        rows = await self.pool.fetch(self.queries.reap_workers, stale_seconds, term)
        return [r["id"] for r in rows]

    async def prune(self, retention_seconds: float, limit: int = 10_000,
                    term: int | None = None) -> tuple[int, int]:
        """Delete finished plain tasks and finished workflows older than the retention."""
        tasks = await self.pool.execute(self.queries.prune_tasks, retention_seconds, limit,
                                        term)
        workflows = await self.pool.execute(self.queries.prune_workflows, retention_seconds,
                                            limit, term)
        return int(tasks.split()[-1]), int(workflows.split()[-1])

    # -- dead letters --------------------------------------------------------------

    async def dead_letters(self, where: DeadLetterFilter, limit: int = 100) -> list[DeadLetter]:
        _check_int(limit, "limit", 0, MAX_LIST)
        rows = await self.pool.fetch(self.queries.list_dead, *_dead_args(where), limit)
        return [DeadLetter(**dict(r)) for r in rows]

    async def count_dead_letters(self, where: DeadLetterFilter) -> int:
        return int(await self.pool.fetchval(self.queries.count_dead, *_dead_args(where)))

    async def retry_dead_letters(self, where: DeadLetterFilter) -> int:
        """Make matching dead letters ready with fresh attempts; failed workflows resume.

        A dead letter whose active key (`unique="active"`) another task holds now
        stays dead: that task does its work.
        A revived workflow's steps that its failure cancelled wait again; they
        start as usual once the retried steps they depend on succeed (or are
        cancelled again if a retried step dies again).
        """
        races = 0
        while True:
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    row = await conn.fetchrow(self.queries.retry_dead, *_dead_args(where))
                    if row["revived_ids"]:
                        await conn.execute(self.queries.reblock_cancelled_steps,
                                           row["revived_ids"])
                return int(row["retried"])
            except asyncpg.UniqueViolationError:
                # A task took a retried letter's active key between the statement's
                # check and its update: again, and that letter stays dead.
                races += 1
                if races == RETRY_DEAD_RACES:
                    raise

    # -- workflows -----------------------------------------------------------------

    async def submit_workflow(self, spec: dag.WorkflowSpec, *, name: str,
                              namespace: str = "default", key: str | None = None,
                              workflow_id: UUID | None = None, paused: bool = False) -> UUID:
        """Create a workflow instance and its steps; idempotent by `key`.

        The DAG is validated first; an invalid one raises InvalidWorkflow and
        writes nothing. A second call with the same key returns the first id.
        With `paused`, the instance is created paused: no step starts before a resume.
        """
        dag.validate(spec)
        _check_workflow(spec, name, namespace, key)
        q = self.queries
        roots = {s.name for s in spec.steps if not s.depends_on}
        payloads = [_json(dag.resolve_input(s.input, spec.input, {}) if s.name in roots
                          else None, f"input of step {s.name!r}") for s in spec.steps]
        try:
            spec_json = _json(spec.model_dump(mode="json", by_alias=True), "workflow spec")
        except PydanticSerializationError as exc:
            raise InvalidInput(f"workflow spec is not JSON-serialisable: {exc}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            new_id = await conn.fetchval(
                q.insert_workflow, workflow_id or uuid.uuid4(), key, name, namespace,
                spec_json, _json(spec.input, "workflow input"), "paused" if paused else "running")
            if new_id is None:
                existing: UUID = await conn.fetchval(q.workflow_by_key, key)
                return existing
            await conn.execute(
                q.insert_steps, namespace, new_id,
                [s.name for s in spec.steps], [s.task for s in spec.steps], payloads,
                ["ready" if s.name in roots else "blocked" for s in spec.steps],
                [spec.priority if s.priority is None else s.priority for s in spec.steps],
                [",".join(spec.tags if s.tags is None else s.tags) for s in spec.steps],
                [s.retries + 1 for s in spec.steps],
                [_millis(s.timeout_seconds) for s in spec.steps])
            await conn.execute(q.notify_tasks, namespace)
            await conn.execute(q.notify_workflow, str(new_id))
            created: UUID = new_id
            return created

    async def _advance(self, conn: asyncpg.Connection, workflow_id: UUID) -> None:
        """Carry out `dag.advance` for a workflow one of whose steps changed.

        Runs inside the caller's transaction, under the workflow row's lock. A
        stored spec this version cannot read fails that workflow (reason
        UnreadableStoredSpec) and raises nothing, so the caller's report commits.
        """
        wf = await conn.fetchrow(self.queries.lock_workflow, workflow_id)
        if wf is None:
            return
        steps = await self._steps(conn, workflow_id)
        spec = dag.read_stored(wf["spec"])
        plan = dag.advance(wf["state"], wf["message"], spec, wf["input"], steps, json_text)
        await self._carry_out(conn, wf, plan)

    async def _steps(self, conn: asyncpg.Connection, workflow_id: UUID) -> dict[str, dag.Step]:
        rows = await conn.fetch(self.queries.workflow_steps, workflow_id)
        return {r["step"]: dag.Step(r["state"], r["result"], r["error"]) for r in rows}

    async def _carry_out(self, conn: asyncpg.Connection, wf: asyncpg.Record,
                         plan: dag.Plan) -> None:
        """Write a `dag.Plan` (see there) in the caller's transaction."""
        q = self.queries
        if plan.start:
            await conn.execute(q.unblock_steps, wf["id"], list(plan.start),
                               list(plan.start.values()))
        if plan.cancel_pending is not None:
            await conn.execute(q.cancel_pending_steps, wf["id"], plan.cancel_pending)
        if (plan.state, plan.message) != (wf["state"], wf["message"]):
            await conn.execute(q.set_workflow_state, wf["id"], plan.state, plan.message)
        if plan.notify_tasks:
            await conn.execute(q.notify_tasks, wf["namespace"])
        if plan.notify_control:
            await conn.execute(q.notify_control, str(wf["id"]))
        await conn.execute(q.notify_workflow, str(wf["id"]))

    async def command(self, workflow_id: UUID, command: str, *, actor: str,
                      reason: str = "", request_id: str | None = None) -> CommandRecord:
        """Pause, resume or cancel a workflow (`dag.command` decides); idempotent,
        recorded with who/why/when.

        Repeating a command the state already satisfies is recorded as not
        applied; a command with a request id seen before returns the first
        record. Resuming or pausing a finished or cancelled workflow raises
        InvalidCommand.
        """
        if command not in dag.COMMANDS:
            raise InvalidCommand(f"unknown command {command!r}: use pause, resume or cancel")
        check_text(actor, "actor")
        check_text(reason, "reason")
        q = self.queries
        async with self.pool.acquire() as conn, conn.transaction():
            wf = await conn.fetchrow(q.lock_workflow, workflow_id)
            if wf is None:
                raise NotFound(f"no workflow with id {workflow_id}")
            if request_id is not None:
                seen = await conn.fetchrow(q.command_by_request, workflow_id, request_id)
                if seen is not None:
                    return CommandRecord(**dict(seen))
            plan = dag.command(command, wf["state"], await self._steps(conn, workflow_id),
                               actor=actor, reason=reason)
            applied = plan.state != wf["state"]
            if applied:
                await self._carry_out(conn, wf, plan)
            record = await conn.fetchrow(q.record_command, workflow_id, command, actor, reason,
                                         request_id, applied)
            return CommandRecord(**dict(record))

    async def workflow_status(self, workflow_id: UUID) -> WorkflowStatus:
        """One workflow's status (a consistent snapshot); NotFound if there is none."""
        status = (await self.workflow_statuses([workflow_id])).get(workflow_id)
        if status is None:
            raise NotFound(f"no workflow with id {workflow_id}")
        return status

    async def workflow_statuses(self, ids: Sequence[UUID]) -> dict[UUID, WorkflowStatus]:
        """The status of each existing workflow among `ids`, read in three statements.

        Ids with no workflow (pruned, never created) are absent from the result.
        """
        if not ids:
            return {}
        q = self.queries
        unique = list(dict.fromkeys(ids))
        async with self.pool.acquire() as conn, conn.transaction(readonly=True,
                                                                 isolation="repeatable_read"):
            workflows = await conn.fetch(q.get_workflows, unique)
            steps = await conn.fetch(q.workflows_steps, unique)
            commands = await conn.fetch(q.workflows_commands, unique)
        steps_of: dict[UUID, list[asyncpg.Record]] = {}
        for s in steps:
            steps_of.setdefault(s["workflow_id"], []).append(s)
        commands_of: dict[UUID, list[asyncpg.Record]] = {}
        for c in commands:
            commands_of.setdefault(c["workflow_id"], []).append(c)
        return {wf["id"]: _workflow_status(wf, steps_of.get(wf["id"], []),
                                           commands_of.get(wf["id"], []))
                for wf in workflows}

    async def workflow_id_by_key(self, key: str) -> UUID | None:
        found: UUID | None = await self.pool.fetchval(self.queries.workflow_by_key, key)
        return found

    # -- what the operator reads ---------------------------------------------------

    async def backlog(self, namespace: str, tags: Iterable[str],
                      task_names: Iterable[str] | None = None) -> Backlog:
        """One pool's backlog, as `backlogs` reads it."""
        names = tuple(task_names) if task_names is not None else None
        return (await self.backlogs([PoolTasks(namespace, tuple(tags), names or None)]))[0]

    async def backlogs(self, pools: Sequence[PoolTasks], leads: Sequence[float] | None = None
                       ) -> list[Backlog]:
        """The backlog of each pool in `pools`, in order, read in one statement; `leads`
        (seconds, one per pool; default 0) says how far ahead a task counts as due."""
        rows = await self.pool.fetch(
            self.queries.backlogs, *_pool_arrays(pools),
            list(leads) if leads is not None else [0.0] * len(pools))
        return [Backlog(ready=r["ready"], running=r["running"], waiting=r["waiting"],
                        dead=r["dead"], due=r["due"],
                        oldest_ready_seconds=r["oldest_ready_seconds"],
                        newest_ready_seconds=r["newest_ready_seconds"],
                        next_due_seconds=r["next_due_seconds"]) for r in rows]

    async def flows(self, pools: Sequence[PoolTasks], targets: Sequence[float],
                    window_seconds: float, sample: int) -> list[list[TaskFlow]]:
        """Each pool's recent flow by task name (see `Queries.flows`), in one statement:
        over its last `sample` finished plain tasks within `window_seconds`; `targets`
        (seconds, one per pool) is the age past which a running task counts as long."""
        rows = await self.pool.fetch(self.queries.flows, *_pool_arrays(pools), list(targets),
                                     window_seconds, sample)
        flows: list[list[TaskFlow]] = [[] for _ in pools]
        for r in rows:
            flows[r["pool"] - 1].append(TaskFlow(
                name=r["name"], finished=r["finished"], busy_seconds=r["busy_seconds"],
                arrivals=r["arrivals"], ready=r["ready"], long_running=r["long_running"],
                span_seconds=r["span_seconds"]))
        return flows

    async def pool_workers(self, pool: str) -> list[WorkerRow]:
        rows = await self.pool.fetch(self.queries.pool_workers, pool)
        return [WorkerRow(**dict(r)) for r in rows]


    # -- day two: cancel one task, wait, inspect, periodic schedules ----------------

    async def cancel_task(self, task_id: int, *, actor: str, reason: str = "") -> CancelResult:
        """Cancel one plain task: ready or delayed ones at once; a running one is
        ended under its holder, which its next heartbeat (sent at once, on the
        control notification) tells to stop, and whose late result the fence
        refuses. A finished task is left as it is (`applied` False). A workflow
        step raises InvalidCommand: cancel its workflow instead.
        """
        q = self.queries
        message = f"cancelled by {actor}" + (f": {reason}" if reason else "")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.task_for_cancel, task_id)
            if row is None:
                raise NotFound(f"no task with id {task_id}")
            if row["workflow_id"] is not None:
                raise InvalidCommand(f"task {task_id} is a step of workflow {row['workflow_id']}:"
                                     f" cancel the workflow (shoal cancel {row['workflow_id']})")
            applied = row["state"] in ("delayed", "ready", "running")
            if applied:
                await conn.execute(q.cancel_task, task_id, message)
            if row["state"] == "running":
                await conn.execute(q.notify_control, f"task:{task_id}")
        return CancelResult(task_id, row["state"], applied)

    async def watch_task(self, task_id: int, waiter: UUID) -> None:
        """Register the wait `waiter` for the task: the end of the task is announced
        on the finished channel (its id) unless `read_watched`, called after this,
        finds it ended. Locks no task row. Undo with `unwatch_task`."""
        await self.pool.execute(self.queries.watch_task, task_id, waiter)

    async def read_watched(self, task_id: int) -> tuple[str, Any, str | None]:
        """The (state, result, error) of a task registered by `watch_task`, read
        without locking it unless it runs (see Queries.read_watched). NotFound if
        there is no such task."""
        row = await self.pool.fetchrow(self.queries.read_watched, task_id)
        if row is None:
            raise NotFound(f"no task with id {task_id}")
        return row["state"], row["result"], row["error"]

    async def unwatch_task(self, task_id: int, waiter: UUID) -> None:
        """Remove the registration `watch_task` made."""
        await self.pool.execute(self.queries.unwatch_task, task_id, waiter)

    async def prune_waits(self, limit: int = 10_000, term: int | None = None) -> int:
        """Delete up to `limit` registrations that crashed clients left behind (their
        task ended, or is gone, and they began over a minute ago); return how many.
        Fenced by the maintenance `term` as `prune` is."""
        deleted = await self.pool.execute(self.queries.prune_waits, limit, term)
        return int(deleted.split()[-1])

    async def list_tasks(self, where: TaskFilter, limit: int = 100) -> list[TaskSummary]:
        """Tasks matching `where`, newest first."""
        states = list(where.states) if where.states is not None else None
        tags = list(where.tags) if where.tags is not None else None
        rows = await self.pool.fetch(
            self.queries.list_tasks, states, where.name, where.namespace, tags,
            where.workflow_id, where.older_than, where.newer_than, where.before_id, limit)
        return [TaskSummary(**dict(r)) for r in rows]

    async def queue_depth(self, namespace: str | None = None,
                          tags: Iterable[str] | None = None,
                          task_names: Iterable[str] | None = None) -> list[QueueDepth]:
        """Depth by namespace and task name (see `Queries.queue_depth`); None matches all."""
        rows = await self.pool.fetch(
            self.queries.queue_depth, namespace, None if tags is None else list(tags),
            None if task_names is None else list(task_names))
        return [QueueDepth(**dict(r)) for r in rows]

    async def declare_periodic(self, namespace: str, schedules: Sequence[Schedule],
                               now: datetime) -> dict[str, datetime]:
        """Store the schedules (new ones start at `now`); return each one's last tick."""
        rows = await self.pool.fetch(
            self.queries.declare_periodic, namespace, [s.name for s in schedules],
            [s.task for s in schedules], [s.cron for s in schedules],
            [s.timezone for s in schedules],
            [_json(s.payload, f"payload of schedule {s.name!r}") for s in schedules],
            [s.priority for s in schedules], [",".join(s.tags) for s in schedules], now)
        return {r["name"]: r["last_tick"] for r in rows}

    async def fire_periodic(self, namespace: str, schedule: str, tick: datetime) -> int | None:
        """Enqueue the schedule's task for `tick` unless someone did; return its id, or None.

        One transaction moves the schedule's last tick forward and enqueues the
        task under a key unique to the tick, so however many workers call this
        for one tick, one task exists.
        """
        q = self.queries
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.take_tick, namespace, schedule, tick)
            if row is None:
                return None
            key = f"periodic:{schedule}:{tick.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
            (task_id,) = await self.enqueue(
                [NewTask(name=row["task"], payload=row["payload"], namespace=namespace,
                         priority=row["priority"], tags=tuple(row["tags"]),
                         idempotency_key=key)], connection=conn)
            await conn.execute(q.record_tick_task, namespace, schedule, task_id)
            return int(task_id)

    async def list_periodic(self, namespace: str | None = None) -> list[ScheduleStatus]:
        rows = await self.pool.fetch(self.queries.list_periodic, namespace)
        return [ScheduleStatus(**dict(r)) for r in rows]


def _workflow_status(wf: asyncpg.Record, steps: Sequence[asyncpg.Record],
                     commands: Sequence[asyncpg.Record]) -> WorkflowStatus:
    return WorkflowStatus(
        id=wf["id"], key=wf["key"], name=wf["name"], namespace=wf["namespace"],
        state=wf["state"], message=wf["message"], created_at=wf["created_at"],
        updated_at=wf["updated_at"], finished_at=wf["finished_at"],
        steps=[StepStatus(name=s["step"], task=s["name"], state=s["state"],
                          attempts=s["attempts"], max_attempts=s["max_attempts"],
                          output=s["result"], error=s["error"], started_at=s["started_at"],
                          finished_at=s["finished_at"]) for s in steps],
        commands=[CommandRecord(id=c["id"], command=c["command"], actor=c["actor"],
                                reason=c["reason"], request_id=c["request_id"],
                                applied=c["applied"], created_at=c["created_at"])
                  for c in commands])


def parse_handoff(message: str) -> ClaimedTask | None:
    """The task an enqueue leased to this worker, from its notification (Queries.enqueue);
    None when the message lacks what this version needs (a newer version may add keys,
    which are ignored)."""
    try:
        fields = from_json(message)
        return _claimed({**fields, "workflow_id": None, "step": None,  # plain, new
                         "alone": False})
    except (ValueError, TypeError, KeyError):
        return None


def _claimed(r: asyncpg.Record | Mapping[str, Any]) -> ClaimedTask:
    """A ClaimedTask from a claim's row (or a handoff's decoded notification)."""
    return ClaimedTask(
        id=r["id"], name=r["name"], payload=r["payload"], attempt=r["attempts"],
        max_attempts=r["max_attempts"], lease_token=r["lease_token"],
        timeout_seconds=r["timeout_ms"] / 1000 if r["timeout_ms"] else None,
        workflow_id=r["workflow_id"], step=r["step"], due_at=r["due_at"], alone=r["alone"],
        expires_at=r.get("expires_at"))


def _max_attempts(worker: WorkerIdentity) -> list[int]:
    return list(worker.max_attempts) or [1] * len(worker.task_names)


def _max_expiries(worker: WorkerIdentity) -> list[int]:
    return list(worker.max_expiries) or [DEFAULT_LEASE_EXPIRIES] * len(worker.task_names)


def _millis(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, round(seconds * 1000))


def _dead_args(where: DeadLetterFilter) -> tuple[Any, ...]:
    if where.task_name is not None:
        check_text(where.task_name, "task name")
    if where.namespace is not None:
        check_text(where.namespace, "namespace")
    if where.task_id is not None:
        _check_int(where.task_id, "task id", 1, INT64)
    return where.task_name, where.namespace, where.workflow_id, where.task_id


# Bounds checked before any SQL, so bad input is a clear error and never a failed
# statement. Priority times the aging interval must stay a sane timestamp offset.
INT32, INT64 = 2**31 - 1, 2**63 - 1
MAX_PRIORITY = 10_000
MAX_AGING_SECONDS = 30 * 86400.0
MAX_DELAY_SECONDS = 10 * 365 * 86400.0
MAX_TIMEOUT_SECONDS = INT32 / 1000  # stored in milliseconds, as an int32: 24.8 days
MAX_ATTEMPTS = 1001  # retries <= 1000
MAX_LEASE_EXPIRIES = 1000
MAX_NAMESPACE = 253  # a NOTIFY's payload; Kubernetes namespaces have 63
MAX_NAME = 200
MAX_KEY = 1000
UNIQUE_SCOPES = ("forever", "active")  # how long an idempotency key is held (NewTask)
ENQUEUE_ROUNDS = 10  # enqueue statements per call at most (see `enqueue`)
RETRY_DEAD_RACES = 3  # retry_dead_letters statements per call at most
MAX_LIST = 100_000


def _check_int(value: int, what: str, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low:,} and {high:,}, not {value:,}")


def _check_name(value: str, what: str, limit: int) -> None:
    if not value or len(value) > limit:
        raise InvalidInput(f"{what} must have 1 to {limit} characters, not {len(value):,}")
    check_text(value, what)


def _check_seconds(value: float, what: str, limit: float, unit: str) -> None:
    if not (math.isfinite(value) and 0 <= value <= limit):
        raise InvalidInput(f"{what} must be between 0 and {unit}, not {value:g}s")


def _check_tags(tags: Sequence[str], what: str) -> None:
    """Raise InvalidInput unless every tag can be stored (non-empty, no comma: enqueue
    joins them with commas)."""
    if any("," in tag or not tag for tag in tags):
        raise InvalidInput(f"{what}: invalid tags {list(tags)!r}")
    for tag in tags:
        check_text(tag, f"{what}: tag")


def _check_task(t: NewTask) -> None:
    """Raise InvalidInput unless every field of `t` fits its column."""
    _check_name(t.name, "task name", MAX_NAME)
    what = f"task {t.name!r}"
    _check_name(t.namespace, f"{what}: namespace", MAX_NAMESPACE)
    _check_tags(t.tags or (), what)
    if t.priority is not None:
        _check_int(t.priority, f"{what}: priority", -MAX_PRIORITY, MAX_PRIORITY)
    _check_seconds(t.delay_seconds, f"{what}: delay", MAX_DELAY_SECONDS, "10 years")
    if t.max_attempts is not None:
        if t.max_attempts < 1:
            raise InvalidInput(f"{what}: max_attempts must be at least 1")
        _check_int(t.max_attempts - 1, f"{what}: retries", 0, MAX_ATTEMPTS - 1)
    if t.lease_expiries is not None:
        _check_int(t.lease_expiries, f"{what}: lease expiries", 0, MAX_LEASE_EXPIRIES)
    if t.timeout_seconds is not None:
        _check_seconds(t.timeout_seconds, f"{what}: timeout", MAX_TIMEOUT_SECONDS, "24 days")
    if t.idempotency_key is not None:
        _check_name(t.idempotency_key, f"{what}: idempotency key", MAX_KEY)
    if t.unique not in UNIQUE_SCOPES:
        raise InvalidInput(f"{what}: unique must be one of {', '.join(UNIQUE_SCOPES)}, "
                           f"not {t.unique!r}")


def _check_workflow(spec: dag.WorkflowSpec, name: str, namespace: str, key: str | None) -> None:
    """Raise InvalidInput unless the workflow's names and numbers fit their columns."""
    _check_name(name, "workflow name", MAX_NAME)
    _check_name(namespace, "workflow namespace", MAX_NAMESPACE)
    if key is not None:
        _check_name(key, "workflow key", MAX_KEY)
    _check_int(spec.priority, "workflow priority", -MAX_PRIORITY, MAX_PRIORITY)
    for step in spec.steps:
        if step.priority is not None:
            _check_int(step.priority, f"step {step.name!r}: priority", -MAX_PRIORITY,
                       MAX_PRIORITY)
        if step.timeout_seconds is not None:
            _check_seconds(step.timeout_seconds, f"step {step.name!r}: timeout",
                           MAX_TIMEOUT_SECONDS, "24 days")
        check_text(step.task, f"step {step.name!r}: task")
        for tag in step.tags or spec.tags:
            check_text(tag, f"step {step.name!r}: tag")


def _pool_arrays(pools: Sequence[PoolTasks]) -> tuple[list[str], list[str], list[str | None]]:
    """Pools as the array parameters of `backlogs` and `flows`: namespaces, tags and
    names (JSON arrays; None: any name)."""
    return ([p.namespace for p in pools], [json.dumps(list(p.tags)) for p in pools],
            [json.dumps(list(p.names)) if p.names else None for p in pools])
