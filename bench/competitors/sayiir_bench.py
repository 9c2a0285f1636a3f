"""sayiir adapter: one-step durable workflow per task on sayiir's Postgres backend.

sayiir is a durable workflow engine, not a job queue: a "task" here is a
workflow instance with a single no-op step, submitted with ``WorkflowClient``
and executed by sayiir's distributed ``Worker`` (one per process). Its Python
worker claims one task per poll, so the poll interval bounds both throughput
and idle latency; 10 ms is used instead of the 5 s default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from collections.abc import Sequence

import asyncpg
from sayiir import Flow, PostgresBackend, Worker, WorkflowClient, task

from bench.harness import Payload, Recorder, python_argv, worker_barrier

POLL_INTERVAL = 0.01
_recorder: Recorder | None = None


@task
def noop(payload: Payload) -> None:
    """The no-op step; records its run when inside a worker process."""
    if _recorder is not None:
        _recorder.record(payload["id"])


WORKFLOW = Flow("bench-noop").then(noop).build()


class SayiirSystem:
    """Harness side of the sayiir adapter."""

    name = "sayiir"
    # One submit round trip per task and tens of tasks/s: larger cells would
    # spend minutes enqueueing what the deadline never lets it run.
    max_tasks: int | None = 2_000

    def __init__(self, poll_interval: float = POLL_INTERVAL) -> None:
        self.poll_interval = poll_interval
        self._client: WorkflowClient | None = None
        self._conn: asyncpg.Connection | None = None

    async def setup(self, dsn: str) -> None:
        """Connecting the backend runs sayiir's migrations."""
        backend = await asyncio.to_thread(PostgresBackend, dsn)
        self._client = WorkflowClient(backend)
        self._conn = await asyncpg.connect(dsn)

    @property
    def client(self) -> WorkflowClient:
        assert self._client is not None, "setup() first"
        return self._client

    def _submit(self, payloads: Sequence[Payload]) -> None:
        for p in payloads:
            self.client.submit(WORKFLOW, f"task-{p['id']}", dict(p))

    async def enqueue_many(self, payloads: Sequence[Payload]) -> None:
        """sayiir has no bulk submit: one ``submit`` per workflow instance."""
        await asyncio.to_thread(self._submit, payloads)

    async def enqueue_one(self, payload: Payload) -> None:
        await asyncio.to_thread(self._submit, [payload])

    async def outstanding(self) -> int:
        """Workflow instances not yet in a terminal state."""
        assert self._conn is not None, "setup() first"
        count: int = await self._conn.fetchval(
            "SELECT count(*) FROM sayiir_workflow_snapshots"
            " WHERE status NOT IN ('Completed', 'Failed', 'Cancelled')"
        )
        return count

    def worker_argv(self, dsn: str) -> list[str]:
        return python_argv(__name__, "--dsn", dsn, "--poll-interval", str(self.poll_interval))

    async def close(self) -> None:
        self._client = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def main() -> None:
    """Worker process entry point: run until SIGTERM, then shut down gracefully."""
    global _recorder
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL)
    args = parser.parse_args()
    _recorder = Recorder()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    backend = PostgresBackend(args.dsn)
    worker = Worker(f"bench-{os.getpid()}", backend, poll_interval=args.poll_interval)
    worker_barrier()
    handle = worker.start([WORKFLOW])
    stop.wait()
    handle.shutdown()
    handle.join()


if __name__ == "__main__":
    main()
