"""What announcing waited tasks' ends costs a report, measured in pairs.

Reports (Shoal's `complete` statement, 500 results each, as a worker sends
them) run against three schemas of one database, in random order on every
iteration so that a slow spell of the machine falls on all of them:

- `now`: the statement as Shoal runs it (its RETURNING announces waited tasks);
- `without`: the same statement with that announcement cut out;
- `again`: `without` once more, in a schema of its own: the noise floor.

With `--waits N`, each schema holds N waits in progress (of other tasks) that
every announcing statement reads.

    .venv/bin/python -m bench.report_cost [--iterations 200] [--waits 0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from shoal.backend import Backend, NewTask, WorkerIdentity
from shoal.backend.queries import Queries
from tests.cluster.postgres import PostgresServer

BATCH = 500
WORKER = WorkerIdentity(id="bench", namespace="default", tags=(), task_names=("t",),
                        concurrency=BATCH, max_attempts=(1,))
VARIANTS = ("now", "without", "again")  # each in a schema of that name


def statement(variant: str) -> str:
    complete = Queries(variant).complete
    if variant == "now":
        return complete
    finished = Queries._finished.replace("{schema}", variant)
    assert finished in complete
    return complete.replace(", " + finished, "")


async def measure(dsn: str, iterations: int, waits: int) -> dict[str, list[float]]:
    backends = {v: await Backend.connect(dsn, schema=v, max_size=1) for v in VARIANTS}
    timings: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for variant, backend in backends.items():
            await backend.migrate()
            await backend.pool.execute(f"INSERT INTO {variant}.waits (task_id, waiter) "
                                       "SELECT -g, gen_random_uuid() FROM generate_series(1, $1) g",
                                       waits)
            await backend.pool.execute(f"ANALYZE {variant}.waits")
        for iteration in range(iterations):
            batches = {}
            for variant, backend in backends.items():
                await backend.enqueue([NewTask("t", i) for i in range(BATCH)])
                batches[variant] = await backend.claim(WORKER, BATCH, 300)
            for variant in random.sample(VARIANTS, len(VARIANTS)):
                tasks = batches[variant]
                started = time.perf_counter()
                rows = await backends[variant].pool.fetch(
                    statement(variant), [t.id for t in tasks], [t.lease_token for t in tasks],
                    ["1"] * len(tasks), None)
                timings[variant].append((time.perf_counter() - started) * 1000)
                assert len(rows) == len(tasks)
            if iteration % 20 == 19:  # keep the tables small, as the pruner does
                for variant, backend in backends.items():
                    await backend.pool.execute(f"DELETE FROM {variant}.tasks")
                    await backend.pool.execute(f"VACUUM {variant}.tasks")
    finally:
        for backend in backends.values():
            await backend.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--waits", type=int, default=0, help="waits in progress")
    args = parser.parse_args()
    with PostgresServer() as server:
        timings = asyncio.run(measure(server.create_database("report_cost"), args.iterations,
                                      args.waits))
    for variant, values in timings.items():
        print(f"{variant:8} median {statistics.median(values):6.2f} ms per {BATCH} reports "
              f"(quartiles {' / '.join(f'{q:.2f}' for q in statistics.quantiles(values))})")


if __name__ == "__main__":
    main()
