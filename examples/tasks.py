"""A demo app for Shoal: `shoal worker --app examples/tasks.py:app`.

Tasks: `noop`, `echo` (returns its input), `sleep` ({"seconds": n}; stops early
when cancelled), `fail` (always raises), `add` ({"a": 1, "b": 2}, typed) and
`word-count` (sync, runs in a thread).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from shoal import App, TaskContext

app = App("demo")


@app.task("noop")
async def noop(payload: Any) -> None:
    return None


@app.task("echo")
async def echo(payload: Any) -> Any:
    return payload


class SleepInput(BaseModel):
    seconds: float = 1.0


@app.task("sleep", timeout="1h")
async def sleep(payload: SleepInput, ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(payload.seconds)
    return {"slept": payload.seconds, "attempt": ctx.attempt}


@app.task("fail", retries=2, backoff="100ms")
async def fail(payload: Any) -> None:
    raise RuntimeError(f"failing on purpose: {payload!r}")


class AddInput(BaseModel):
    a: int
    b: int


class AddOutput(BaseModel):
    sum: int


@app.task("add")
async def add(payload: AddInput) -> AddOutput:
    return AddOutput(sum=payload.a + payload.b)


@app.task("word-count")
def word_count(payload: dict[str, str]) -> dict[str, int]:
    return {"words": len(payload.get("text", "").split())}
