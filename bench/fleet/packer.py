"""Many real workers in one process, and the harness side that drives a few such processes.

A *packer* is a process (``python -m bench.fleet.packer``) that runs ``--count``
`shoal.worker.Worker` objects on one event loop. Each is the real class with its
own `WorkerConfig`, its own connection (a `Session`: its own backend process on
the server, its own LISTENs, statement bounds and keepalives) and its own
services (claim, report, heartbeat, fence, maintenance, listener, periodic);
only the process, its event loop and its Prometheus registry are shared.

The benchmark instruments each worker's `Backend.claim_and_complete` (the
claim statement) from the outside, without changing worker code:

- a *gate*: while it is closed, a claim returns no task: one with nothing to
  complete does not run the statement, one carrying successes runs it with a
  limit of 0 (the worker then waits for a wake-up or its poll interval, as
  after an empty claim). Opening it wakes every worker,
  so a saturation phase starts for all of them at once, after its backlog was
  enqueued and committed, instead of with a ramp while it is written;
- a stopwatch around every claim statement (its round trip as the worker sees it).

Handler runs are counted and recorded in memory (task id, start time, worker id).

The protocol, one line each way (stdout: what the packer says; stdin: commands):

    R <count>                      every worker registered (its liveness row exists)
    P <time> <started> <settled>   progress, every 20 ms while it changes (nothing
                                   while idle): handler runs and durably completed
                                   successes so far
    E <text>                       a worker failed (the harness stops the run)
    gate | go | clear | dump PATH | stop   ->   OK <command>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shoal import App, logs
from shoal.backend import ClaimedTask, Outcome, WorkerIdentity
from shoal.worker import Worker, WorkerConfig
from shoal.worker import metrics as worker_metrics

TASK = "noop"
REPO = Path(__file__).resolve().parents[2]
PROGRESS_EVERY = 0.02  # seconds
QUIET_AFTER = 1.0  # seconds without a change before progress waits for a handler run

app = App()
RUNS: list[tuple[int, float, str]] = []  # (payload id, handler start, worker id)
STARTED = [0]  # handler runs since the process started
RAN = asyncio.Event()  # a handler ran (wakes the progress reports)


@app.task(TASK)
async def noop(payload: dict[str, Any]) -> None:
    """The no-op task: records which worker started it, and when."""
    fields = logs.TASK_FIELDS.get()
    RUNS.append((payload["id"], time.time(), str(fields["pod"]) if fields else "?"))
    STARTED[0] += 1
    RAN.set()


Claim = Callable[..., Awaitable[tuple[list[ClaimedTask], set[int]]]]


def instrument(worker: Worker, gate: asyncio.Event, durations: list[float]) -> None:
    """Put the gate and the stopwatch around this worker's claim statement."""
    claim: Claim = worker.backend.claim_and_complete

    async def gated(identity: WorkerIdentity, limit: int, lease_seconds: float,
                    succeeded: Sequence[Outcome], holding: Any = ()
                    ) -> tuple[list[ClaimedTask], set[int]]:
        if not gate.is_set():
            if not succeeded:
                return [], set()
            limit = 0  # complete the successes, claim nothing
        started = time.perf_counter()
        try:
            return await claim(identity, limit, lease_seconds, succeeded, holding)
        finally:
            durations.append(time.perf_counter() - started)

    worker.backend.claim_and_complete = gated  # type: ignore[method-assign,assignment]


