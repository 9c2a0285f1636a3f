"""Test handlers that leave evidence: every run appends JSON lines to the log file named
in its payload, so tests count handler runs across processes without trusting the
database they test. Load with `--app tests/apps/recorder.py:app`.

Events: `start` when a run begins, `done` when it returns, `cancelled` when it is
cancelled, `failed` when it raises on purpose. Each line names the process (`pid`)
and the host (`host`: the pod's name, in a pod).

In worker pods (the test app image) the log files live in a hostPath folder that
the test process reads on the host (see tests/e2e/support.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from shoal import App, PermanentError, TaskContext

app = App("recorder")


class Run(BaseModel):
    log: str
    sleep: float = 0.0
    fast_flag: str | None = None  # the sleep ends once this file exists
    ok_flag: str | None = None  # `flaky`: fails until this file exists
    tick: float = 0.0  # when set, a `tick` event every `tick` seconds of the sleep


def note(run: Run, ctx: TaskContext, event: str, **extra: Any) -> None:
    line = json.dumps({"event": event, "task": ctx.task_id, "attempt": ctx.attempt,
                       "pid": os.getpid(), "host": socket.gethostname(), "t": time.time(),
                       **extra})
    with open(run.log, "a") as f:  # one small O_APPEND write: lines never interleave
        f.write(line + "\n")


def flag_set(path: str | None) -> bool:
    return bool(path) and Path(path).exists()  # type: ignore[arg-type]


async def sleep(run: Run, ctx: TaskContext, **extra: Any) -> None:
    """`run.sleep` seconds (less once `fast_flag` exists), between its start and done
    notes, with a `tick` note every `run.tick` seconds (the run's signs of life: a run
    works while it ticks); a cancellation is noted too."""
    note(run, ctx, "start", **extra)
    try:
        deadline = time.monotonic() + run.sleep
        while (left := deadline - time.monotonic()) > 0:
            if flag_set(run.fast_flag):
                break
            step = left
            if run.fast_flag:
                step = min(0.02, step)
            if run.tick:
                step = min(run.tick, step)
            await asyncio.sleep(step)
            if run.tick and time.monotonic() < deadline:
                note(run, ctx, "tick", **extra)
    except asyncio.CancelledError:
        note(run, ctx, "cancelled", **extra)
        raise
    note(run, ctx, "done", **extra)


@app.task("record", retries=5, backoff="50ms")
async def record(run: Run, ctx: TaskContext) -> dict[str, int]:
    await sleep(run, ctx)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@app.task("tracked", backoff="50ms")
async def tracked(run: Run, ctx: TaskContext) -> dict[str, str]:
    """`record` with an id for each run, in its notes and its result: the chaos suite
    tells every run apart, and which run's result was stored. Default budgets: no
    retries, three lease expiries."""
    run_id = uuid.uuid4().hex
    await sleep(run, ctx, run_id=run_id)
    return {"run_id": run_id}


@app.task("record-sync", retries=5, backoff="50ms")
def record_sync(run: Run, ctx: TaskContext) -> dict[str, str]:
    note(run, ctx, "start", thread=threading.current_thread().name)
    deadline = time.monotonic() + run.sleep
    while time.monotonic() < deadline and not ctx.cancelled and not flag_set(run.fast_flag):
        time.sleep(0.01)
    note(run, ctx, "cancelled" if ctx.cancelled else "done")
    return {"thread": threading.current_thread().name}


@app.task("flaky", retries=2, backoff="200ms")
async def flaky(run: Run, ctx: TaskContext) -> str:
    note(run, ctx, "start")
    if not flag_set(run.ok_flag):
        note(run, ctx, "failed")
        raise RuntimeError(f"flaky task {ctx.task_id} failed attempt {ctx.attempt}")
    note(run, ctx, "done")
    return "recovered"


@app.task("permanent", retries=5)
async def permanent(run: Run, ctx: TaskContext) -> None:
    note(run, ctx, "start")
    raise PermanentError("this input can never work")


@app.task("stall", retries=1, timeout="300ms", backoff="50ms")
async def stall(run: Run, ctx: TaskContext) -> None:
    note(run, ctx, "start")
    await asyncio.sleep(run.sleep)
    note(run, ctx, "done")


class Poison(BaseModel):
    log: str
    kind: str  # nul | nan | surrogate | huge | nul-error | exit | hang


@app.task("poison", timeout="2s")
async def poison(run: Poison, ctx: TaskContext) -> Any:
    """Results and behaviours that must end as this task's dead letter, nothing worse."""
    note(Run(log=run.log), ctx, "start", kind=run.kind, run_id=uuid.uuid4().hex)
    if run.kind == "exit":
        os._exit(3)  # the worker process dies mid-task, as on an OOM kill
    if run.kind == "hang":
        await asyncio.Event().wait()  # until the timeout
    if run.kind == "nul-error":
        raise RuntimeError("bad\x00byte")
    if run.kind == "huge":
        return "x" * (16 * 1024 * 1024 + 1)
    return {"nul": "a\x00b", "nan": float("nan"), "surrogate": "\ud800"}[run.kind]


@app.task("unjsonable")
async def unjsonable(run: Run) -> Any:
    return {"when": object()}


@app.task("hog", lease_expiries=1)
async def hog(run: Run, ctx: TaskContext) -> None:
    """Allocates (and touches) memory until the container's limit kills the process."""
    note(run, ctx, "start")
    hoard = []
    while True:
        hoard.append(b"x" * (16 << 20))
        await asyncio.sleep(0.01)


class Allocation(Run):
    mib: int  # MiB to allocate, every page written


@app.task("allocate")
async def allocate(run: Allocation, ctx: TaskContext) -> dict[str, int]:
    """Holds `mib` MiB of written memory for `sleep` seconds: past the container's memory
    limit the kernel kills the worker (OOMKilled) before the `done` note."""
    note(run, ctx, "start")
    hoard = b"x" * (run.mib << 20)
    await asyncio.sleep(run.sleep)
    note(run, ctx, "done")
    return {"mib": len(hoard) >> 20}


class AddInput(BaseModel):
    a: int
    b: int


class AddOutput(BaseModel):
    sum: int


@app.task("add")
async def add(payload: AddInput) -> AddOutput:
    return AddOutput(sum=payload.a + payload.b)


class StrictAddInput(AddInput):
    """`AddInput` whose author refuses keys it does not know (the handler's choice)."""

    model_config = ConfigDict(extra="forbid")


@app.task("add-strict")
async def add_strict(payload: StrictAddInput) -> AddOutput:
    return AddOutput(sum=payload.a + payload.b)


@app.task("echo")
async def echo(payload: Any) -> Any:
    return payload


@app.task("chatty")
def chatty(payload: Any, ctx: TaskContext) -> None:
    """Logs a line, then a multi-line message with a traceback, from a handler thread."""
    log = logging.getLogger("tests.chatty")
    log.info("working on %s", payload)
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        log.exception("it went wrong\nacross two lines")


def runs(log: str | Path) -> list[dict[str, Any]]:
    """Every event in a log file, in order written."""
    path = Path(log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
