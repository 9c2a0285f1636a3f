-- Shoal schema, version 7: delayed tasks (enqueued with a delay, or retried after a
-- backoff) wait as `delayed`, out of the claim's index, until the maintenance
-- leader makes them ready when they come due (Queries.promote, which finds the
-- next due time on this index). Before, they waited as `ready` with run_at in the
-- future, and an idle worker's every claim walked past all of them: with a
-- million delayed tasks and nothing due, a poll took 449 ms of server CPU.
CREATE INDEX tasks_delayed ON {schema}.tasks (run_at) WHERE state = 'delayed';
UPDATE {schema}.tasks SET state = 'delayed' WHERE state = 'ready' AND run_at > now();
