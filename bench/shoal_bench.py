"""Shoal adapter: ``shoal worker`` processes against the public API.

Uses ``from shoal import App, Client, Job``: ``Client.connect`` /
``enqueue`` / ``enqueue_many`` on the producer side and
``shoal worker --app bench.shoal_bench:app`` for the workers.

Imported by a worker process (the harness sets the record/ready/go files in
its environment), this module opens the recorder and waits on the start
barrier at import time, i.e. before the worker begins claiming.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import ENV_READY, ENV_RECORD, Payload, Recorder, worker_barrier
from shoal import App, Client, Job

TASK_NAME = "noop"
CONCURRENCY = 100
BATCH_SIZE = 100
NAMESPACE = "default"

app = App()
_recorder = Recorder() if ENV_RECORD in os.environ else None


@app.task(TASK_NAME)
async def noop(payload: dict[str, Any]) -> None:
    """The no-op handler; records its run inside a worker process."""
    if _recorder is not None:
        _recorder.record(payload["id"])


if ENV_READY in os.environ:
    worker_barrier()


class ShoalSystem:
    """Harness side of the Shoal adapter."""

    name = "shoal"
    max_tasks: int | None = None

    def __init__(self, concurrency: int = CONCURRENCY, batch_size: int = BATCH_SIZE) -> None:
        self.concurrency = concurrency
        self.batch_size = batch_size
        self._client: Client | None = None

    async def setup(self, dsn: str) -> None:
        """Connect and create the schema."""
        self._client = await Client.connect(dsn)
        await self._client.backend.migrate()

    @property
    def client(self) -> Client:
        assert self._client is not None, "setup() first"
        return self._client

    async def enqueue_many(self, payloads: Sequence[Payload]) -> None:
        chunk = 5000
        for start in range(0, len(payloads), chunk):
            await self.client.enqueue_many(
                [Job(TASK_NAME, dict(p)) for p in payloads[start : start + chunk]]
            )

    async def enqueue_one(self, payload: Payload) -> None:
        await self.client.enqueue(TASK_NAME, dict(payload))

    async def outstanding(self) -> int:
        """Ready plus running tasks."""
        backlog = await self.client.backend.backlog(NAMESPACE, [])
        return int(backlog.ready + backlog.running)

    def worker_argv(self, dsn: str) -> list[str]:
        return [
            str(Path(sys.executable).with_name("shoal")),
            "worker",
            "--dsn",
            dsn,
            "--app",
            f"{__name__}:app",
            "--concurrency",
            str(self.concurrency),
            "--batch-size",
            str(self.batch_size),
            "--metrics-port",
            "0",
        ]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

