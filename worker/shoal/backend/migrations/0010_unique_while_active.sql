-- Shoal schema, version 10. `{schema}` is replaced by the configured schema name.

-- Unique while active: an idempotency key that holds only while its task may still
-- run (blocked, delayed, ready, running) and is free again once the task ended
-- (succeeded, dead, cancelled). Such a key is kept in `active_key`, apart from the
-- permanent `idempotency_key` (a key of one scope never meets a key of the other).
ALTER TABLE {schema}.tasks ADD COLUMN active_key text;

-- The row leaves this partial index in the update that ends its task, so an
-- enqueue (ON CONFLICT on this index) racing with that end either waits for its
-- transaction and inserts, or meets a task that was still active: the database
-- serialises them, with no lock or read-then-insert of Shoal's. Rows without an
-- active key (most) are not in it.
CREATE UNIQUE INDEX tasks_active_key ON {schema}.tasks (namespace, active_key)
    WHERE active_key IS NOT NULL AND state IN ('blocked', 'delayed', 'ready', 'running');
