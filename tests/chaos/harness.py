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
- overlap: the longest a run went on working (its start, `tick` and `done` notes; not
  its clean-up on cancellation) after another run of the same task had started: what
  self-fencing bounds;
- stale overwrites: a task whose stored result is not that of its latest-started
  completed run (an older lease's result overwrote a newer one's);
- expiry to re-run: for the leases the fault cut off, the longest from a lease's expiry
  to its task's next start (the expiries read from the database by the test at the
  fault, as an observer: nobody can renew a cut-off or frozen worker's lease);
- NotReady: the longest from the fault to a cut-off worker's /readyz answering 503;
- recovery: seconds from the end of the fault to the first run that starts after it
  (its claim reached the database after the fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shoal import Client, Job
from shoal.backend import TRANSIENT_ERRORS, Backend
from tests.apps.recorder import app, runs
from tests.chaos.proxy import Proxy
from tests.cluster.postgres import free_port
from tests.support import Spawner, WorkerProcess, eventually
from tests.worker.test_fleet import http_get

FINAL = ("succeeded", "dead", "cancelled")


@dataclass
class Report:
    scenario: str
    tasks: int
    lost: int
    dup_killed: int
    dup_other: int
    overlap: float
    stale: int
    expiry_to_rerun: float | None
    not_ready: float | None
    recovery: float | None
    notes: str = ""

    def row(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        return (f"| {self.scenario} | {self.tasks:,} | {self.lost} | {self.dup_killed} | "
                f"{self.dup_other} | {self.overlap:.1f} | {self.stale} | "
                f"{seconds(self.expiry_to_rerun)} | {seconds(self.not_ready)} | "
                f"{seconds(self.recovery)} |")


HEADER = ("| scenario | tasks | lost | duplicate runs (of killed runs) | duplicate runs "
          "(of others) | overlap s | stale overwrites | expiry to re-run s | NotReady s | "
          "recovery s |\n|---|---|---|---|---|---|---|---|---|---|")
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
    on purpose. `exits` lists every exit no test asked for.

    With `proxied`, each worker reaches Postgres through a black-hole proxy of its own
    (`proxies`, by worker id: a restart keeps it, as a pod keeps its node); with
    `probed`, each serves /readyz on a port of its own (`ports`)."""

    spawn: Spawner
    dsn: str
    args: Sequence[str] = ()
    claim_ttl: str = "2s"
    proxied: bool = False
    probed: bool = False
    slots: list[Slot] = field(default_factory=list)
    exits: list[tuple[str, int]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)  # pids this test killed
    crashed: set[int] = field(default_factory=set)  # pids that ended without a drain
    proxies: dict[str, Proxy] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _watch: asyncio.Task[None] | None = None

    async def start(self, count: int) -> None:
        for _ in range(count):
            await self.add()
        self._watch = asyncio.create_task(self._restart_exited())

    async def add(self, worker_id: str | None = None) -> Slot:
        worker_id = worker_id or f"w{len(self.spawn.started)}-{uuid.uuid4().hex[:6]}"
        dsn, args = self.dsn, list(self.args)
        if self.proxied:
            if worker_id not in self.proxies:
                url = urlsplit(self.dsn)
                assert url.hostname is not None
                self.proxies[worker_id] = proxy = Proxy(url.hostname, url.port or 5432)
                await proxy.start()
            dsn = self.proxies[worker_id].dsn(self.dsn)
        if self.probed:
            port = self.ports.setdefault(worker_id, free_port())
            args += ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
        process = await self.spawn.worker(dsn, *args, claim_ttl=self.claim_ttl,
                                          poll_interval="200ms", worker_id=worker_id,
                                          app="tests/apps/recorder.py:app")
        slot = Slot(process.worker_id, process)
        self.slots.append(slot)
        return slot

    def slot(self, worker_id: str) -> Slot:
        (found,) = [s for s in self.slots if s.worker_id == worker_id]
        return found

    async def _restart_exited(self) -> None:
        while not self.spawn.closed:  # a test that failed never stopped its fleet
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
        for proxy in self.proxies.values():
            await proxy.close()
        assert codes == [0] * len(codes), [(s.worker_id, c) for s, c in zip(self.slots, codes,
                                                                           strict=True)]


@dataclass
class Fault:
    """A fault injected into some workers: when, and the leases it cut off (task id ->
    expiry in Unix seconds, read from the database right after the fault began)."""

    began: float
    expiries: dict[int, float]


async def leases_of(backend: Backend, worker_ids: Iterable[str]) -> dict[int, float]:
    """The running leases the workers hold now, with their expiry (an observer's read)."""
    rows = await backend.pool.fetch(
        "SELECT id, extract(epoch FROM lease_expires_at)::float8 AS expires FROM shoal.tasks"
        " WHERE state = 'running' AND worker_id = ANY($1::text[])", list(worker_ids))
    return {r["id"]: r["expires"] for r in rows}


async def leader(backend: Backend) -> str:
    """The worker leading maintenance now ('' when the role is free)."""
    name = await backend.pool.fetchval(
        "SELECT holder FROM shoal.leaders WHERE role = 'maintenance' AND expires_at > now()")
    return str(name or "")


async def not_ready_after(port: int, since: float, within: float) -> float:
    """Seconds from `since` to the first 503 of the worker's /readyz."""
    async def unready() -> bool:
        with contextlib.suppress(OSError):
            return (await http_get(port, "/readyz"))[0] == 503
        return False

    await eventually(unready, within=within, interval=0.05, what="/readyz to answer 503")
    return time.time() - since


@contextlib.asynccontextmanager
async def database(dsn: str) -> AsyncIterator[Backend]:
    backend = await Backend.connect(dsn, max_size=2)
    await backend.migrate()
    try:
        yield backend
    finally:
        await backend.close()


async def enqueue(backend: Backend, log: str, count: int, sleep: float, tick: float = 0.0,
                  **options: Any) -> list[int]:
    """`count` tracked tasks of `sleep` seconds (ticking every `tick` s, when set)."""
    payload: dict[str, Any] = {"log": log, "sleep": sleep} | ({"tick": tick} if tick else {})
    jobs = [Job("tracked", payload, **options)] * count
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
                  notes: str = "", fault: Fault | None = None,
                  not_ready: float | None = None) -> Report:
    """Count lost tasks, duplicate runs, overlaps, stale overwrites, the time from each
    cut-off lease's expiry to its re-run and the recovery; record and print the report,
    and fail on any loss or stale overwrite (each scenario asserts its own bounds on
    the times)."""
    rows = {r["id"]: r for r in await backend.pool.fetch(
        "SELECT id, state::text, result FROM shoal.tasks WHERE id = ANY($1::bigint[])",
        list(ids))}
    starts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    done: dict[int, list[dict[str, Any]]] = defaultdict(list)
    working: dict[str, float] = {}  # run id -> the last time it worked
    for event in runs(log):
        if event["event"] == "start":
            starts[event["task"]].append(event)
        elif event["event"] == "done":
            done[event["task"]].append(event)
        if event["event"] in ("start", "tick", "done") and "run_id" in event:
            working[event["run_id"]] = max(working.get(event["run_id"], 0.0), event["t"])
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
    overlap = max((working.get(a["run_id"], 0.0) - b["t"]
                   for i in ids for a in starts[i] for b in starts[i]
                   if "run_id" in a and a["t"] < b["t"]), default=0.0)
    rerun = None
    if fault is not None:  # the first start after the fault is the cut-off run's re-run
        reruns = [min(e["t"] for e in starts[i] if e["t"] > fault.began) - expires
                  for i, expires in fault.expiries.items()
                  if any(e["t"] > fault.began for e in starts[i])]
        rerun = max(reruns, default=None)
    after = [e["t"] for events in starts.values() for e in events if e["t"] >= fault_end]
    recovery = min(after) - fault_end if after else None
    report = Report(scenario, len(ids), len(lost), dup_killed, dup_other, max(0.0, overlap),
                    len(stale), rerun, not_ready, recovery, notes)
    RESULTS.append(report)
    print(f"\n{HEADER}\n{report.row()}  {notes}")
    assert not lost, f"{scenario}: lost {lost[:20]}"
    assert not stale, f"{scenario}: stale overwrites {stale[:20]}"
    return report
