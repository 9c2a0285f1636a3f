"""Every SQL statement Shoal runs, in one place.

Statements are templates over `{schema}`; `Queries(schema)` renders them once.
Nothing outside the backend layer writes SQL.
"""

from __future__ import annotations

# What `resign` says on the control channel: the maintenance role is free now.
RESIGNED = "resigned:maintenance"


def _holding(worker: str) -> str:
    """The lease fence: rows `r(id, token)` whose lease is current and, when the
    worker id `worker` (a parameter such as "$4") is not NULL, held by that worker."""
    return (f"t.id = r.id AND t.lease_token = r.token AND t.state = 'running' "
            f"AND ({worker}::text IS NULL OR t.worker_id = {worker})")


def _stand(holder: str, term: str, seconds: str, grace: str) -> str:
    """Worker `holder`, leading under `term` (0: none), renews the maintenance role
    for `seconds`, or takes it under a new term once it lapsed `grace` seconds ago
    (parameters such as "$1"; a NULL holder stands for nothing). Returns the term
    won (see Queries.elect; `_election` reads the outcome)."""
    mine = f"l.holder = {holder} AND l.term = {term}"
    return f"""
        UPDATE {{schema}}.leaders l
        SET holder = {holder},
            term = l.term + (NOT ({mine} AND l.expires_at > now()))::int,
            elected_at = CASE WHEN {mine} AND l.expires_at > now()
                              THEN l.elected_at ELSE now() END,
            expires_at = now() + {seconds}::float8 * interval '1 second'
        WHERE l.role = 'maintenance' AND {holder}::text IS NOT NULL
          AND (l.expires_at <= now() - {grace}::float8 * interval '1 second' OR ({mine}))
        RETURNING l.term"""


# An election's outcome, after `won AS (_stand(...))`: the term won (NULL: none),
# who leads, and the seconds left of the term as it was before the statement.
_election = """(SELECT term FROM won) AS term, l.holder,
           greatest(extract(epoch FROM l.expires_at - now()), 0)::float8 AS remaining
    FROM {schema}.leaders l WHERE l.role = 'maintenance'"""


# Tasks `t`, each with `runnable`: false for a task of a workflow that is not running
# (paused, cancelling), whose claim waits for a command.
_RUNNABLE_TASKS = """{schema}.tasks t
    LEFT JOIN LATERAL (
        SELECT t.workflow_id IS NULL OR EXISTS (
            SELECT 1 FROM {schema}.workflows w WHERE w.id = t.workflow_id AND w.state = 'running')
        AS runnable) r ON true"""
# A task of a pool's backlog that is claimable now, and one that is not ready yet (it
# waits for its run_at) but will be without anyone's command (see _backlog_counts).
_READY = "t.state = 'ready' AND t.run_at <= now() AND runnable"
_NOT_YET = "(t.state = 'delayed' OR t.state = 'ready' AND t.run_at > now()) AND runnable"


def _backlog_counts(namespace: str, tags: str, names: str, lead: str) -> str:
    """A pool's backlog (see Queries.backlogs) as the select list and FROM of a query:
    tasks in `namespace` whose tags are a subset of `tags` and, unless `names` is
    NULL, whose name is among `names`; `lead` is the seconds ahead within which a
    not-yet-ready task counts as due (SQL expressions)."""
    return f"""
        count(*) FILTER (WHERE {_READY}) AS ready,
        count(*) FILTER (WHERE t.state = 'running') AS running,
        count(*) FILTER (WHERE t.state = 'delayed'
                         OR t.state = 'ready' AND (t.run_at > now() OR NOT runnable)) AS waiting,
        count(*) FILTER (WHERE t.state = 'dead') AS dead,
        count(*) FILTER (WHERE {_NOT_YET}
                         AND t.run_at <= now() + {lead} * interval '1 second') AS due,
        coalesce(extract(epoch FROM now() - min(t.run_at) FILTER (WHERE {_READY})), 0)::float8
            AS oldest_ready_seconds,
        coalesce(extract(epoch FROM now() - max(t.run_at) FILTER (WHERE {_READY})), 0)::float8
            AS newest_ready_seconds,
        extract(epoch FROM min(t.run_at) FILTER (
            WHERE {_NOT_YET} AND t.run_at > now() + {lead} * interval '1 second')
            - now())::float8 AS next_due_seconds
    FROM {_RUNNABLE_TASKS}
    WHERE t.state IN ('delayed', 'ready', 'running', 'dead')
      AND t.namespace = {namespace}
      AND t.tags <@ {tags}
      AND ({names} IS NULL OR t.name = ANY({names}))"""


def _pools(figure: str) -> str:
    """The FROM of a statement over many pools (see driver._pool_arrays): row `s` is
    pool i, with its namespace ($1[i]), its tags and names as JSON arrays ($2[i],
    $3[i]; names NULL: any), a float8 `figure` ($4[i]) and `pool` (i); `p` has its
    tags and names as text arrays."""
    return f"""unnest($1::text[], $2::text[], $3::text[], $4::float8[])
        WITH ORDINALITY AS s(namespace, tags, names, {figure}, pool)
    CROSS JOIN LATERAL (
        SELECT ARRAY(SELECT jsonb_array_elements_text(s.tags::jsonb)) AS tags,
               CASE WHEN s.names IS NOT NULL
                    THEN ARRAY(SELECT jsonb_array_elements_text(s.names::jsonb)) END AS names) p"""


def _leading(term: str) -> str:
    """The leader fence: true while the maintenance role's current term is `term` (a
    parameter such as "$2") and unexpired, or when `term` is NULL (an administrator's
    call, on behalf of no leader)."""
    return (f"({term}::bigint IS NULL OR EXISTS (SELECT 1 FROM {{schema}}.leaders "
            f"WHERE role = 'maintenance' AND term = {term} AND expires_at > now()))")


def _expiry(what: str, why: str) -> str:
    """The SET list of a lease ended without a report (expired, or given up by a worker
    that failed): back to ready in its place in line, the attempt not counted and one
    lease expiry used up; the expiry after the last makes the task dead. The token is
    bumped, so a late report under the old one is refused. The error reads
    `WHAT (3 of 4 allowed): WHY`."""
    return f"""state = CASE WHEN t.expiries >= t.max_expiries THEN 'dead' ELSE 'ready' END::{{schema}}.task_state,
        error = {what} || ' (' || (t.expiries + 1) || ' of ' || (t.max_expiries + 1)
                || ' allowed): ' || {why},
        finished_at = CASE WHEN t.expiries >= t.max_expiries THEN now() END,
        attempts = greatest(t.attempts - 1, 0),
        expiries = t.expiries + 1,
        lease_token = t.lease_token + 1,
        lease_expires_at = NULL,
        worker_id = NULL"""


# What the lease reaper's error says: `LEASE_EXPIRED (2 of 4 allowed): worker W stopped
# heartbeating` (see _expiry and reap_expired).
LEASE_EXPIRED = "'lease expired'"


