"""Helpers for the backend and worker tests: a migrated Backend, `shoal` subprocesses,
in-process workers, and polling with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

from shoal.backend import Backend
from shoal.worker import App, Worker, WorkerConfig

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
RECORDER = f"{REPO}/tests/apps/recorder.py:app"
SHOAL = str(Path(sys.executable).with_name("shoal"))


async def eventually(check: Callable[[], Awaitable[T] | T], *, within: float = 30.0,
                     interval: float = 0.05, what: str = "a condition") -> T:
    """Poll `check` (sync or async) until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}"
                                 f" (last value {value!r})")
        await asyncio.sleep(interval)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def cli(*args: str, within: float = 60.0, env: dict[str, str] | None = None) -> Result:
    """Run `shoal ARGS...` to completion."""
    proc = await asyncio.create_subprocess_exec(
        SHOAL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SHOAL_LOG_LEVEL": "WARNING", **(env or {})}, cwd=REPO)
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class WorkerProcess:
    """One `shoal worker` subprocess; its output goes to a file (see `output()`)."""

    def __init__(self, proc: asyncio.subprocess.Process, output: Path, worker_id: str) -> None:
        self.proc = proc
        self.output_path = output
        self.worker_id = worker_id

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, within: float = 60.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), within)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


class Spawner:
    """Starts `shoal worker` subprocesses and kills any still running at teardown; after
    teardown it starts none (a fleet that restarts exited workers must not outlive it)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[WorkerProcess] = []
        self.closed = False

    async def worker(self, dsn: str, *args: str, app: str = RECORDER,
                     claim_ttl: str = "30s", poll_interval: str = "1s",
                     worker_id: str | None = None) -> WorkerProcess:
        """A new worker process; `worker_id` again for a restart (as a Pod's container
        restarts under the same POD_NAME)."""
        if self.closed:
            raise RuntimeError("the test is over: no more worker processes")
        worker_id = worker_id or f"w{len(self.started)}-{uuid.uuid4().hex[:6]}"
        output = self.tmp / f"{worker_id}.log"
        with output.open("ab") as sink:
            proc = await asyncio.create_subprocess_exec(
                SHOAL, "worker", "--dsn", dsn, "--app", app, "--worker-id", worker_id,
                "--metrics-port", "0", "--claim-ttl", claim_ttl,
                "--poll-interval", poll_interval, *args,
                stdout=sink, stderr=asyncio.subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "SHOAL_LOG_LEVEL": "INFO"})
        process = WorkerProcess(proc, output, worker_id)
        self.started.append(process)
        return process

    async def close(self) -> None:
        self.closed = True
        for process in self.started:
            if process.proc.returncode is None:
                process.proc.kill()
                await process.proc.wait()


@pytest.fixture
async def backend(dsn: str) -> AsyncIterator[Backend]:
    """A Backend on a fresh, migrated database (schema `shoal`)."""
    b = await Backend.connect(dsn, max_size=20)
    await b.migrate()
    yield b
    await b.close()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawner]:
    spawner = Spawner(tmp_path)
    yield spawner
    await spawner.close()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[str]:
    """Path of the recorder app's run log for this test."""
    yield str(tmp_path / "runs.jsonl")


@contextlib.asynccontextmanager
async def running_worker(app: App, dsn: str, **options: Any) -> AsyncIterator[Worker]:
    """An in-process Worker on the test's event loop; drained on exit."""
    config: dict[str, Any] = dict(dsn=dsn, metrics_port=0, claim_ttl=30.0, poll_interval=0.2,
                                  drain_timeout=5.0, worker_id=f"inproc-{uuid.uuid4().hex[:6]}")
    worker = Worker(app, WorkerConfig(**(config | options)))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def task_states(backend: Backend, schema: str = "shoal") -> dict[str, int]:
    rows = await backend.pool.fetch(
        f"SELECT state::text, count(*) AS n FROM {schema}.tasks GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def row_counts(backend: Backend, schema: str = "shoal") -> dict[str, int]:
    """Rows in each of Shoal's tables: a fingerprint to show nothing was written."""
    counts = {}
    for table in ("tasks", "workflows", "workflow_commands", "workers"):
        counts[table] = await backend.pool.fetchval(f"SELECT count(*) FROM {schema}.{table}")
    return counts


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


# A newer Shoal's writes to a stored workflow spec (workflow id $1; the spec has at least
# two steps): keys this version lacks, at the top and in a step, which it reads past ...
NEWER_SPEC = """UPDATE shoal.workflows SET spec = jsonb_set(jsonb_set(spec,
    '{concurrencyPolicy}', '"Forbid"'), '{steps,1,cache}', '{"ttl": "1h"}') WHERE id = $1"""
# ... and shapes it cannot read at all, with the reason its workflow fails with.
UNREADABLE_SPECS = {
    "steps-a-string": ("""UPDATE shoal.workflows SET spec = jsonb_set(spec, '{steps}',
                          '"first,second,third"') WHERE id = $1""",
                       "UnreadableStoredSpec: spec.steps: Input should be a valid list"),
    "dependsOn-a-number": ("""UPDATE shoal.workflows SET spec = jsonb_set(spec,
                              '{steps,1,dependsOn}', '1') WHERE id = $1""",
                           "UnreadableStoredSpec: spec.steps.1.dependsOn: Input should be a "
                           "valid list"),
}


async def task_in(backend: Backend, task_id: int, state: str) -> bool:
    """Whether the task is in `state` now."""
    return (await backend.get_task(task_id)).state == state


async def waited_for(backend: Backend, *task_ids: int) -> bool:
    """Whether a `Client.wait` has registered for every one of these tasks (so the
    statement that ends each one from now on announces it)."""
    registered = await backend.pool.fetchval(
        "SELECT count(DISTINCT task_id) FROM shoal.waits WHERE task_id = ANY($1::bigint[])",
        task_ids)
    return bool(registered == len(task_ids))
def load_script(path: Path) -> ModuleType:
    """A script that is not in a package (hack/gen_docs.py ...), imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
