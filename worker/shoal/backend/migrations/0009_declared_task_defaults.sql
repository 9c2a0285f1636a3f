-- Shoal schema, version 9. `{schema}` is replaced by the configured schema name.

-- What a worker declares of each task it serves besides its name: the task's tags
-- and priority (`@app.task(tags=..., priority=...)`). An enqueue that sets neither
-- (`shoal enqueue` without --app, a client without the app) takes them from here,
-- in its own statement, as a client with the app takes them from the definition.
-- NULL: not declared (a row written by a worker of an earlier version): no tags
-- and priority 0, as before. The last worker to start declares; workers that
-- disagree (two versions of an app during a rollout) overwrite each other.
ALTER TABLE {schema}.task_names
    ADD COLUMN tags text[],
    ADD COLUMN priority integer;