def _stopped_heartbeating(worker: str) -> str:
    """Why the lease reaper ended a lease of `worker` (an SQL expression)."""
    return f"'worker ' || {worker} || ' stopped heartbeating'"


def _reroutable(ready: str) -> str:
    """Whether `end_killed_leases` reroutes a task that is ready again (`ready`, an SQL
    condition): a reroute's tags are given ($6) and its names ($7, NULL: any) hold the
    task's."""
    return (f"({ready} AND $6::text[] IS NOT NULL "
            f"AND ($7::text[] IS NULL OR t.name = ANY($7::text[])))")


def _holds_active_key(t: str) -> str:
    """Row `t` holds its active key: its task has not ended. tasks_active_key's predicate
    (migration 0010), which a lookup restates to use the index."""
    return (f"{t}.active_key IS NOT NULL"
            f" AND {t}.state IN ('blocked', 'delayed', 'ready', 'running')")


# The enqueue's conflict clauses: on the permanent key's index (tasks_idempotency),
# or, for a batch with active keys, on every unique index (so on tasks_active_key
# too; an ON CONFLICT names one index at most, and one that is not named raises).
_ON_KEY = "ON CONFLICT (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
_ON_ANY_KEY = "ON CONFLICT DO NOTHING"


class Queries:
    """The statements of this class, rendered for one schema.

    Class attributes are templates over `{schema}`; an instance holds them
    rendered, so `Queries("shoal").claim` is ready to run.
    """

    # -- schema management ------------------------------------------------------

    # Serialises migrations of one schema: held by the migrating session from the
    # first migration to the last (and by the bootstrap's transaction).
    lock_migrations = "SELECT pg_advisory_lock(hashtext('shoal.migrate.' || '{schema}'))"
    unlock_migrations = "SELECT pg_advisory_unlock(hashtext('shoal.migrate.' || '{schema}'))"

    bootstrap = """
    SELECT pg_advisory_xact_lock(hashtext('shoal.migrate.' || '{schema}'));
    CREATE SCHEMA IF NOT EXISTS {schema};
    CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    """

    applied_versions = "SELECT version FROM {schema}.schema_migrations ORDER BY version"

    record_migration = "INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"

    schema_version = "SELECT max(version) FROM {schema}.schema_migrations"

    # The maintenance role (see migration 0004): worker $1, holding term $2 (0 for
    # none), renews it for $3 seconds, or takes it with a new term once it lapsed
    # $4 seconds ago or more (a grace: see shoal.worker.maintenance).
    # A lapsed term is never renewed, even by its holder: whoever leads after a lapse
    # leads under a new term. `term` is the term led now (NULL: another worker
    # leads); `remaining` the seconds left of the term seen before this statement.
    elect = """
    WITH won AS (""" + _stand("$1", "$2", "$3", "$4") + """)
    SELECT """ + _election + """
    """

    # The holder of term $2 gives the role up (a drain): anyone may take it now, and
    # the workers hear it on the control channel.
    resign = """
    UPDATE {schema}.leaders SET expires_at = now()
    WHERE role = 'maintenance' AND holder = $1 AND term = $2 AND expires_at > now()
    RETURNING pg_notify('{schema}_control', '""" + RESIGNED + """')
    """

    # The aging interval is baked into an inlinable SQL function so every write
    # computes the same claim order and the claim needs no per-row arithmetic.
    define_sort_key = """
    CREATE OR REPLACE FUNCTION {schema}.sort_key(run_at timestamptz, priority integer)
    RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT run_at - priority * interval '{aging_seconds} seconds' $$
    """

    # NULL (no row) while the function does not exist yet.
    aging_interval = """
    SELECT substring(prosrc FROM 'interval ''([0-9.]+) seconds''')::float8
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = '{schema}' AND p.proname = 'sort_key'
    """

    # -- tasks ---------------------------------------------------------------------

    # Payloads are JSON text ($3::text[]), so the statement also runs on a caller's
    # connection whatever jsonb codec it set (transactional enqueue); $11 false
    # turns the handoff off (a caller's transaction must not hold a worker's row).
    # A key is permanent ($9) or held while the task is active ($12, see migration
    # 0010); a row whose key is held is skipped, after waiting, as unique indexes
    # do, for a concurrent transaction that inserted or ended the key's holder.
    # `enqueue_active` is the statement for batches with active keys (see _ON_KEY).
    # Tags ($5, comma-joined) and priority ($4) left NULL are the task's as its
    # workers declared them (task_names), else none and 0: one index probe, only
    # for rows that lack one.
    # Handoff: an enqueue of exactly one task, due now, without idempotency key,
    # whose JSON fits in a notification, is leased in the same statement to the
    # parked worker that parked longest among those that could claim it
    # (namespace, name, tags) and are alive: seen within their claim TTL, and the
    # backend process of the connection they parked (and listen) on still exists.
    # Provided no due ready task in the namespace comes first in claim order. The
    # worker gets the task in a NOTIFY on its own channel, with its lease's
    # expiry, and starts it without a claim round trip unless that expiry has
    # passed (see shoal.worker.ledger); the lease (token 1, the worker's TTL)
    # fences it as usual. Otherwise the task is ready and one NOTIFY per
    # namespace wakes the workers.
    enqueue = """
    WITH rows AS (
        SELECT r.namespace, r.name, r.payload::jsonb AS payload,
               coalesce(r.priority, d.priority, 0) AS priority, r.delay_s,
               r.max_attempts, r.timeout_ms, r.key, r.active_key, r.max_expiries, r.ord,
               CASE WHEN r.tags IS NULL THEN coalesce(d.tags, '{}'::text[])
                    WHEN r.tags = '' THEN '{}'::text[] ELSE string_to_array(r.tags, ',') END
                    AS tag_array
        FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
                    $6::float8[], $7::int[], $8::int[], $9::text[], $10::int[], $12::text[])
            WITH ORDINALITY
            AS r(namespace, name, payload, priority, tags, delay_s, max_attempts, timeout_ms, key,
                 max_expiries, active_key, ord)
        LEFT JOIN LATERAL (
            SELECT n.tags, n.priority FROM {schema}.task_names n
            WHERE (r.tags IS NULL OR r.priority IS NULL)
              AND n.namespace = r.namespace AND n.name = r.name
        ) d ON true
    ), handoff AS (
        UPDATE {schema}.workers w
        SET parked_channel = NULL
        FROM (
            SELECT p.id, p.parked_channel, p.claim_ttl,
                   coalesce(r.max_attempts,
                            p.max_attempts[array_position(p.task_names, r.name)]) AS max_attempts,
                   coalesce(r.max_expiries,
                            p.max_expiries[array_position(p.task_names, r.name)]) AS max_expiries
            FROM rows r, {schema}.workers p
            WHERE $11::boolean AND (SELECT count(*) FROM rows) = 1
              AND r.delay_s <= 0 AND r.key IS NULL AND r.active_key IS NULL
              AND octet_length(r.payload::text) <= 7000
              AND p.parked_channel IS NOT NULL
              AND p.last_seen > now() - p.claim_ttl * interval '1 second'
              AND p.parked_pid IN (SELECT pg_stat_get_backend_pid(b)
                                   FROM pg_stat_get_backend_idset() b)
              AND p.namespace = r.namespace
              AND r.name = ANY(p.task_names)
              AND r.tag_array <@ p.tags
              AND coalesce(r.max_attempts,
                           p.max_attempts[array_position(p.task_names, r.name)]) IS NOT NULL
              AND coalesce(r.max_expiries,
                           p.max_expiries[array_position(p.task_names, r.name)]) IS NOT NULL
              AND NOT EXISTS (
                    SELECT 1 FROM {schema}.tasks t
                    WHERE t.state = 'ready' AND t.namespace = r.namespace
                      AND t.sort_key <= {schema}.sort_key(now() + r.delay_s * interval '1 second',
                                                          r.priority)
                      AND t.run_at <= now())
            ORDER BY p.parked_at
            LIMIT 1
            FOR UPDATE OF p SKIP LOCKED
        ) p
        WHERE w.id = p.id
        RETURNING p.id, p.parked_channel, p.claim_ttl, p.max_attempts, p.max_expiries
    ), inserted AS (
        INSERT INTO {schema}.tasks
            (namespace, name, payload, priority, tags, run_at, sort_key,
             max_attempts, max_expiries, timeout_ms, idempotency_key, active_key,
             state, attempts, lease_token, lease_expires_at, worker_id, started_at)
        SELECT r.namespace, r.name, r.payload, r.priority, r.tag_array,
               now() + r.delay_s * interval '1 second',
               {schema}.sort_key(now() + r.delay_s * interval '1 second', r.priority),
               coalesce(h.max_attempts, r.max_attempts), coalesce(h.max_expiries, r.max_expiries),
               r.timeout_ms, r.key, r.active_key,
               CASE WHEN h.id IS NOT NULL THEN 'running' WHEN r.delay_s > 0 THEN 'delayed'
                    ELSE 'ready' END::{schema}.task_state,
               (h.id IS NOT NULL)::int, (h.id IS NOT NULL)::int,
               now() + h.claim_ttl * interval '1 second', h.id,
               CASE WHEN h.id IS NOT NULL THEN now() END
        FROM rows r LEFT JOIN handoff h ON true
        ORDER BY r.ord  -- RETURNING in the order given: the ids of keyless tasks by position
        """ + _ON_KEY + """
        RETURNING id, namespace, state, name, payload, idempotency_key, active_key, worker_id,
                  attempts,
                  max_attempts, lease_token, timeout_ms, run_at, lease_expires_at
    )
    SELECT i.id, i.namespace, i.idempotency_key, i.active_key,
           (SELECT count(pg_notify('{schema}_tasks', n.namespace))
            FROM (SELECT DISTINCT namespace FROM inserted WHERE state = 'ready') n) AS notified,
           (SELECT count(pg_notify(h.parked_channel, json_build_object(
                'id', t.id, 'name', t.name, 'payload', t.payload, 'attempts', t.attempts,
                'max_attempts', t.max_attempts, 'lease_token', t.lease_token,
                'timeout_ms', t.timeout_ms,
                'due_at', extract(epoch FROM t.run_at),
                'expires_at', extract(epoch FROM t.lease_expires_at))::text))
            FROM inserted t JOIN handoff h ON h.id = t.worker_id) AS handed_off
    FROM inserted i
    """

    enqueue_active = enqueue.replace(_ON_KEY, _ON_ANY_KEY)

    existing_keys = """
    SELECT id, idempotency_key AS key FROM {schema}.tasks
    WHERE namespace = $1 AND idempotency_key = ANY($2::text[])
    """

    # The tasks holding active keys $2 in namespace $1 (migration 0010).
    active_keys = """
    SELECT t.id, t.active_key AS key FROM {schema}.tasks t
    WHERE t.namespace = $1 AND t.active_key = ANY($2::text[]) AND """ + _holds_active_key("t") + """
    """

    # The end of a task someone waits for is announced on the finished channel by
    # the statement that ends it, from its RETURNING list, so it is delivered when
    # that transaction commits. Waited for: a row in `waits` (Client.wait inserts
    # one before it reads the task), or `waited` on the task's row, which a wait
    # sets only on a running task (see read_watched) and clients from before the
    # `waits` table (migration 0005) set on any task: they keep working during a
    # rolling upgrade. The IN is a hashed SubPlan: one scan of `waits` per
    # statement, one hash probe per ended row; a task nobody waits for never calls
    # pg_notify. `_finished_dead`: a failure is an end only as a dead letter.
    _waited = "(t.waited OR t.id IN (SELECT w.task_id FROM {schema}.waits w))"
    _announce = "(SELECT pg_notify('{schema}_finished', t.id::text)) IS NULL"
    _finished = "CASE WHEN " + _waited + " THEN " + _announce + " END"
    _finished_dead = "CASE WHEN t.state = 'dead' AND " + _waited + " THEN " + _announce + " END"

    # What a successful attempt's report writes (complete, and claim's completed).
    _succeed = ("state = 'succeeded', result = r.result, error = NULL, finished_at = now(), "
                "lease_expires_at = NULL")

    # Claim: ready, due, registered name, tags a subset of the worker's, workflow
    # running (or none), oldest effective priority first; skip rows others hold.
    # The candidates are found by their tuple address (ctid): this statement
    # holds their row locks, so the versions it found are the ones it updates,
    # and the update needs no second index lookup per row.
    # The task names' retries ($7) and lease-expiry budgets ($13) apply to tasks
    # whose producer set none.
    # Tasks $12 are the claimer's own (still running, or awaiting their report):
    # never claimed by it again, even when their lease expired meanwhile.
    # A suspect — a task whose lease expired twice, which may be what kills its
    # workers — is claimed alone (the first one among the candidates, nothing
    # else), and its worker claims nothing more while it runs (see `alone`):
    # tasks that share a worker with it lose at most one expiry to it.
    # A claim that finds fewer tasks than it asked for parks the worker on its
    # channel $8 (see enqueue), recording the backend process it listens on and
    # when it parked; a full one unparks it. The liveness row is written only
    # when that changes: a worker that stays parked keeps its place in line.
    # In the same statement (one round trip, one commit) it completes the
    # claimer's successful attempts $9..$11, fenced as `complete` is; the last
    # row lists the ids it completed, its task columns NULL.
    claim = """
    WITH completed AS (
        UPDATE {schema}.tasks t
        SET """ + _succeed + """
        FROM unnest($9::bigint[], $10::bigint[], $11::jsonb[]) AS r(id, token, result)
        WHERE """ + _holding("$6") + """
        RETURNING t.id, """ + _finished + """
    ), candidates AS (
        SELECT t.ctid AS tid, t.sort_key, t.id, t.expiries >= 2 AS alone
        FROM {schema}.tasks t
        WHERE t.state = 'ready'
          AND t.namespace = $1
          AND t.run_at <= now()
          AND t.name = ANY($2::text[])
          AND t.tags <@ $3::text[]
          AND t.id <> ALL($12::bigint[])
          AND (t.workflow_id IS NULL OR EXISTS (
                SELECT 1 FROM {schema}.workflows w
                WHERE w.id = t.workflow_id AND w.state = 'running'))
        ORDER BY t.sort_key, t.id
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    ), chosen AS (
        SELECT c.tid FROM candidates c
        WHERE NOT EXISTS (SELECT 1 FROM candidates s WHERE s.alone)
           OR c.tid = (SELECT s.tid FROM candidates s WHERE s.alone
                       ORDER BY s.sort_key, s.id LIMIT 1)
    ), claimed AS (
        UPDATE {schema}.tasks t
        SET state = 'running',
            attempts = t.attempts + 1,
            max_attempts = coalesce(t.max_attempts, d.max_attempts),
            max_expiries = coalesce(t.max_expiries, d.max_expiries),
            lease_token = t.lease_token + 1,
            lease_expires_at = now() + $5::float8 * interval '1 second',
            worker_id = $6,
            started_at = now()
        FROM chosen c, unnest($2::text[], $7::int[], $13::int[])
                       AS d(name, max_attempts, max_expiries)
        WHERE t.ctid = c.tid AND d.name = t.name
        RETURNING t.id, t.name, t.payload, t.attempts, t.max_attempts, t.lease_token,
                  t.timeout_ms, t.workflow_id, t.step,
                  extract(epoch FROM t.run_at)::float8 AS due_at, t.expiries >= 2 AS alone
    ), parking AS (
        SELECT CASE WHEN count(*) < $4 THEN $8::text END AS channel FROM claimed
    ), parked AS (
        UPDATE {schema}.workers w
        SET parked_channel = p.channel, parked_pid = pg_backend_pid(), parked_at = now()
        FROM parking p
        WHERE w.id = $6 AND (w.parked_channel IS DISTINCT FROM p.channel
                             OR w.parked_pid IS DISTINCT FROM pg_backend_pid())
    )
    SELECT *, NULL::bigint[] AS completed FROM claimed
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           coalesce((SELECT array_agg(id) FROM completed), '{}')
    """

    # Fenced: only the holder of the current lease (token, and worker id when
    # given) may finish a task. No index has a predicate on state = 'running',
    # so the planner looks each reported row up by primary key (linear), never
    # scans running tasks and rescans unnest() per row (quadratic).
    complete = """
    UPDATE {schema}.tasks t
    SET """ + _succeed + """
    FROM unnest($1::bigint[], $2::bigint[], $3::jsonb[]) AS r(id, token, result)
    WHERE """ + _holding("$4") + """
    RETURNING t.id, """ + _finished + """
    """

    # retry_in_s NULL: the task is dead; otherwise it is ready again after the delay.
    fail = """
    UPDATE {schema}.tasks t
    SET state = CASE WHEN r.retry_in_s IS NULL THEN 'dead' WHEN r.retry_in_s > 0 THEN 'delayed'
                     ELSE 'ready' END::{schema}.task_state,
        error = r.error,
        run_at = CASE WHEN r.retry_in_s IS NULL THEN t.run_at
                      ELSE now() + r.retry_in_s * interval '1 second' END,
        sort_key = CASE WHEN r.retry_in_s IS NULL THEN t.sort_key
                        ELSE {schema}.sort_key(now() + r.retry_in_s * interval '1 second', t.priority) END,
        finished_at = CASE WHEN r.retry_in_s IS NULL THEN now() END,
        lease_expires_at = NULL,
        worker_id = NULL
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[]) AS r(id, token, error, retry_in_s)
    WHERE """ + _holding("$5") + """
    RETURNING t.id, """ + _finished_dead + """
    """

    cancelled = """
    UPDATE {schema}.tasks t
    SET state = 'cancelled', error = r.error, finished_at = now(), lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS r(id, token, error)
    WHERE """ + _holding("$4") + """
    RETURNING t.id, """ + _finished + """
    """

    # A drained task goes back to the front of the line; the interrupted attempt
    # does not count against max_attempts. Every way a lease ends without a report
    # (a release, an expiry) bumps the token, so a report under the old one is
    # refused and `reported` tells acknowledged reports from refused ones.
    release = """
    UPDATE {schema}.tasks t
    SET state = 'ready', attempts = greatest(t.attempts - 1, 0), lease_expires_at = NULL,
        lease_token = t.lease_token + 1, worker_id = NULL
    FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
    WHERE """ + _holding("$3") + """
    RETURNING t.id, (SELECT pg_notify('{schema}_tasks', t.namespace)) IS NULL
    """

    # A worker gives leases up as if they had expired when it fails while holding
    # them (whatever made it fail may be one of these tasks, and an exit that cost
    # nothing would let one row crash-loop a pool), and when it stopped their
    # handlers itself because it could not renew them in time. ($4: why.)
    abandon = """
    UPDATE {schema}.tasks t
    SET """ + _expiry("'lease given up'", "'worker ' || $3 || ' ' || $4") + """
    FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
    WHERE """ + _holding("$3") + """
    RETURNING t.id, t.namespace, t.workflow_id, t.state::text, """ + _finished_dead + """
    """

    # One statement extends every lease a worker holds and refreshes its liveness
    # row; the answer lists the leases still held and which must be cancelled,
    # and (withdrawn) the attempts `cancel_task` ended under this worker's lease.
    # A follower's heartbeat also stands for the maintenance role ($16: the worker,
    # $17 seconds, $18 grace; NULL: it does not stand), as `elect` would: the last
    # row carries the election's outcome (see shoal.worker.maintenance), its lease
    # columns NULL. So an idle follower sends one statement a beat, not two.
    heartbeat = """
    WITH won AS (""" + _stand("$16", "0", "$17", "$18") + """
    ), beat AS (
        UPDATE {schema}.tasks t
        SET lease_expires_at = now() + $3::float8 * interval '1 second'
        FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
        WHERE """ + _holding("$4") + """
        RETURNING t.id, t.workflow_id
    ), alive AS (
        INSERT INTO {schema}.workers
            (id, pool, pod_name, namespace, tags, task_names, concurrency, in_flight, draining,
             max_attempts, max_expiries, claim_ttl)
        VALUES ($4, $5, $6, $7, $8::text[], $9::text[], $10, $11, $12, $13::int[], $15::int[],
                $3)
        ON CONFLICT (id) DO UPDATE
        SET last_seen = now(), in_flight = EXCLUDED.in_flight, draining = EXCLUDED.draining,
            namespace = EXCLUDED.namespace, tags = EXCLUDED.tags,
            task_names = EXCLUDED.task_names, max_attempts = EXCLUDED.max_attempts,
            max_expiries = EXCLUDED.max_expiries, claim_ttl = EXCLUDED.claim_ttl,
            -- a draining worker takes no handoff; nor does another process's channel
            parked_channel = CASE WHEN NOT EXCLUDED.draining
                                   AND {schema}.workers.parked_channel = $14
                                  THEN $14 END
        RETURNING 1
    )
    SELECT b.id, coalesce(w.state IN ('cancelling', 'cancelled'), false) AS cancel,
           false AS withdrawn, NULL::bigint AS term, NULL::text AS holder,
           NULL::float8 AS remaining
    FROM beat b LEFT JOIN {schema}.workflows w ON w.id = b.workflow_id
    UNION ALL
    SELECT t.id, true, true, NULL, NULL, NULL
    FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
    JOIN {schema}.tasks t ON t.id = r.id AND t.lease_token = r.token + 1
    WHERE t.state = 'cancelled'
    UNION ALL
    SELECT NULL, NULL, NULL, """ + _election + """
    """

    remove_worker = "DELETE FROM {schema}.workers WHERE id = $1"

    # With each name its declared tags ($3, comma-joined) and priority ($4), which
    # an enqueue that sets none takes (see enqueue); written only when they changed.
    register_task_names = """
    INSERT INTO {schema}.task_names AS n (namespace, name, tags, priority)
    SELECT $1, d.name,
           CASE WHEN d.tags = '' THEN '{}'::text[] ELSE string_to_array(d.tags, ',') END,
           d.priority
    FROM unnest($2::text[], $3::text[], $4::int[]) AS d(name, tags, priority)
    ON CONFLICT (namespace, name) DO UPDATE SET tags = EXCLUDED.tags, priority = EXCLUDED.priority
    WHERE (n.tags, n.priority) IS DISTINCT FROM (EXCLUDED.tags, EXCLUDED.priority)
    """

    task_name_known = """
    SELECT EXISTS (SELECT 1 FROM {schema}.task_names WHERE namespace = $1 AND name = $2)
    """

    # Tasks leased to a worker since it started, for a worker that reconnected: a
    # claim whose reply it lost is found here, with its lease's expiry.
    leased_to = """
    SELECT t.id, t.name, t.payload, t.attempts, t.max_attempts, t.lease_token, t.timeout_ms,
           t.workflow_id, t.step, extract(epoch FROM t.run_at)::float8 AS due_at,
           t.expiries >= 2 AS alone, extract(epoch FROM t.lease_expires_at)::float8 AS expires_at
    FROM {schema}.tasks t
    WHERE t.worker_id = $1 AND t.state = 'running' AND t.lease_expires_at > now()
      AND t.started_at >= $2
    """

    clock = "SELECT now()"

    # Expired leases (see _expiry), reaped by the maintenance leader of term $2.
    reap_expired = """
    WITH expired AS (
        SELECT ctid AS tid FROM {schema}.tasks
        WHERE lease_expires_at < now() AND state = 'running' AND """ + _leading("$2") + """
        ORDER BY lease_expires_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE {schema}.tasks t
    SET """ + _expiry(LEASE_EXPIRED, _stopped_heartbeating("coalesce(t.worker_id, '?')")) + """
    FROM expired e
    WHERE t.ctid = e.tid
    RETURNING t.id, t.namespace, t.workflow_id, t.state::text, """ + _finished_dead + """
    """

    # The leases a killed run of a pool's pod held (see KilledWorker): $1 pool, $2 pod
    # name, $3 and $4 when the run started and was killed, $5 the cause, $6 a reroute's
    # tags (NULL: none) for tasks named in $7 (NULL: any name).
    # Each lease the pod's workers took in that window and still hold ends as an
    # expiry (see _expiry) whose reason is the cause: ready again at once, in its
    # place in line, or dead once its lease-expiry budget is used up; a retry takes
    # the reroute's tags. Fenced as every expiry is: a task that finished, was
    # re-claimed (by another worker, or by the pod's next run, whose leases are
    # later than $4) or ended already is not running under such a lease and is left
    # as it is, so a second call changes nothing.
    # Where the lease reaper got there first (the error it wrote names the pod's
    # worker, and the task was not claimed since), the cause is added to that error
    # and a retry is rerouted; nothing is counted twice. That costs a scan of the
    # namespace's ready and dead tasks (no index knows a task's last worker), so it
    # is looked for only once half a claim TTL has passed since the kill (a one-time
    # filter): before that no lease renewed on schedule can have expired, and a kill
    # seen at once, as the operator's watch sees it, scans nothing.
    end_killed_leases = """
    WITH killed AS (
        SELECT id, namespace, claim_ttl,
               """ + _stopped_heartbeating("id") + """ AS reaped_why
        FROM {schema}.workers WHERE pool = $1 AND pod_name = $2
    ), ended AS (
        UPDATE {schema}.tasks t
        SET """ + _expiry("'worker killed'", "$5") + """,
            tags = CASE WHEN """ + _reroutable("t.expiries < t.max_expiries") + """
                        THEN $6::text[] ELSE t.tags END
        FROM killed k
        WHERE t.worker_id = k.id AND t.state = 'running' AND t.lease_expires_at IS NOT NULL
          AND t.started_at BETWEEN $3 AND $4
        RETURNING t.id, t.namespace, t.workflow_id, t.state::text, false AS reaped,
                  """ + _reroutable("t.state = 'ready'") + """ AS rerouted,
                  """ + _finished_dead + """ AS announced
    ), amended AS (
        UPDATE {schema}.tasks t
        SET error = t.error || ': ' || $5,
            tags = CASE WHEN """ + _reroutable("t.state = 'ready'") + """
                        THEN $6::text[] ELSE t.tags END
        FROM killed k
        WHERE (SELECT bool_or(now() > $4 + claim_ttl / 2 * interval '1 second') FROM killed)
          AND t.namespace = k.namespace AND (t.state = 'ready' OR t.state = 'dead')
          AND t.worker_id IS NULL AND t.started_at BETWEEN $3 AND $4
          AND starts_with(t.error, """ + LEASE_EXPIRED + """ || ' (')
          AND right(t.error, length(k.reaped_why) + 3) = '): ' || k.reaped_why
        RETURNING t.id, t.namespace, t.workflow_id, t.state::text, true,
                  """ + _reroutable("t.state = 'ready'") + """, NULL::boolean
    )
    SELECT * FROM ended UNION ALL SELECT * FROM amended
    """

    # Delayed tasks that came due become ready (in their place in line: sort_key was
    # set for their run_at), up to $1 of them, their namespaces told; and when the
    # next delayed task comes due, in seconds (NULL: none). Safe from any worker:
    # the maintenance leader calls it (see shoal.worker.scheduler).
    promote = """
    WITH due AS (
        SELECT ctid AS tid FROM {schema}.tasks
        WHERE state = 'delayed' AND run_at <= now()
        ORDER BY run_at
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ), promoted AS (
        UPDATE {schema}.tasks t SET state = 'ready' FROM due d WHERE t.ctid = d.tid
        RETURNING t.namespace
    )
    SELECT (SELECT count(*) FROM promoted) AS promoted,
           (SELECT count(pg_notify('{schema}_tasks', n.namespace))
            FROM (SELECT DISTINCT namespace FROM promoted) n) AS notified,
           (SELECT extract(epoch FROM min(run_at) - now())::float8 FROM {schema}.tasks
            WHERE state = 'delayed' AND run_at > now()) AS next_in
    """

    # Of reports the fence refused, those whose outcome is recorded already under
    # the same lease (a re-report after a lost reply): acknowledged, not refused.
    reported = """
    SELECT t.id FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
    JOIN {schema}.tasks t ON t.id = r.id AND t.lease_token = r.token
    WHERE t.state <> 'running'
    """

    notify_tasks = "SELECT pg_notify('{schema}_tasks', $1)"

    reap_workers = """
    DELETE FROM {schema}.workers
    WHERE last_seen < now() - coalesce($1::float8, 3 * claim_ttl) * interval '1 second'
      AND """ + _leading("$2") + """
    RETURNING id
    """

    # Pruning: the oldest finished rows first (through their partial index), locked
    # with SKIP LOCKED so that no claim's or report's lock makes it wait, and deleted
    # by tuple address (`id IN (...)` was planned as a scan of the whole table).
    prune_tasks = """
    WITH doomed AS (
        SELECT ctid AS tid FROM {schema}.tasks
        WHERE state IN ('succeeded', 'cancelled') AND workflow_id IS NULL
          AND finished_at < now() - $1::float8 * interval '1 second' AND """ + _leading("$3") + """
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM {schema}.tasks t USING doomed d WHERE t.ctid = d.tid
    """

    prune_workflows = """
    WITH doomed AS (
        SELECT ctid AS tid FROM {schema}.workflows
        WHERE finished_at < now() - $1::float8 * interval '1 second' AND """ + _leading("$3") + """
        ORDER BY finished_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM {schema}.workflows w USING doomed d WHERE w.ctid = d.tid
    """

    get_task = """
    SELECT id, namespace, name, payload, state::text, priority, tags, run_at, enqueued_at, attempts,
           max_attempts, expiries, max_expiries, lease_token, worker_id, workflow_id, step, result,
           error, started_at, finished_at
    FROM {schema}.tasks WHERE id = $1
    """

    # -- dead letters ----------------------------------------------------------------

    dead_filter = """
    state = 'dead'
    AND ($1::text IS NULL OR name = $1)
    AND ($2::text IS NULL OR namespace = $2)
    AND ($3::uuid IS NULL OR workflow_id = $3)
    AND ($4::bigint IS NULL OR id = $4)
    """

    list_dead = """
    SELECT id, namespace, name, payload, attempts, max_attempts, error, workflow_id, step, finished_at
    FROM {schema}.tasks WHERE """ + dead_filter + """
    ORDER BY finished_at DESC, id DESC LIMIT $5
    """

    count_dead = "SELECT count(*) FROM {schema}.tasks WHERE " + dead_filter

    # A retried dead letter gets a fresh set of attempts and runs now. Not one whose
    # active key (migration 0010) another task holds now: that task does its work.
    retry_dead = """
    WITH retried AS (
        UPDATE {schema}.tasks t
        SET state = 'ready', attempts = 0, expiries = 0, run_at = now(),
            sort_key = {schema}.sort_key(now(), priority),
            finished_at = NULL, error = NULL, worker_id = NULL
        WHERE """ + dead_filter + """
          AND NOT (t.active_key IS NOT NULL AND EXISTS (
                SELECT 1 FROM {schema}.tasks o
                WHERE o.namespace = t.namespace AND o.active_key = t.active_key
                  AND """ + _holds_active_key("o") + """))
        RETURNING t.id, t.namespace, t.workflow_id
    ), revived AS (
        UPDATE {schema}.workflows w
        SET state = 'running', message = NULL, finished_at = NULL, updated_at = now()
        WHERE w.state = 'failed' AND w.id IN (SELECT workflow_id FROM retried)
        RETURNING w.id
    )
    SELECT
        (SELECT count(*) FROM retried) AS retried,
        (SELECT count(pg_notify('{schema}_tasks', n.namespace))
         FROM (SELECT DISTINCT namespace FROM retried) n) AS notified,
        (SELECT count(pg_notify('{schema}_workflows', id::text)) FROM revived) AS revived,
        (SELECT array_agg(id) FROM revived) AS revived_ids
    """

    # A failed workflow cancelled its pending steps; when it revives they wait again
    # (only a failure cancels steps of a workflow that stays able to run).
    reblock_cancelled_steps = """
    UPDATE {schema}.tasks
    SET state = 'blocked', error = NULL, finished_at = NULL
    WHERE workflow_id = ANY($1::uuid[]) AND state = 'cancelled'
    """

    # -- workflows -------------------------------------------------------------------

    insert_workflow = """
    INSERT INTO {schema}.workflows (id, key, name, namespace, spec, input, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
    """

    workflow_by_key = "SELECT id FROM {schema}.workflows WHERE key = $1"

    insert_steps = """
    INSERT INTO {schema}.tasks
        (namespace, name, payload, state, priority, tags, sort_key, max_attempts, timeout_ms,
         workflow_id, step)
    SELECT $1, r.name, r.payload, r.state::{schema}.task_state, r.priority,
           CASE WHEN r.tags = '' THEN '{}'::text[] ELSE string_to_array(r.tags, ',') END,
           {schema}.sort_key(now(), r.priority), r.max_attempts, r.timeout_ms, $2, r.step
    FROM unnest($3::text[], $4::text[], $5::jsonb[], $6::text[], $7::int[], $8::text[],
                $9::int[], $10::int[])
        AS r(step, name, payload, state, priority, tags, max_attempts, timeout_ms)
    """

    lock_workflow = """
    SELECT id, key, name, namespace, spec, input, state, message, created_at, updated_at, finished_at
    FROM {schema}.workflows WHERE id = $1 FOR UPDATE
    """

    workflow_steps = """
    SELECT id, step, name, state::text, attempts, max_attempts, result, error, started_at,
           finished_at
    FROM {schema}.tasks WHERE workflow_id = $1 ORDER BY id
    """

    unblock_steps = """
    UPDATE {schema}.tasks t
    SET state = 'ready', payload = r.payload, run_at = now(),
        sort_key = {schema}.sort_key(now(), t.priority)
    FROM unnest($2::text[], $3::jsonb[]) AS r(step, payload)
    WHERE t.workflow_id = $1 AND t.step = r.step AND t.state = 'blocked'
    RETURNING t.id
    """

    # Every step it cancels is announced, waited for or not (see read_watched).
    cancel_pending_steps = """
    UPDATE {schema}.tasks t
    SET state = 'cancelled', finished_at = now(), error = $2
    WHERE workflow_id = $1 AND state IN ('blocked', 'delayed', 'ready')
    RETURNING """ + _announce + """
    """

    set_workflow_state = """
    UPDATE {schema}.workflows
    SET state = $2, message = $3, updated_at = now(),
        finished_at = CASE WHEN $2 IN ('cancelled', 'succeeded', 'failed') THEN now() END
    WHERE id = $1
    """

    notify_workflow = "SELECT pg_notify('{schema}_workflows', $1::text)"

    notify_control = "SELECT pg_notify('{schema}_control', $1::text)"

    record_command = """
    INSERT INTO {schema}.workflow_commands (workflow_id, command, actor, reason, request_id, applied)
    VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING id, command, actor, reason, request_id, applied, created_at
    """

    command_by_request = """
    SELECT id, command, actor, reason, request_id, applied, created_at
    FROM {schema}.workflow_commands WHERE workflow_id = $1 AND request_id = $2
    """

    # Many workflows at once: the operator's status sync reads a batch per round.
    get_workflows = """
    SELECT id, key, name, namespace, spec, input, state, message, created_at, updated_at, finished_at
    FROM {schema}.workflows WHERE id = ANY($1::uuid[])
    """

    workflows_steps = """
    SELECT workflow_id, id, step, name, state::text, attempts, max_attempts, result, error,
           started_at, finished_at
    FROM {schema}.tasks WHERE workflow_id = ANY($1::uuid[]) ORDER BY workflow_id, id
    """

    workflows_commands = """
    SELECT workflow_id, id, command, actor, reason, request_id, applied, created_at
    FROM {schema}.workflow_commands WHERE workflow_id = ANY($1::uuid[]) ORDER BY workflow_id, id
    """

    # -- what the operator reads -------------------------------------------------------

    # The backlog of many pools in one statement (the operator reads every pool on
    # one database per evaluation round; pools as _pools has them, $4[i] the lead in
    # seconds): the tasks in its namespace whose tags are a subset of the pool's and
    # whose name it runs. Ready: claimable now; waiting: delayed, or in a workflow
    # that is not running; due: not yet ready but due within the lead (or overdue,
    # waiting for a worker's scheduler); the oldest and the newest ready task's age;
    # the seconds to the run_at of the next waiting task not yet due (NULL: none).
    # One row per pool, `pool` its position.
    backlogs = """
    SELECT s.pool, c.ready, c.running, c.waiting, c.dead, c.due, c.oldest_ready_seconds,
           c.newest_ready_seconds, c.next_due_seconds
    FROM """ + _pools("lead") + """
    CROSS JOIN LATERAL (
        SELECT """ + _backlog_counts("s.namespace", "p.tags", "p.names", "s.lead") + """) c
    ORDER BY s.pool
    """

    # What a latency target needs of each pool (pools as _pools has them, $4[i] its
    # target in seconds), by task name: over the last $6 finished plain tasks of the
    # pool within $5 seconds (the tasks_finished index, newest first), how many
    # finished and their summed seconds from start to finish; how many became ready
    # (run_at) within the span that sample covers, finished or still live; how many
    # are ready now; how many have been running longer than the target; and that
    # span in seconds ($5 unless the sample was full).
    flows = """
    SELECT s.pool, f.name, f.finished, f.busy_seconds, f.arrivals, f.ready, f.long_running,
           f.span_seconds
    FROM """ + _pools("target") + """
    CROSS JOIN LATERAL (
        WITH recent AS (
            SELECT t.name, t.run_at, extract(epoch FROM t.finished_at - t.started_at) AS busy,
                   t.finished_at
            FROM {schema}.tasks t
            WHERE t.state = 'succeeded' AND t.workflow_id IS NULL
              AND t.finished_at > now() - $5::float8 * interval '1 second'
              AND t.namespace = s.namespace AND t.tags <@ p.tags
              AND (p.names IS NULL OR t.name = ANY(p.names))
            ORDER BY t.finished_at DESC LIMIT $6::int),
        span AS (
            SELECT CASE WHEN count(*) < $6::int THEN $5::float8
                        ELSE greatest(extract(epoch FROM now() - min(finished_at)), 0.001)
                   END::float8 AS seconds
            FROM recent),
        live AS (
            SELECT t.name, t.state, t.run_at, t.started_at FROM {schema}.tasks t
            WHERE t.state IN ('ready', 'running') AND t.run_at <= now()
              AND t.namespace = s.namespace AND t.tags <@ p.tags
              AND (p.names IS NULL OR t.name = ANY(p.names))),
        named AS (
            SELECT r.name, count(*) AS finished, sum(r.busy) AS busy_seconds,
                   count(*) FILTER (WHERE r.run_at > now() - span.seconds * interval '1 second')
                       AS arrivals, 0::bigint AS ready, 0::bigint AS long_running
            FROM recent r, span GROUP BY r.name
            UNION ALL
            SELECT l.name, 0, 0, count(*) FILTER (
                       WHERE l.run_at > now() - span.seconds * interval '1 second'),
                   count(*) FILTER (WHERE l.state = 'ready'),
                   count(*) FILTER (WHERE l.state = 'running'
                                    AND l.started_at < now() - s.target * interval '1 second')
            FROM live l, span GROUP BY l.name)
        SELECT n.name, sum(n.finished)::bigint AS finished,
               sum(n.busy_seconds)::float8 AS busy_seconds, sum(n.arrivals)::bigint AS arrivals,
               sum(n.ready)::bigint AS ready, sum(n.long_running)::bigint AS long_running,
               max(span.seconds) AS span_seconds
        FROM named n, span GROUP BY n.name) f
    ORDER BY s.pool, f.name
    """

    pool_workers = """
    SELECT id, pool, pod_name, namespace, tags, task_names, concurrency, in_flight, draining,
           started_at, last_seen
    FROM {schema}.workers WHERE pool = $1 ORDER BY id
    """

    # == Day two: cancel one task, wait for a result, inspect, periodic schedules =====
    # (statements of migration 0003; the ones above are unchanged but for a parameter)

    # -- cancel one task ---------------------------------------------------------------

    task_for_cancel = """
    SELECT id, state::text, workflow_id, worker_id FROM {schema}.tasks WHERE id = $1 FOR UPDATE
    """

    # A running task's lease token is bumped, as a release's is: its holder's
    # report is refused (and not taken for a re-report of an outcome recorded
    # under its lease); the heartbeat tells the holder (withdrawn: cancelled,
    # and the token one past the held one). The end is announced, waited for or
    # not (see read_watched).
    cancel_task = """
    UPDATE {schema}.tasks t
    SET state = 'cancelled', error = $2, finished_at = now(), lease_expires_at = NULL,
        lease_token = t.lease_token + (t.state = 'running')::int
    WHERE id = $1 AND state IN ('delayed', 'ready', 'running')
    RETURNING """ + _announce + """
    """

    # -- wait for a task's end (see _finished) -----------------------------------------

    # A wait registers (`watch_task`, committed on its own), then reads the task
    # (`read_watched`), and sleeps until the finished channel names it. Neither
    # statement locks a ready task's row: a claim skips locked rows, and the task
    # would wait for the worker's next poll (issue 18). The announcement is not
    # lost, whatever the task's state at the read:
    # - ready or blocked: it ends only after a claim that commits after the read
    #   (so after the registration), and the statement that ends it starts later
    #   and sees the registration. Only a cancellation ends a ready or blocked
    #   task at once, and cancellations are announced whether waited for or not.
    # - running: the statement ending it may have begun before the registration
    #   and not see it (its snapshot is older). So the read marks the row
    #   (`waited`), which holds up no claim: a running task is not claimable. An
    #   ending statement that reaches the row after the mark re-reads the row
    #   (READ COMMITTED's recheck) and sees it; the mark waits for one that got
    #   there first, and answers its outcome. When the row turned ready meanwhile,
    #   the mark is not written and `running` is answered: a claim comes first.
    watch_task = "INSERT INTO {schema}.waits (task_id, waiter) VALUES ($1, $2)"

    read_watched = """
    WITH seen AS (
        SELECT id, state, result, error, waited FROM {schema}.tasks WHERE id = $1
    ), marked AS (
        UPDATE {schema}.tasks t SET waited = true
        FROM seen s
        WHERE t.id = s.id AND s.state = 'running' AND NOT s.waited AND t.state <> 'ready'
        RETURNING t.state::text, t.result, t.error
    )
    SELECT state, result, error FROM marked
    UNION ALL
    SELECT state::text, result, error FROM seen WHERE NOT EXISTS (SELECT FROM marked)
    """

    unwatch_task = "DELETE FROM {schema}.waits WHERE task_id = $1 AND waiter = $2"

    # What crashed clients left behind: registrations of tasks that ended (or are
    # gone) that began over a minute ago. A live wait deletes its own as it ends;
    # the minute covers a live one between its registration and its read.
    prune_waits = """
    WITH doomed AS (
        SELECT w.ctid AS tid FROM {schema}.waits w
        WHERE w.since < now() - interval '1 minute'
          AND NOT EXISTS (SELECT FROM {schema}.tasks t WHERE t.id = w.task_id
                          AND t.state IN ('ready', 'running', 'blocked'))
          AND """ + _leading("$2") + """
        LIMIT $1
        FOR UPDATE OF w SKIP LOCKED
    )
    DELETE FROM {schema}.waits w USING doomed d WHERE w.ctid = d.tid
    """

    # -- inspect -----------------------------------------------------------------------

    # `delayed`: ready, but not due yet. Newest first; $8 pages (ids below it).
    list_tasks = """
    SELECT * FROM (
        SELECT id, namespace, name,
               CASE WHEN state = 'ready' AND run_at > now() THEN 'delayed'
                    ELSE state::text END AS state,
               priority, tags, attempts, max_attempts, run_at, enqueued_at, started_at,
               finished_at, worker_id, workflow_id, step, error
        FROM {schema}.tasks
        WHERE ($2::text IS NULL OR name = $2)
          AND ($3::text IS NULL OR namespace = $3)
          AND ($4::text[] IS NULL OR tags @> $4::text[])
          AND ($5::uuid IS NULL OR workflow_id = $5)
          AND ($6::float8 IS NULL OR enqueued_at <= now() - $6 * interval '1 second')
          AND ($7::float8 IS NULL OR enqueued_at >= now() - $7 * interval '1 second')
          AND ($8::bigint IS NULL OR id < $8)
    ) t
    WHERE $1::text[] IS NULL OR t.state = ANY($1::text[])
    ORDER BY t.id DESC
    LIMIT $9
    """

    # Depth by namespace and task name. ready: due and runnable; paused: due but
    # its workflow is not running; delayed: not due yet. $1 namespace, $2 tags
    # (only tasks whose tags are a subset), $3 names: NULL matches all.
    queue_depth = """
    SELECT t.namespace, t.name,
        count(*) FILTER (WHERE """ + _READY + """) AS ready,
        count(*) FILTER (WHERE t.state = 'delayed'
                         OR t.state = 'ready' AND t.run_at > now()) AS delayed,
        count(*) FILTER (WHERE t.state = 'ready' AND t.run_at <= now() AND NOT runnable) AS paused,
        count(*) FILTER (WHERE t.state = 'running') AS running,
        count(*) FILTER (WHERE t.state = 'blocked') AS blocked,
        count(*) FILTER (WHERE t.state = 'dead') AS dead,
        extract(epoch FROM now() - min(t.run_at) FILTER (WHERE """ + _READY + """))::float8
            AS oldest_ready_seconds
    FROM """ + _RUNNABLE_TASKS + """
    WHERE t.state IN ('delayed', 'ready', 'running', 'blocked', 'dead')
      AND ($1::text IS NULL OR t.namespace = $1)
      AND ($2::text[] IS NULL OR t.tags <@ $2::text[])
      AND ($3::text[] IS NULL OR t.name = ANY($3::text[]))
    GROUP BY t.namespace, t.name
    ORDER BY t.namespace, t.name
    """

    # -- periodic schedules ------------------------------------------------------------

    # A schedule seen for the first time starts at $9 (no run for earlier ticks);
    # declaring it again updates its definition and keeps its last tick.
    declare_periodic = """
    INSERT INTO {schema}.periodic AS p
        (namespace, name, task, cron, timezone, payload, priority, tags, last_tick)
    SELECT $1, r.name, r.task, r.cron, r.timezone, r.payload::jsonb, r.priority,
           CASE WHEN r.tags = '' THEN '{}'::text[] ELSE string_to_array(r.tags, ',') END, $9
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                $8::text[])
        AS r(name, task, cron, timezone, payload, priority, tags)
    ON CONFLICT (namespace, name) DO UPDATE
    SET task = EXCLUDED.task, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
        payload = EXCLUDED.payload, priority = EXCLUDED.priority, tags = EXCLUDED.tags,
        declared_at = now()
    RETURNING name, last_tick
    """

    # Moves the schedule to tick $3 unless it is there already (or past it): the
    # row lock makes one of many concurrent callers win; the others see the
    # tick taken and enqueue nothing.
    take_tick = """
    UPDATE {schema}.periodic SET last_tick = $3
    WHERE namespace = $1 AND name = $2 AND last_tick < $3
    RETURNING task, payload, priority, tags
    """

    record_tick_task = """
    UPDATE {schema}.periodic SET last_task_id = $3 WHERE namespace = $1 AND name = $2
    """

    list_periodic = """
    SELECT p.namespace, p.name, p.task, p.cron, p.timezone, p.payload, p.priority, p.tags,
           p.last_tick,
           p.last_task_id, t.state::text AS last_state, p.declared_at
    FROM {schema}.periodic p LEFT JOIN {schema}.tasks t ON t.id = p.last_task_id
    WHERE $1::text IS NULL OR p.namespace = $1
    ORDER BY p.namespace, p.name
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        for name, template in vars(Queries).items():
            if isinstance(template, str) and not name.startswith("_") :
                setattr(self, name, template.replace("{schema}", schema))

    def sort_key_definition(self, aging_seconds: float) -> str:
        """The `sort_key` function with the given aging interval baked in."""
        return self.define_sort_key.replace("{aging_seconds}", f"{aging_seconds:g}")

    @property
    def tasks_channel(self) -> str:
        return f"{self.schema}_tasks"

    @property
    def workflows_channel(self) -> str:
        return f"{self.schema}_workflows"

    @property
    def control_channel(self) -> str:
        return f"{self.schema}_control"

    @property
    def finished_channel(self) -> str:
        """Where the statements that end tasks announce those waited for (see _finished)."""
        return f"{self.schema}_finished"
