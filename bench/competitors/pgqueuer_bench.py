"""PgQueuer adapter: asyncpg driver, LISTEN/NOTIFY wake-up, batch size 100."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries

from bench.harness import Payload, Recorder, python_argv, worker_barrier

ENTRYPOINT = "noop"
BATCH_SIZE = 100


class PgQueuerSystem:
    """Harness side of the PgQueuer adapter."""

    name = "pgqueuer"
    max_tasks: int | None = None

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        self.batch_size = batch_size
        self._conn: asyncpg.Connection | None = None
        self._queries: Queries | None = None

    async def setup(self, dsn: str) -> None:
        """Install PgQueuer's (durable, logged) schema."""
        self._conn = await asyncpg.connect(dsn)
        self._queries = Queries(AsyncpgDriver(self._conn))
        await self._queries.install()

    @property
    def queries(self) -> Queries:
        assert self._queries is not None, "setup() first"
        return self._queries

    async def enqueue_many(self, payloads: Sequence[Payload]) -> None:
        """Bulk enqueue through the list form of ``Queries.enqueue``."""
        chunk = 5000
        for start in range(0, len(payloads), chunk):
            part = payloads[start : start + chunk]
            await self.queries.enqueue(
                [ENTRYPOINT] * len(part),
                [json.dumps(p).encode() for p in part],
                [0] * len(part),
            )

    async def enqueue_one(self, payload: Payload) -> None:
        """Enqueue one job; the insert trigger NOTIFYs the workers."""
        await self.queries.enqueue(ENTRYPOINT, json.dumps(payload).encode())

    async def outstanding(self) -> int:
        """Queued plus picked jobs (completed jobs leave the queue table)."""
        return sum(row.count for row in await self.queries.queue_size())

    def worker_argv(self, dsn: str) -> list[str]:
        return python_argv(__name__, "--dsn", dsn, "--batch-size", str(self.batch_size))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def _worker(dsn: str, batch_size: int) -> None:
    recorder = Recorder()
    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer.from_asyncpg_connection(conn)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        assert job.payload is not None
        recorder.record(json.loads(job.payload)["id"])

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    worker_barrier()
    await pgq.run(batch_size=batch_size)
    await conn.close()


def main() -> None:
    """Worker process entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args()
    asyncio.run(_worker(args.dsn, args.batch_size))


if __name__ == "__main__":
    main()
