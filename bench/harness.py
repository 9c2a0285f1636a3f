"""Common workload and measurement for the queue benchmark (issue 2).

One *cell* = one system with W worker processes, two phases, each in a fresh
database on the same server with freshly started workers:

1. throughput: N no-op tasks are enqueued up front, then the W worker
   processes are released together; tasks/s = tasks done / (first handler
   start -> every task started and durably completed according to the
   system's own tables). A phase that hits the deadline reports the rate it
   sustained and how many tasks it finished;
2. idle latency: with the W workers idle and waiting, tasks are enqueued one
   at a time; enqueue-to-start latency = handler start wall time - enqueue
   wall time, reported as p50/p99.

Handlers record ``(task id, start time)`` lines in a per-process file, so the
harness counts runs per task id: duplicates = runs - distinct ids, missing =
enqueued ids that never ran. Postgres keeps ``synchronous_commit`` on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Protocol, TypedDict

import asyncpg

from tests.cluster.postgres import dsn_for

ENV_RECORD = "BENCH_RECORD_FILE"
ENV_READY = "BENCH_READY_FILE"
ENV_GO = "BENCH_GO_FILE"
REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0  # seconds for all workers of a cell to import and connect
STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
IDLE_SETTLE = 1.0  # seconds the released workers get to start listening before the idle phase


class Payload(TypedDict):
    """Task payload: the harness-assigned id and the enqueue wall time."""

    id: int
    ts: float


class System(Protocol):
    """What each adapter implements (harness side; workers are subprocesses)."""

    name: str
    # Cap on tasks per throughput cell for systems whose enqueue alone would
    # exceed the run's time budget (None: no cap).
    max_tasks: int | None

    async def setup(self, dsn: str) -> None:
        """Install the system's schema in the fresh database and open clients."""

    async def enqueue_many(self, payloads: Sequence[Payload]) -> None:
        """Enqueue many no-op tasks using the system's bulk API where it has one."""

    async def enqueue_one(self, payload: Payload) -> None:
        """Enqueue a single no-op task (idle-latency phase)."""

    async def outstanding(self) -> int | None:
        """Tasks not yet durably completed, or None if the system can't tell."""

    def worker_argv(self, dsn: str) -> list[str]:
        """Command line of one worker process."""

    async def close(self) -> None:
        """Close clients opened by ``setup``."""


# --------------------------------------------------------------------------
# Worker side: used inside worker processes.


class Recorder:
    """Appends one ``<task id> <start time>`` line per handler run."""

    def __init__(self) -> None:
        self._file: IO[str] = open(os.environ[ENV_RECORD], "a", buffering=1)  # noqa: SIM115

    def record(self, task_id: int) -> None:
        """Record that the handler for ``task_id`` started now."""
        self._file.write(f"{task_id} {time.time():.6f}\n")


def worker_barrier() -> None:
    """Signal readiness, then block until the harness releases all workers."""
    Path(os.environ[ENV_READY]).touch()
    go = Path(os.environ[ENV_GO])
    while not go.exists():
        time.sleep(0.002)


# --------------------------------------------------------------------------
# Databases on the benchmark's Postgres server (tests.cluster.postgres starts it).


async def recreate_database(admin_dsn: str, database: str) -> str:
    """Drop and create ``database``; return its DSN."""
    await drop_database(admin_dsn, database)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return dsn_for(admin_dsn, database)


