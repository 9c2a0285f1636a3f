"""Wait latency: from a task's result being recorded to `Client.wait` returning.

Starts a throwaway Postgres and one in-process worker, then for each round
enqueues a task, waits for it and measures the gap between the task's
`finished_at` (the report's transaction, recorded by Postgres) and the moment
`wait` returned. The wait is woken by the task's completion notification, so
the gap is a notification's trip, not a polling interval.

    .venv/bin/python -m bench.wait_latency [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from shoal import App, Client, Worker, WorkerConfig
from shoal.backend import Backend
from tests.cluster.postgres import PostgresServer

app = App("wait-bench")


@app.task("echo")
async def echo(payload: int) -> int:
    return payload


async def measure(dsn: str, rounds: int) -> list[float]:
    backend = await Backend.connect(dsn, max_size=4)
    await backend.migrate()
    worker = Worker(app, WorkerConfig(dsn=dsn, metrics_port=0, poll_interval=1.0))
    running = asyncio.create_task(worker.run())
    client = Client(backend, app)
    gaps = []
    try:
        for i in range(rounds):
            task_id = await client.enqueue("echo", i)
            assert await client.wait(task_id, timeout=30) == i
            returned = time.time()
            finished = (await client.task(task_id)).finished_at
            assert finished is not None
            gaps.append((returned - finished.timestamp()) * 1000)
    finally:
        worker.stop()
        await running
        await client.close()
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with PostgresServer() as server:
        gaps = asyncio.run(measure(server.create_database("wait_bench"), args.rounds))
    gaps.sort()
    print(f"wait latency over {len(gaps)} tasks (ms, finished_at -> wait returned): "
          f"p50 {statistics.median(gaps):.1f}, p90 {gaps[int(len(gaps) * 0.9)]:.1f}, "
          f"p99 {gaps[int(len(gaps) * 0.99)]:.1f}, max {gaps[-1]:.1f}")


if __name__ == "__main__":
    main()
