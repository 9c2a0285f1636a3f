-- Shoal schema, version 3: periodic schedules, cancelling one task, waiting for a result.

-- One row per periodic schedule (declared by the workers' apps). `last_tick` is
-- the tick last enqueued (or the moment the schedule was first declared): a
-- tick is enqueued by whoever moves it forward, in the same transaction as the
-- task, so every tick is enqueued once however many workers declare it.
CREATE TABLE {schema}.periodic (
    namespace   text NOT NULL,
    name        text NOT NULL,               -- the schedule's name (default: the task's)
    task        text NOT NULL,
    cron        text NOT NULL,
    timezone    text NOT NULL,
    payload     jsonb NOT NULL DEFAULT 'null',
    priority    integer NOT NULL DEFAULT 0,
    tags        text[] NOT NULL DEFAULT '{}',
    last_tick   timestamptz NOT NULL,
    next_tick   timestamptz,                 -- as computed by the last worker that looked
    last_task_id bigint,                     -- the task enqueued for last_tick
    declared_at timestamptz NOT NULL DEFAULT now(),  -- last time a worker declared it
    PRIMARY KEY (namespace, name)
);

-- `waited`: someone waits for this task's end (`Client.wait`); only then does
-- the statement that ends it notify the finished channel (see Queries), so the
-- hot path pays one boolean test per ended task for waits. (Not a trigger: an
-- AFTER UPDATE row trigger re-reads every updated row, which cost reports 13%.)
ALTER TABLE {schema}.tasks ADD COLUMN waited boolean NOT NULL DEFAULT false;
