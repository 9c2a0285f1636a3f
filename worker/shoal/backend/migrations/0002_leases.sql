-- Shoal schema, version 2. `{schema}` is replaced by the configured schema name.

-- A lease that expires (the worker was killed, frozen or cut off) is not a failure
-- of the handler: it does not use up an attempt, it uses up one of the task's
-- lease expiries, a budget of its own. The expiry after the last makes the task a
-- dead letter. Like max_attempts, NULL until claimed when the producer set none:
-- the claiming worker's definition of the task decides.
ALTER TABLE {schema}.tasks
    ADD COLUMN expiries integer NOT NULL DEFAULT 0,
    ADD COLUMN max_expiries integer CHECK (max_expiries >= 0);

-- The backend process of a parked worker's connection: an enqueue hands a task
-- over only while that process lives (the worker's LISTEN is on it). And each
-- task's lease-expiry budget, per task name as max_attempts is.
ALTER TABLE {schema}.workers
    ADD COLUMN parked_pid integer,
    ADD COLUMN max_expiries integer[] NOT NULL DEFAULT '{}';

-- Every task name a worker has served, by namespace: `shoal enqueue` refuses a
-- name no worker ever served (a typo would sit ready forever) unless --force.
CREATE TABLE {schema}.task_names (
    namespace  text NOT NULL,
    name       text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);
