-- Shoal schema, version 6: a state of its own for tasks that are not due yet.
-- (A value added to an enum cannot be used in the transaction that adds it:
-- version 7 uses it.)
ALTER TYPE {schema}.task_state ADD VALUE IF NOT EXISTS 'delayed' BEFORE 'ready';
