-- Shoal schema, version 1. `{schema}` is replaced by the configured schema name.

CREATE TYPE {schema}.task_state AS ENUM (
    'blocked',    -- a workflow step whose dependencies have not all succeeded
    'ready',      -- claimable once run_at <= now()
    'running',    -- leased by a worker until lease_expires_at
    'succeeded',
    'dead',       -- failed max_attempts times, or failed permanently: a dead letter
    'cancelled'
);

CREATE TABLE {schema}.workflows (
    id          uuid PRIMARY KEY,
    key         text UNIQUE,                 -- idempotency key, e.g. the Workflow CR's uid
    name        text NOT NULL,
    namespace   text NOT NULL,
    spec        jsonb NOT NULL,              -- the validated DAG
    input       jsonb NOT NULL DEFAULT '{}',
    state       text NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'paused', 'cancelling', 'cancelled', 'succeeded', 'failed')),
    message     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX workflows_finished ON {schema}.workflows (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE {schema}.tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace        text NOT NULL,
    name             text NOT NULL,
    payload          jsonb NOT NULL DEFAULT 'null',
    state            {schema}.task_state NOT NULL DEFAULT 'ready',
    priority         integer NOT NULL DEFAULT 0,
    tags             text[] NOT NULL DEFAULT '{}',
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- Claim order: run_at moved earlier by one aging interval per priority
    -- point, so waiting raises effective priority and one index serves the claim.
    sort_key         timestamptz NOT NULL,
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer CHECK (max_attempts >= 1),  -- NULL: the handler's retries decide
    timeout_ms       integer CHECK (timeout_ms > 0),
    lease_token      bigint NOT NULL DEFAULT 0,   -- fencing token, bumped by every claim
    lease_expires_at timestamptz,
    worker_id        text,
    idempotency_key  text,
    workflow_id      uuid REFERENCES {schema}.workflows (id) ON DELETE CASCADE,
    step             text,
    result           jsonb,
    error            text,
    started_at       timestamptz,
    finished_at      timestamptz
);
-- Partial indexes: a row sits only in the index of its current state, so the
-- claim scans ready rows only and finished rows never slow it down.
CREATE INDEX tasks_ready ON {schema}.tasks (namespace, sort_key, id) WHERE state = 'ready';
-- Leases, for the reaper. Keyed on the lease itself (every way out of
-- 'running' clears it), not on state: a state predicate here would lure the
-- planner away from the primary key when reports look up running tasks by id.
CREATE INDEX tasks_leases ON {schema}.tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX tasks_dead ON {schema}.tasks (namespace, name) WHERE state = 'dead';
CREATE INDEX tasks_finished ON {schema}.tasks (finished_at)
    WHERE state IN ('succeeded', 'cancelled') AND workflow_id IS NULL;
CREATE INDEX tasks_workflow ON {schema}.tasks (workflow_id) WHERE workflow_id IS NOT NULL;
CREATE UNIQUE INDEX tasks_idempotency ON {schema}.tasks (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX tasks_workflow_step ON {schema}.tasks (workflow_id, step)
    WHERE workflow_id IS NOT NULL;
ALTER TABLE {schema}.tasks SET (fillfactor = 80);

CREATE TABLE {schema}.workflow_commands (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id uuid NOT NULL REFERENCES {schema}.workflows (id) ON DELETE CASCADE,
    command     text NOT NULL CHECK (command IN ('pause', 'resume', 'cancel')),
    actor       text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    request_id  text,                         -- makes a retried command a no-op
    applied     boolean NOT NULL,             -- false when the state already matched
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workflow_id, request_id)
);

CREATE TABLE {schema}.workers (
    id          text PRIMARY KEY,
    pool        text,
    pod_name    text,
    namespace   text NOT NULL,
    tags        text[] NOT NULL DEFAULT '{}',
    task_names  text[] NOT NULL DEFAULT '{}',
    concurrency integer NOT NULL,
    max_attempts integer[] NOT NULL DEFAULT '{}',  -- per task name: when the producer set none
    claim_ttl   float8 NOT NULL,              -- seconds a lease this worker holds lasts
    -- Set while the worker is idle and listens on this channel: an enqueue of one
    -- task due now may lease the task straight to it (see Queries.enqueue).
    parked_channel text,
    in_flight   integer NOT NULL DEFAULT 0,
    draining    boolean NOT NULL DEFAULT false,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_pool ON {schema}.workers (pool);
