"""What every chaos scenario shares: a fleet of `shoal worker` processes kept running like
a Deployment's pods, the load, and the count of what happened — taken from the handlers'
own run log (tests/apps/recorder.py `tracked`: one O_APPEND line per start, done and
cancel, each run with an id of its own), not from Shoal's bookkeeping.

The count, per scenario:
- lost: a task that never completed a run, or that the database does not show as
  succeeded (expected dead letters aside);
- duplicate runs of killed runs: runs of a task after an earlier run that did not
  complete (killed, frozen past its lease, released on a drain) or whose process
  died before it could report;
- duplicate runs of others: runs after an earlier run that completed in a process
  that lived on (its report refused: a lease that moved on while it ran);
- stale overwrites: a task whose stored result is not that of its latest-started
  completed run (an older lease's result overwrote a newer one's);
- recovery: seconds from the end of the fault to the first run that starts after it
  (its claim reached the database after the fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal import Client, Job
from shoal.backend import TRANSIENT_ERRORS, Backend
from tests.apps.recorder import app, runs
from tests.support import Spawner, WorkerProcess, eventually

FINAL = ("succeeded", "dead", "cancelled")


@dataclass
class Report:
    scenario: str
    tasks: int
    lost: int
    dup_killed: int
    dup_other: int
    stale: int
    recovery: float | None
    notes: str = ""

    def row(self) -> str:
        recovery = "-" if self.recovery is None else f"{self.recovery:.1f}"
        return (f"| {self.scenario} | {self.tasks:,} | {self.lost} | {self.dup_killed} | "
                f"{self.dup_other} | {self.stale} | {recovery} |")


HEADER = ("| scenario | tasks | lost | duplicate runs (of killed runs) | duplicate runs "
          "(of others) | stale overwrites | recovery s |\n|---|---|---|---|---|---|---|")
RESULTS: list[Report] = []


@dataclass
class Slot:
    worker_id: str
    process: WorkerProcess
    ended_on_purpose: bool = False
    restarts: int = 0


@dataclass
class Fleet:
    """Worker processes run like a Deployment's pods: one that exits is started again under
    the same id after a moment (a container restarting in its pod), unless it was stopped
    on purpose. `exits` lists every exit no test asked for."""

    spawn: Spawner
    dsn: str
    args: Sequence[str] = ()
    claim_ttl: str = "2s"
    slots: list[Slot] = field(default_factory=list)
    exits: list[tuple[str, int]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)  # pids this test killed
    crashed: set[int] = field(default_factory=set)  # pids that ended without a drain
    _watch: asyncio.Task[None] | None = None

    async def start(self, count: int) -> None:
        for _ in range(count):
            await self.add()
        self._watch = asyncio.create_task(self._restart_exited())

    async def add(self, worker_id: str | None = None) -> Slot:
        process = await self.spawn.worker(self.dsn, *self.args, claim_ttl=self.claim_ttl,
                                          poll_interval="200ms", worker_id=worker_id,
                                          app="tests/apps/recorder.py:app")
        slot = Slot(process.worker_id, process)
        self.slots.append(slot)
        return slot

    async def _restart_exited(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for slot in list(self.slots):
                code = slot.process.proc.returncode
                if code is None or slot.ended_on_purpose:
                    continue
                if slot.process.pid not in self.killed:
                    self.exits.append((slot.worker_id, code))
                self.crashed.add(slot.process.pid)
                self.slots.remove(slot)
                restarted = await self.add(slot.worker_id)
                restarted.restarts = slot.restarts + 1

    def alive(self) -> list[Slot]:
        return [s for s in self.slots if s.process.proc.returncode is None]

    def kill(self, slot: Slot, sig: signal.Signals = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.killed.add(slot.process.pid)
        slot.process.signal(sig)

    async def replace(self, slot: Slot) -> Slot:
        """A rolling update's step: SIGTERM one worker, wait for its drain, start a new one."""
        slot.ended_on_purpose = True
        slot.process.signal(signal.SIGTERM)
        assert await slot.process.wait(within=60) == 0, slot.process.output()[-2000:]
        return await self.add()

    async def stop(self) -> None:
        """SIGTERM every worker once it handles signals; each must drain and exit 0."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for slot in self.slots:  # a restart may still be importing: SIGTERM would kill it
            await eventually(lambda s=slot: " serving " in s.process.output(), within=60,
                             what=f"{slot.worker_id} to handle signals")
        for slot in self.slots:
            slot.ended_on_purpose = True
            slot.process.signal(signal.SIGTERM)
        codes = [await s.process.wait(within=60) for s in self.slots]
        assert codes == [0] * len(codes), [(s.worker_id, c) for s, c in zip(self.slots, codes,
                                                                           strict=True)]


@contextlib.asynccontextmanager
async def database(dsn: str) -> AsyncIterator[Backend]:
    backend = await Backend.connect(dsn, max_size=2)
    await backend.migrate()
    try:
        yield backend
    finally:
        await backend.close()


async def enqueue(backend: Backend, log: str, count: int, sleep: float,
                  **options: Any) -> list[int]:
    jobs = [Job("tracked", {"log": log, "sleep": sleep}, **options)] * count
    return await Client(backend, app).enqueue_many(jobs)


async def states(backend: Backend) -> Counter[str]:
    """Tasks by state; empty while the database cannot be reached."""
    try:
        rows = await backend.pool.fetch(
            "SELECT state::text, count(*) AS n FROM shoal.tasks GROUP BY 1")
    except TRANSIENT_ERRORS:
        return Counter()
    return Counter({r["state"]: r["n"] for r in rows})


def completed(log: str) -> int:
    return sum(1 for e in runs(log) if e["event"] == "done")


async def settled(backend: Backend, total: int, within: float) -> None:
    async def all_final() -> bool:
        found = await states(backend)
        return sum(found[s] for s in FINAL) == total

    await eventually(all_final, within=within, interval=0.2, what=f"{total} tasks to finish")


async def kill_loop(fleet: Fleet, log: str, total: int, kills: int) -> float:
    """SIGKILL a random running worker every 1-2 s, `kills` times or until the work is
    done; the time of the last kill."""
    last = time.time()
    for _ in range(kills):
        await asyncio.sleep(random.uniform(1.0, 2.0))
        if completed(log) >= total:
            break
        alive = fleet.alive()
        if alive:
            fleet.kill(random.choice(alive))
            last = time.time()
    return last


async def analyze(scenario: str, backend: Backend, log: str, ids: Sequence[int],
                  fault_end: float, crashed: set[int], expected_dead: Sequence[int] = (),
                  notes: str = "") -> Report:
    """Count lost tasks, duplicate runs, stale overwrites and the recovery; record and
    print the report, and fail on any loss or stale overwrite."""
    rows = {r["id"]: r for r in await backend.pool.fetch(
        "SELECT id, state::text, result FROM shoal.tasks WHERE id = ANY($1::bigint[])",
        list(ids))}
    starts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    done: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in runs(log):
        if event["event"] == "start":
            starts[event["task"]].append(event)
        elif event["event"] == "done":
            done[event["task"]].append(event)
    dead = set(expected_dead)
    lost = [i for i in ids if i not in dead and (rows[i]["state"] != "succeeded" or not done[i])]
    dup_killed = dup_other = 0
    for i in ids:
        completed_runs = {e["run_id"] for e in done[i]}
        ordered = sorted(starts[i], key=lambda e: e["t"])
        for earlier in ordered[:-1]:
            if earlier["run_id"] in completed_runs and earlier["pid"] not in crashed:
                dup_other += 1
            else:
                dup_killed += 1
    stale = []
    for i in ids:
        if done[i] and rows[i]["result"] is not None:
            started = {e["run_id"]: e["t"] for e in starts[i]}
            latest = max(done[i], key=lambda e: started.get(e["run_id"], 0.0))
            if rows[i]["result"]["run_id"] != latest["run_id"]:
                stale.append(i)
    after = [e["t"] for events in starts.values() for e in events if e["t"] >= fault_end]
    recovery = min(after) - fault_end if after else None
    report = Report(scenario, len(ids), len(lost), dup_killed, dup_other, len(stale),
                    recovery, notes)
    RESULTS.append(report)
    print(f"\n{HEADER}\n{report.row()}  {notes}")
    assert not lost, f"{scenario}: lost {lost[:20]}"
    assert not stale, f"{scenario}: stale overwrites {stale[:20]}"
    return report
