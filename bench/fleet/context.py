"""What every measurement of one run shares: the server, its statistics, the settings."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.fleet.packer import WorkerOptions
from bench.fleet.server import StatementStats, server_cpu
from bench.harness import cpu_seconds


@dataclass
class Context:
    admin_dsn: str
    postmaster: int
    stats: StatementStats | None
    workdir: Path
    options: WorkerOptions
    procs: int
    idle_baseline: float = 0.0  # server CPU s/s with no worker connected

    def server_cpu(self) -> tuple[float, float]:
        """User and system CPU seconds of the server so far."""
        return server_cpu(self.postmaster)


def load() -> str:
    """The load averages (1, 5, 15 min), as printed beside each measurement."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Window:
    """Server and packer CPU, wall time and (if loaded) statements over one window."""

    def __init__(self, ctx: Context, packers: Sequence[int] = ()) -> None:
        self.ctx = ctx
        self.packers = list(packers)

    async def __aenter__(self) -> Window:
        if self.ctx.stats is not None:
            await self.ctx.stats.reset()
        self.began = time.monotonic()
        self._user, self._system = self.ctx.server_cpu()
        self._packers = [cpu_seconds([p]) for p in self.packers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.began
        user, system = self.ctx.server_cpu()
        self.server_user, self.server_system = user - self._user, system - self._system
        self.server = self.server_user + self.server_system
        self.per_packer = [cpu_seconds([p]) - before
                           for p, before in zip(self.packers, self._packers, strict=True)]
        self.client = sum(self.per_packer)


async def measure_baseline(ctx: Context, seconds: float) -> float:
    """Server CPU per second with nothing connected but the harness's idle session."""
    async with Window(ctx) as w:
        await asyncio.sleep(seconds)
    return w.server / w.seconds


def percentile(values: Sequence[float], q: float) -> float:
    """Inclusive-method percentile, q in 0..100 (one value: itself)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]
