-- Shoal schema, version 8: the liveness and leadership rows change every few
-- seconds (each heartbeat, each pass) in nothing the planner needs to know, so
-- autovacuum leaves them to page pruning (their updates are HOT) for longer, and
-- never analyzes them. Each autovacuum or autoanalyze of a table updates its
-- statistics, and that discarded the cached plans of every session that uses it:
-- with the defaults, every worker re-planned its heartbeat and its claim after
-- each autovacuum or autoanalyze of `workers`. At 1,000 idle workers this took the server's CPU per worker
-- from 0.074 to 0.054 ms/s (bench.fleet; docs/fleet/idle-quiet.txt).
-- Anti-wraparound vacuums still run as they must.
ALTER TABLE {schema}.workers SET (autovacuum_vacuum_threshold = 100000,
    autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 2000000000);
ALTER TABLE {schema}.leaders SET (autovacuum_vacuum_threshold = 100000,
    autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 2000000000);
