"""Periodic tasks: cron schedules declared with the app, enqueued by its workers.

    @app.task("report", cron="0 * * * *", timezone="Europe/Riga")
    async def report(_: None) -> None: ...

    app.periodic("cleanup", cron="*/5 * * * *", payload={"older_than": "7d"})

A cron expression has five fields (minute precision) or six, seconds first;
cron syntax and its DST behaviour are cronsim's (Debian cron's).

Missed ticks: each tick is enqueued once, while some worker of the app runs.
Ticks that passed while none ran (an outage, a long deploy) are not replayed
one by one: when a worker is back, the latest missed tick is enqueued once and
the older ones are dropped. A schedule seen for the first time starts then: no
run for the ticks before it was deployed.

The tick decision (`due_tick`) is a pure function of the schedule, its last
tick and the time; `PeriodicScheduler` is the service that applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from shoal.backend import Backend, Schedule, ScheduleStatus
from shoal.worker.supervisor import repeat

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0  # seconds: a jump of the wall clock is noticed within this


def zone(schedule: Schedule | ScheduleStatus) -> ZoneInfo:
    return ZoneInfo(schedule.timezone)


def check_schedule(schedule: Schedule) -> Schedule:
    """The schedule, unchanged; ValueError saying what is wrong with its cron or time zone."""
    try:
        tz = zone(schedule)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"schedule {schedule.name!r}: unknown time zone "
                         f"{schedule.timezone!r} (use an IANA name such as Europe/Riga)") from None
    try:
        CronSim(schedule.cron, datetime.now(tz))
    except CronSimError as exc:
        raise ValueError(f"schedule {schedule.name!r}: invalid cron expression "
                         f"{schedule.cron!r}: {exc}") from None
    return schedule


def latest_tick(schedule: Schedule, now: datetime) -> datetime:
    """The schedule's latest tick at or before `now` (aware, in UTC)."""
    start = now.astimezone(zone(schedule)).replace(microsecond=0) + timedelta(seconds=1)
    return next(CronSim(schedule.cron, start, reverse=True)).astimezone(UTC)


def next_tick(schedule: Schedule | ScheduleStatus, after: datetime) -> datetime:
    """The schedule's first tick after `after` (aware, in UTC); a stored schedule too."""
    return next(CronSim(schedule.cron, after.astimezone(zone(schedule)))).astimezone(UTC)


def due_tick(schedule: Schedule, last_tick: datetime, now: datetime) -> datetime | None:
    """The tick to enqueue at `now`, given the last one enqueued: the latest tick
    after `last_tick` and at or before `now`, or None. Older missed ticks are
    never returned: after an outage one run, not a burst."""
    tick = latest_tick(schedule, now)
    return tick if tick > last_tick else None


def wall_clock() -> datetime:
    return datetime.now(UTC)


class PeriodicScheduler:
    """Enqueues an app's periodic schedules in one task namespace.

    Guarantees: each tick is enqueued once however many workers run this
    service (`Backend.fire_periodic` moves the schedule's row to the tick in
    the enqueue's transaction, under a task key unique to the tick); ticks
    missed while no worker ran are not replayed, only the latest (`due_tick`);
    database errors are retried with backoff. Returns at once without schedules.
    """

    name = "periodic"

    def __init__(self, backend: Backend, namespace: str, schedules: Mapping[str, Schedule],
                 clock: Callable[[], datetime] = wall_clock) -> None:
        self.backend = backend
        self.namespace = namespace
        self.schedules = list(schedules.values())
        self.clock = clock
        self.last: dict[str, datetime] | None = None  # schedule -> last tick enqueued

    async def run(self) -> None:
        if self.schedules:
            await repeat("periodic", self.run_once)

    async def run_once(self) -> float:
        """Declare the schedules (first call), enqueue the ticks due now; return
        the seconds until the next tick (at most MAX_SLEEP)."""
        now = self.clock()
        if self.last is None:
            self.last = await self.backend.declare_periodic(self.namespace, self.schedules, now)
        for schedule in self.schedules:
            tick = due_tick(schedule, self.last[schedule.name], now)
            if tick is None:
                continue
            task_id = await self.backend.fire_periodic(self.namespace, schedule.name, tick)
            self.last[schedule.name] = tick
            if task_id is not None:
                log.info("periodic %s: enqueued task %s #%d for %s", schedule.name,
                         schedule.task, task_id, tick.isoformat())
        nearest = min(next_tick(s, now) for s in self.schedules)
        return min(MAX_SLEEP, max(0.0, (nearest - now).total_seconds()))