async def drop_database(admin_dsn: str, database: str) -> None:
    """Drop ``database`` (forcing out leftover sessions)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


# --------------------------------------------------------------------------
# Measurement.


@dataclasses.dataclass
class CellConfig:
    """Sizes and limits of one cell."""

    tasks: int
    idle_tasks: int
    idle_spacing: float
    deadline: float


@dataclasses.dataclass
class CellResult:
    """What one cell measured."""

    system: str
    workers: int
    tasks: int
    enqueue_per_s: float = 0.0
    tasks_per_s: float = 0.0
    idle_p50_ms: float | None = None
    idle_p99_ms: float | None = None
    duplicates: int = 0
    missing: int = 0
    note: str = ""


class _Records:
    """Incrementally reads the per-process record files of one cell.

    A poll costs what the new lines cost, so polling while workers run takes
    (almost) no CPU from them, whichever system is measured.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}
        self.runs: list[tuple[int, float]] = []
        self._seen: set[int] = set()

    def poll(self) -> None:
        for path in self.directory.glob("rec-*.txt"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(complete)
            for line in complete.decode().splitlines():
                task_id, ts = line.split()
                self.runs.append((int(task_id), float(ts)))
                self._seen.add(int(task_id))

    def distinct(self) -> int:
        """Distinct task ids run so far (a cell's directory holds one phase's ids only)."""
        return len(self._seen)


class _Workers:
    """W worker subprocesses, started together through the ready/go barrier."""

    def __init__(self, argv: list[str], count: int, directory: Path) -> None:
        self.directory = directory
        self.go = directory / "go"
        self.procs: list[subprocess.Popen[bytes]] = []
        for index in range(count):
            env = {
                **os.environ,
                ENV_RECORD: str(directory / f"rec-{index}.txt"),
                ENV_READY: str(directory / f"ready-{index}"),
                ENV_GO: str(self.go),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
                ),
            }
            log = (directory / f"worker-{index}.log").open("wb")
            self.procs.append(
                subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
            )

    async def release(self) -> None:
        """Wait until every worker reported ready, then let them all go."""
        async with asyncio.timeout(READY_TIMEOUT):
            while len(list(self.directory.glob("ready-*"))) < len(self.procs):
                if any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"a worker exited early; see {self.directory}/worker-*.log")
                await asyncio.sleep(0.01)
        self.go.touch()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    async def stop(self) -> None:
        """SIGTERM every worker; SIGKILL those still running after STOP_GRACE seconds."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE):
                await asyncio.gather(*(asyncio.to_thread(p.wait) for p in self.procs))
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------
# CPU time of processes (Linux: from /proc).

TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of `pids` (processes gone since count as zero)."""
    total = 0
    for pid in pids:
        try:
            fields = proc_stat(pid)
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def percentile(values: Sequence[float], q: float) -> float:
    """Inclusive-method percentile (q in 0..100)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


async def wait_done(
    system: System, records: _Records, ids: range, workers: _Workers, deadline: float
) -> bool:
    """Wait until all ``ids`` ran and the system reports nothing outstanding."""
    while time.monotonic() < deadline:
        records.poll()
        if records.distinct() >= len(ids):
            outstanding = await system.outstanding()
            if not outstanding:
                return True
            await asyncio.sleep(0.005)
        else:
            if not workers.alive():
                return False
            await asyncio.sleep(0.02)
    return False


@contextlib.asynccontextmanager
async def fresh_run(
    system: System, admin_dsn: str, database: str, workers: int, workdir: Path
) -> AsyncIterator[tuple[_Workers, _Records]]:
    """Fresh database with the system set up, and W (not yet released) workers."""
    dsn = await recreate_database(admin_dsn, database)
    directory = workdir / database
    directory.mkdir(parents=True)
    await system.setup(dsn)
    pool: _Workers | None = None
    try:
        pool = _Workers(system.worker_argv(dsn), workers, directory)
        yield pool, _Records(directory)
    finally:
        if pool is not None:
            await pool.stop()
        await system.close()
        await drop_database(admin_dsn, database)


def _count_runs(records: _Records, expected: range, result: CellResult, *,
                complete: bool) -> None:
    """Add duplicate runs and (for a phase that completed) missing ids to ``result``.

    Called once the workers are stopped: the last poll reads what they wrote since.
    """
    records.poll()
    counts = Counter(i for i, _ in records.runs)
    result.duplicates += sum(counts.values()) - len(counts)
    if complete:
        result.missing += sum(1 for i in expected if i not in counts)


async def _throughput_phase(
    system: System, admin_dsn: str, result: CellResult, config: CellConfig, workdir: Path
) -> None:
    database = f"bench_{system.name}_w{result.workers}_tput"
    ids = range(result.tasks)
    async with fresh_run(system, admin_dsn, database, result.workers, workdir) as run:
        pool, records = run
        started = time.time()
        await system.enqueue_many([Payload(id=i, ts=started) for i in ids])
        result.enqueue_per_s = len(ids) / (time.time() - started)
        await pool.release()
        drained = await wait_done(system, records, ids, pool, time.monotonic() + config.deadline)
        end = time.time()
        starts = [ts for i, ts in records.runs if i in ids]
        done = records.distinct()
        if starts:
            last = end if drained else max(starts)
            window = last - min(starts)
            result.tasks_per_s = done / window if window > 0 else 0.0
        if not drained:
            result.note = f"only {done:,} of {len(ids):,} done in {config.deadline:.0f}s"
    _count_runs(records, ids, result, complete=drained)


async def _idle_phase(
    system: System, admin_dsn: str, result: CellResult, config: CellConfig, workdir: Path
) -> None:
    database = f"bench_{system.name}_w{result.workers}_idle"
    ids = range(config.idle_tasks)
    enqueued_at: dict[int, float] = {}
    async with fresh_run(system, admin_dsn, database, result.workers, workdir) as run:
        pool, records = run
        await pool.release()
        await asyncio.sleep(IDLE_SETTLE)
        for i in ids:
            enqueued_at[i] = time.time()
            await system.enqueue_one(Payload(id=i, ts=enqueued_at[i]))
            await asyncio.sleep(config.idle_spacing)
        drained = await wait_done(system, records, ids, pool, time.monotonic() + config.deadline)
        latencies = sorted((ts - enqueued_at[i]) * 1000 for i, ts in records.runs if i in ids)
        if latencies:
            result.idle_p50_ms = percentile(latencies, 50)
            result.idle_p99_ms = percentile(latencies, 99)
        if not drained:
            result.note = "; ".join(filter(None, [result.note, "idle phase incomplete"]))
    _count_runs(records, ids, result, complete=drained)


async def run_cell(
    system: System, admin_dsn: str, workers: int, config: CellConfig, workdir: Path
) -> CellResult:
    """Throughput phase, then idle-latency phase, each in its own fresh database."""
    tasks = min(config.tasks, system.max_tasks or config.tasks)
    result = CellResult(system.name, workers, tasks)
    await _throughput_phase(system, admin_dsn, result, config, workdir)
    await _idle_phase(system, admin_dsn, result, config, workdir)
    return result


def python_argv(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
