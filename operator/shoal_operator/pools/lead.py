"""How far ahead a pool scales: its Pods' start-up time, and the work due within it.

A delayed task or a periodic tick due within the pool's lead counts as ready
from that moment, so its Pods are Ready when the work is due, from zero too.
The lead is `scaling.podStartupTime` when set, else what `StartupClock` learned
from the pool's own scale-ups, else DEFAULT_STARTUP_SECONDS. Pure: the clock is
an argument.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shoal.backend import PoolTasks, ScheduleStatus
from shoal.worker.periodic import next_tick

DEFAULT_STARTUP_SECONDS = 30.0  # until a scale-up of the pool has been timed
SAMPLES = 5  # the lead is the slowest of the last SAMPLES timed scale-ups
PENDING_SECONDS = 600.0  # a scale-up not Ready by then is not timed (a crash loop)


class StartupClock:
    """Times the pool's scale-ups: from the decision to raise the replicas to the moment
    the Deployment reports that many Ready (scheduling, image pull, start and the
    readiness probe, as the pool's users wait for them).

    Guarantees: a scale-up is timed once, when readyReplicas first reaches its
    count; one abandoned by a scale-down (a later scale-up to fewer replicas) is
    never timed, nor one not Ready within PENDING_SECONDS; `seconds` is the
    slowest of the last SAMPLES times (a safe lead), None until one was timed.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[float, int]] = []  # (when decided, replicas to be Ready)
        self._samples: deque[float] = deque(maxlen=SAMPLES)

    def scaled_up(self, now: float, replicas: int) -> None:
        """The scaler raised the Deployment's replicas to `replicas` at `now`."""
        self._pending = [(at, n) for at, n in self._pending if n < replicas]
        self._pending.append((now, replicas))

    def ready(self, now: float, ready_replicas: int) -> None:
        """The Deployment reports `ready_replicas` Ready Pods at `now`."""
        still = []
        for at, replicas in self._pending:
            if ready_replicas >= replicas:
                self._samples.append(now - at)
            elif now - at < PENDING_SECONDS:
                still.append((at, replicas))
        self._pending = still

    @property
    def seconds(self) -> float | None:
        return max(self._samples) if self._samples else None


def lead_seconds(override: float | None, learned: float | None) -> float:
    """The pool's lead: its spec's podStartupTime, else the learned start-up, else the
    default."""
    if override is not None:
        return override
    return learned if learned is not None else DEFAULT_STARTUP_SECONDS


@dataclass(frozen=True, slots=True)
class Ticks:
    """The periodic ticks of a pool's tasks due within its lead, and the seconds until
    the next later one enters the lead (None: no schedule)."""

    due: int
    next_seconds: float | None


def due_ticks(schedules: Iterable[ScheduleStatus], pool: PoolTasks, now: datetime,
              lead: float) -> Ticks:
    """The ticks of the schedules whose task `pool` serves, due within `lead` of `now`
    (aware). A tick is enqueued by a worker of the app, so at zero replicas it comes
    only once a Pod runs: counting it ahead is what starts one."""
    horizon = now + timedelta(seconds=lead)
    due, later = 0, None
    for schedule in schedules:
        if schedule.namespace != pool.namespace or not set(schedule.tags) <= set(pool.tags) \
                or (pool.names is not None and schedule.task not in pool.names):
            continue
        tick = next_tick(schedule, now)
        if tick <= horizon:
            due += 1
            tick = next_tick(schedule, horizon)
        wait = (tick - horizon).total_seconds()
        later = wait if later is None else min(later, wait)
    return Ticks(due, later)
