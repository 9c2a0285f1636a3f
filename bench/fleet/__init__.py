"""What a fleet of workers costs the database: ``python -m bench.fleet [--quick]``.

A benchmark, not a test: it prints figures and plots them. On one Postgres
server (a throwaway one, or ``--dsn`` for one on this host) it measures

- for each fleet size N (``--sizes``, default 4 to 1,000 workers), in a fresh
  database (`sizes`): Postgres CPU per idle worker per second and the
  statements behind it; idle enqueue -> start p50/p99 and how single enqueues
  spread over the parked workers; tasks/s, Postgres and worker CPU per task and
  the claim's round trip p50/p99 under saturation;
- claim cost against the tasks table's contents (`depth`): 10 k, 1 M and 10 M
  ready rows; 1 M and 10 M finished rows; delayed rows with nothing ready;
- the raw ceiling (`raw`): a plain claim-and-delete queue driven by pgbench;

then prints every table, compares the figures with issue 19's anchors and
targets, and writes ``fleet.png`` and ``depth.png`` (``--out``).

How N workers are packed
------------------------
N real workers, not simulated ones: each is a `shoal.worker.Worker` with its
own connection and its own services (see `packer`), spread evenly over
``--procs`` processes (default 4); each process runs its share on one event
loop. Up to ``--procs`` workers, every worker has a process of its own, as a
``shoal worker`` pod has: the 4-worker size is the setting of
``bench.cpu_split`` and of the issue's targets. Every size has the same number
of client processes (4 from N = 4 on), so throughput differences between sizes
come from N, not from how much client CPU the packing allowed.

Why packing does not flatter the server's figures: the server sees exactly what
N pods would send it. Each worker has its own session (its own backend process,
``application_name`` ``shoal worker fleet-P-I``), its own LISTENs, its own
timers (poll, heartbeat, maintenance election, idle ping) started at a
staggered moment as pods' are, and its own statements. The one way packing
could flatter them is a packer too busy to send its workers' statements on time
(fewer polls, so less server CPU); the idle table therefore prints the
statements per worker per second, which match one ``shoal worker``'s schedule
(one poll per ``--poll-interval``, a heartbeat per TTL/2, an election per
term), and the busiest packer's share of a core. What packing changes is the
machine: the workers run on the server's two cores, over loopback, so a
saturated phase is bounded by those cores (client and server together), and
no network latency is added to a round trip. CPU *per task* and *per idle
worker* on the server are what carry over to a real fleet.

What packing does to the workers' own figures: workers packed into one process
share one event loop, so one wake-up of the loop can serve several sockets, and
a process's fixed costs (its metrics registry, garbage collection) are shared.
Worker CPU per task is therefore quoted against its target only where each
worker has a process of its own (no asterisk in the tables; ``*`` marks packed
sizes).

Instruments: Postgres CPU from /proc (`server`); statements from
``pg_stat_statements`` (the throwaway server preloads it; every figure in one
run, the ceiling's included, is measured with it loaded; ``--no-statements``
measures without it); worker CPU from /proc of the packer processes.
"""