def raise_fd_limit() -> None:
    """Each worker holds a socket: allow as many descriptors as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def packer(args: argparse.Namespace) -> int:
    raise_fd_limit()
    gate = asyncio.Event()
    if not args.gated:
        gate.set()
    durations: list[float] = []
    workers: list[Worker] = []
    for i in range(args.count):
        poll = {} if args.poll_interval is None else {"poll_interval": args.poll_interval}
        config = WorkerConfig(
            dsn=args.dsn, worker_id=f"fleet-{args.index}-{i}", metrics_port=0,
            concurrency=args.concurrency, batch_size=args.batch_size,
            claim_ttl=args.claim_ttl, pod_name=None, **poll)
        worker = Worker(app, config)
        instrument(worker, gate, durations)
        workers.append(worker)
    runs: list[asyncio.Task[int]] = []
    # Starts spread over `ramp` seconds: no burst of connections, and the workers'
    # poll timers out of step, as pods started at different times are.
    for worker in workers:
        runs.append(asyncio.create_task(worker.run()))
        await asyncio.sleep(args.ramp / args.count)
    while not all(w.signals.registered.is_set() for w in workers):
        failed = [r for r in runs if r.done()]
        if failed:
            say(f"E a worker ended during start-up: {_ending(failed[0])}")
            return 1
        await asyncio.sleep(0.05)
    say(f"R {args.count}")
    watch = asyncio.create_task(_watch(runs))
    progress = asyncio.create_task(_progress())
    try:
        await _commands(workers, gate, durations)
    finally:
        progress.cancel()
        watch.cancel()
        for worker in workers:
            worker.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await asyncio.gather(*runs, return_exceptions=True)
    say("OK stop")
    return 0


async def _watch(runs: list[asyncio.Task[int]]) -> None:
    """Say so when a worker ends before it was told to."""
    done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
    say(f"E a worker ended: {_ending(next(iter(done)))}")


def _ending(run: asyncio.Task[int]) -> str:
    error = run.exception()
    return repr(error) if error is not None else f"status {run.result()}"


async def _progress() -> None:
    """Report progress every PROGRESS_EVERY while it changes; while nothing runs, wait
    for a handler to start (no timer of the benchmark's own in an idle process)."""
    settled = worker_metrics.task_metrics(TASK).finished
    last = (-1, -1)
    unchanged = 0.0
    while True:
        now = (STARTED[0], settled["succeeded"])
        if now != last:
            say(f"P {time.time():.6f} {now[0]} {now[1]}")
            last, unchanged = now, 0.0
        elif unchanged >= QUIET_AFTER:
            RAN.clear()
            await RAN.wait()
            continue
        await asyncio.sleep(PROGRESS_EVERY)
        unchanged += PROGRESS_EVERY


async def _commands(workers: list[Worker], gate: asyncio.Event, durations: list[float]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        command, _, argument = line.partition(" ")
        if command == "stop":
            return
        if command == "gate":
            gate.clear()
        elif command == "go":
            gate.set()
            for worker in workers:
                worker.signals.wake.set()
        elif command == "clear":
            RUNS.clear()
            durations.clear()
        elif command == "dump":
            with open(argument, "w") as out:  # noqa: ASYNC230 (the workers wait: not measured)
                _dump(out, durations)
            RUNS.clear()
            durations.clear()
        else:
            say(f"E unknown command {line!r}")
            continue
        say(f"OK {command}")


def _dump(out: IO[str], durations: list[float]) -> None:
    out.writelines(f"R {i} {ts:.6f} {pod}\n" for i, ts, pod in RUNS)
    out.writelines(f"C {d:.6f}\n" for d in durations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--index", type=int, default=0, help="this packer's number")
    parser.add_argument("--count", type=int, required=True, help="workers in this process")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="seconds (default: the worker's default)")
    parser.add_argument("--claim-ttl", type=float, default=30.0)
    parser.add_argument("--ramp", type=float, default=1.0,
                        help="seconds over which the workers are started")
    parser.add_argument("--gated", action="store_true", help="start with the claim gate closed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness stops packers itself
    return asyncio.run(packer(args))


# --------------------------------------------------------------------------
# Harness side.


@dataclass
class Run:
    """One handler run: payload id, start (Unix time), worker id."""

    task: int
    at: float
    worker: str


@dataclass
class Collected:
    """What the packers recorded since they were last cleared."""

    runs: list[Run] = field(default_factory=list)
    claims: list[float] = field(default_factory=list)  # claim round trips, seconds


@dataclass
class WorkerOptions:
    """The workers' settings (the same for every worker of a fleet)."""

    concurrency: int = 100
    batch_size: int = 100
    poll_interval: float | None = None  # None: the worker's default
    claim_ttl: float = 30.0


class _Packer:
    def __init__(self, proc: asyncio.subprocess.Process, count: int) -> None:
        self.proc = proc
        self.count = count
        self.ready = asyncio.Event()
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.started = 0
        self.settled = 0


class Fleet:
    """N workers spread evenly over `procs` packer processes (one worker per process
    when N <= procs). Progress is the sum of the packers' last reports;
    `history` keeps every report as (time, started, settled) totals."""

    def __init__(self, dsn: str, size: int, procs: int, options: WorkerOptions, logs: Path,
                 *, gated: bool = False, src: Path = REPO) -> None:
        """`src`: the source tree the workers run from (another commit's, to compare)."""
        self.dsn = dsn
        self.src = src
        self.size = size
        self.procs = min(procs, size)
        self.options = options
        self.logs = logs
        self.gated = gated
        self.packers: list[_Packer] = []
        self.history: list[tuple[float, int, int]] = []
        self.failure: str | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.changed = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.packers]

    @property
    def started(self) -> int:
        return sum(p.started for p in self.packers)

    @property
    def settled(self) -> int:
        return sum(p.settled for p in self.packers)

    @property
    def packed(self) -> bool:
        return self.size > self.procs

    async def start(self, ready_within: float) -> float:
        """Start the packers; return the seconds until every worker registered."""
        began = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        counts = [self.size // self.procs + (i < self.size % self.procs)
                  for i in range(self.procs)]
        o = self.options
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(self.src / "worker"), str(self.src), os.environ.get("PYTHONPATH"))
            if p)}
        for index, count in enumerate(counts):
            argv = [sys.executable, "-m", "bench.fleet.packer", "--dsn", self.dsn,
                    "--index", str(index), "--count", str(count),
                    "--concurrency", str(o.concurrency), "--batch-size", str(o.batch_size),
                    "--claim-ttl", str(o.claim_ttl), "--ramp", f"{max(1.0, count / 100):g}"]
            if o.poll_interval is not None:
                argv += ["--poll-interval", str(o.poll_interval)]
            if self.gated:
                argv.append("--gated")
            with (self.logs / f"packer-{self.size}-{index}.log").open("ab") as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=err, cwd=self.src, env=env, limit=1 << 20)
            packer = _Packer(proc, count)
            self.packers.append(packer)
            self._readers.append(asyncio.create_task(self._read(packer)))
        try:
            async with asyncio.timeout(ready_within):
                for packer in self.packers:
                    await packer.ready.wait()
                    self._check()
        except TimeoutError:
            raise RuntimeError(f"{self.size} workers not registered within {ready_within:g}s; "
                               f"see {self.logs}/packer-*.log") from None
        return time.monotonic() - began

    def _check(self) -> None:
        if self.failure:
            raise RuntimeError(f"packer: {self.failure}; see {self.logs}/packer-*.log")

    async def _read(self, packer: _Packer) -> None:
        assert packer.proc.stdout is not None
        while line := (await packer.proc.stdout.readline()).decode():
            kind, _, rest = line.strip().partition(" ")
            if kind == "P":
                at, started, settled = rest.split()
                packer.started, packer.settled = int(started), int(settled)
                self.history.append((float(at), self.started, self.settled))
                self.changed.set()
            elif kind == "R":
                packer.ready.set()
            elif kind == "OK":
                packer.replies.put_nowait(rest)
            elif kind == "E":
                self.failure = self.failure or rest
                packer.ready.set()
                self.changed.set()
        if packer.proc.returncode is None:
            await packer.proc.wait()
        if packer.replies.empty() and not self.failure:
            self.failure = f"packer {packer.proc.pid} exited ({packer.proc.returncode})"
        packer.replies.put_nowait("")
        self.changed.set()

    async def command(self, line: str, within: float = 60.0) -> None:
        """Send `line` to every packer at once and wait for each one's answer."""
        for packer in self.packers:
            assert packer.proc.stdin is not None
            packer.proc.stdin.write(line.encode() + b"\n")
        async with asyncio.timeout(within):
            for packer in self.packers:
                assert packer.proc.stdin is not None
                await packer.proc.stdin.drain()
                await packer.replies.get()
        self._check()

    async def wait_settled(self, target: int, within: float) -> None:
        """Wait until `target` successes in all have been durably completed."""
        await self._wait(lambda: self.settled >= target, within,
                         f"{target:,} completions (have {{}})")

    async def wait_started(self, target: int, within: float) -> None:
        await self._wait(lambda: self.started >= target, within,
                         f"{target:,} handler runs (have {{}})")

    async def wait_quiet(self, within: float, quiet: float = 0.3) -> None:
        """Wait until every handler run is settled and no packer reported for `quiet` s
        (after closing the gate: what was claimed has been completed)."""
        deadline = time.monotonic() + within
        while True:
            self._check()
            last = self.history[-1][0] if self.history else 0.0
            if self.started == self.settled and time.time() - last >= quiet:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"still running after {within:g}s: {self.started:,} "
                                   f"started, {self.settled:,} settled")
            await asyncio.sleep(0.05)

    async def _wait(self, done: Callable[[], bool], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not done():
            self._check()
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for " + what.format(
                    f"{self.started:,} started, {self.settled:,} settled"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self.changed.wait()

    async def collect(self, directory: Path) -> Collected:
        """The runs and claim round trips recorded since the last clear (then cleared)."""
        directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        paths = [directory / f"dump-{i}.txt" for i in range(len(self.packers))]
        for packer, path in zip(self.packers, paths, strict=True):
            assert packer.proc.stdin is not None
            packer.proc.stdin.write(f"dump {path}\n".encode())
        async with asyncio.timeout(60):
            for packer in self.packers:
                await packer.replies.get()
        self._check()
        out = Collected()
        for path in paths:
            for line in path.read_text().splitlines():
                kind, *rest = line.split()
                if kind == "R":
                    out.runs.append(Run(int(rest[0]), float(rest[1]), rest[2]))
                else:
                    out.claims.append(float(rest[0]))
            path.unlink()
        return out

    def drops(self) -> int:
        """Connections the workers have dropped so far (each is logged once, with its
        cause: a statement past its bound, a server that closed it ...)."""
        return sum(path.read_text(errors="replace").count("database connection lost")
                   for path in self.logs.glob(f"packer-{self.size}-*.log"))

    async def stop(self) -> None:
        """Drain every worker and end the packers (killed after 90 s)."""
        for packer in self.packers:
            if packer.proc.returncode is None and packer.proc.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    packer.proc.stdin.write(b"stop\n")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(90):
                await asyncio.gather(*(p.proc.wait() for p in self.packers))
        for packer in self.packers:
            if packer.proc.returncode is None:
                packer.proc.kill()
                await packer.proc.wait()
        for reader in self._readers:
            reader.cancel()


if __name__ == "__main__":
    sys.exit(main())
