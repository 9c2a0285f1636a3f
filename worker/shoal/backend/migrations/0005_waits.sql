-- Shoal schema, version 5: waiting for a task without locking its row.

-- One row per `Client.wait` in progress (`waiter`: that wait's own id), inserted
-- before the wait reads the task and deleted when it ends; the maintenance leader
-- deletes what a crashed client left behind. A statement that ends a task announces
-- the end when the task has a row here (or `tasks.waited`, see Queries._finished).
-- No foreign key to tasks: inserting a referencing row takes a KEY SHARE lock on the
-- task's row, and the claim (FOR UPDATE SKIP LOCKED) would skip a task being waited
-- for until the next poll (issue 18), which is what this table is for.
CREATE TABLE {schema}.waits (
    task_id bigint NOT NULL,
    waiter  uuid NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, waiter)
);
