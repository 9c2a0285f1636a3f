-- Shoal schema, version 10. `{schema}` is replaced by the configured schema name.

-- Unique while active: an idempotency key that holds only while its task may still
-- run (blocked, delayed, ready, running) and is free again once the task ended
-- (succeeded, dead, cancelled). Such a key is kept in `active_key`; a permanent
-- key stays in `idempotency_key` (and in tasks_idempotency, which producers of
-- earlier versions name in their ON CONFLICT).
ALTER TABLE {schema}.tasks ADD COLUMN active_key text;

-- One key, one holder, for both kinds: a permanent key's task holds it in every
-- state, an active key's task only until it ends. The row leaves this partial
-- index in the same update that ends its task, so an enqueue racing with the end
-- either waits for that transaction and inserts, or conflicts with a task that
-- was still active: no lock or read-then-insert of our own. Rows without a key
-- (most) are not in it.
CREATE UNIQUE INDEX tasks_unique_key
    ON {schema}.tasks (namespace, (coalesce(idempotency_key, active_key)))
    WHERE idempotency_key IS NOT NULL
       OR (active_key IS NOT NULL AND state IN ('blocked', 'delayed', 'ready', 'running'));
