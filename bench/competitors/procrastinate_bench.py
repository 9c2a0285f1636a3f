"""procrastinate adapter: async task, LISTEN/NOTIFY, concurrency 10 per worker process."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import procrastinate

from bench.harness import Payload, Recorder, python_argv, worker_barrier

CONCURRENCY = 10
# Connections a worker needs besides one per concurrent job: the LISTEN
# connection and the heartbeat / abort polling side tasks.
EXTRA_CONNECTIONS = 2
TASK_NAME = "noop"


def make_app(dsn: str, pool_size: int, recorder: Recorder | None = None) -> procrastinate.App:
    """An App with the no-op task; ``recorder`` is only given in worker processes."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=pool_size, max_size=pool_size
        )
    )

    @app.task(name=TASK_NAME)
    async def noop(id: int, ts: float) -> None:
        del ts
        if recorder is not None:
            recorder.record(id)

    return app


class ProcrastinateSystem:
    """Harness side of the procrastinate adapter."""

    name = "procrastinate"
    max_tasks: int | None = None

    def __init__(self, concurrency: int = CONCURRENCY) -> None:
        self.concurrency = concurrency
        self._app: procrastinate.App | None = None

    async def setup(self, dsn: str) -> None:
        """Apply procrastinate's schema and open a client app."""
        self._app = make_app(dsn, pool_size=1)
        await self._app.open_async()
        await self._app.schema_manager.apply_schema_async()

    @property
    def app(self) -> procrastinate.App:
        assert self._app is not None, "setup() first"
        return self._app

    async def enqueue_many(self, payloads: Sequence[Payload]) -> None:
        """Bulk enqueue with ``batch_defer_async``."""
        chunk = 5000
        task = self.app.tasks[TASK_NAME]
        for start in range(0, len(payloads), chunk):
            await task.batch_defer_async(*(dict(p) for p in payloads[start : start + chunk]))

    async def enqueue_one(self, payload: Payload) -> None:
        """Defer one job; procrastinate's trigger NOTIFYs the workers."""
        await self.app.tasks[TASK_NAME].defer_async(**payload)

    async def outstanding(self) -> int:
        """Jobs still ``todo`` or ``doing``."""
        row = await self.app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )
        return int(row["n"])

    def worker_argv(self, dsn: str) -> list[str]:
        return python_argv(__name__, "--dsn", dsn, "--concurrency", str(self.concurrency))

    async def close(self) -> None:
        if self._app is not None:
            await self._app.close_async()
            self._app = None


async def _worker(dsn: str, concurrency: int) -> None:
    app = make_app(dsn, pool_size=concurrency + EXTRA_CONNECTIONS, recorder=Recorder())
    async with app.open_async():
        worker_barrier()
        # Installs its own SIGTERM handler for a graceful stop.
        await app.run_worker_async(concurrency=concurrency, listen_notify=True)


def main() -> None:
    """Worker process entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args()
    asyncio.run(_worker(args.dsn, args.concurrency))


if __name__ == "__main__":
    main()
