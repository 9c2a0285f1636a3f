"""The periodic tick decision, a pure function of the schedule, its last tick and the
time: one tick at a time, the latest only after a jump, nothing for a clock going
back, DST in the schedule's zone; and the declarations an App refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from shoal import App, UnknownTask
from shoal.backend import Schedule
from shoal.worker.periodic import due_tick, latest_tick, next_tick


class Input(BaseModel):
    a: int


HOURLY = Schedule(name="report", task="report", cron="0 * * * *")
T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


def at(hours: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, seconds=seconds)


def test_each_tick_is_due_once() -> None:
    last = at(0)  # the 10:00 tick was enqueued
    assert due_tick(HOURLY, last, at(0, 1)) is None
    assert due_tick(HOURLY, last, at(0.999)) is None
    assert due_tick(HOURLY, last, at(1)) == at(1)  # exactly on the tick
    assert due_tick(HOURLY, last, at(1, 0.25)) == at(1)
    assert due_tick(HOURLY, at(1), at(1, 30)) is None


def test_a_jump_runs_the_latest_missed_tick_only() -> None:
    """An outage from 10:00 to 15:42: one run (15:00), not five."""
    assert due_tick(HOURLY, at(0), at(5.7)) == at(5)
    assert due_tick(HOURLY, at(5), at(5.7)) is None
    assert due_tick(HOURLY, at(5), at(6)) == at(6)


def test_a_clock_going_back_enqueues_nothing() -> None:
    assert due_tick(HOURLY, at(3), at(1.5)) is None
    assert due_tick(HOURLY, at(3), at(2.999)) is None


def test_seconds_and_sub_second_clocks() -> None:
    every_2s = Schedule(name="s", task="s", cron="*/2 * * * * *")
    assert latest_tick(every_2s, at(0, 3.9)) == at(0, 2)
    assert next_tick(every_2s, at(0, 3.9)) == at(0, 4)
    assert next_tick(every_2s, at(0, 4)) == at(0, 6)  # strictly after
    assert due_tick(every_2s, at(0, 2), at(0, 3.99)) is None
    assert due_tick(every_2s, at(0, 2), at(0, 4.0)) == at(0, 4)


def test_time_zones_and_dst() -> None:
    """09:00 in Riga is 06:00 UTC in summer, 07:00 UTC in winter. 03:30 does not exist on
    the spring-forward day (it runs at 04:00, as Debian cron does) and comes twice on
    the fall-back day (it runs once)."""
    daily = Schedule(name="d", task="d", cron="0 9 * * *", timezone="Europe/Riga")
    assert latest_tick(daily, datetime(2025, 7, 1, 12, tzinfo=UTC)) == \
        datetime(2025, 7, 1, 6, tzinfo=UTC)
    assert latest_tick(daily, datetime(2025, 1, 1, 12, tzinfo=UTC)) == \
        datetime(2025, 1, 1, 7, tzinfo=UTC)
    at_330 = Schedule(name="n", task="n", cron="30 3 * * *", timezone="Europe/Riga")

    def ticks(after: datetime, count: int) -> list[str]:
        found = []
        for _ in range(count):
            after = next_tick(at_330, after)
            found.append(after.strftime("%m-%d %H:%M"))
        return found

    assert ticks(datetime(2025, 3, 29, 12, tzinfo=UTC), 3) == [
        "03-30 01:00", "03-31 00:30", "04-01 00:30"]
    assert ticks(datetime(2025, 10, 25, 12, tzinfo=UTC), 3) == [
        "10-26 00:30", "10-27 01:30", "10-28 01:30"]


def test_the_app_declares_schedules() -> None:
    app = App()

    @app.task("report", cron="0 * * * *", timezone="Europe/Riga", tags=["batch"], priority=3)
    async def report(payload: dict[str, int] | None) -> None: ...

    app.periodic("report", cron="*/5 * * * *", name="report-often", payload={"n": 1})
    assert app.schedules == {
        "report": Schedule(name="report", task="report", cron="0 * * * *",
                           timezone="Europe/Riga", payload=None, priority=3, tags=("batch",)),
        "report-often": Schedule(name="report-often", task="report", cron="*/5 * * * *",
                                 payload={"n": 1}, priority=3, tags=("batch",)),
    }


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"cron": "61 * * * *", "name": "x"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
    ({"cron": "* * *", "name": "x"}, "invalid cron expression"),
    ({"cron": "0 * * * *", "name": "x", "timezone": "Mars/Olympus"},
     "unknown time zone 'Mars/Olympus'"),
    ({"cron": "0 * * * *", "name": "report"}, "schedule 'report' is declared twice"),
    ({"cron": "0 * * * *", "name": "bad name"}, "invalid schedule name"),
    ({"cron": "0 * * * *", "name": "x", "payload": {"a": "not an int"}}, "is invalid"),
])
def test_bad_declarations_are_refused(kwargs: dict[str, object], error: str) -> None:
    app = App()

    @app.task("report", cron="0 0 * * *")
    async def report(payload: dict[str, int] | None) -> None: ...

    @app.task("typed")
    async def typed(payload: Input) -> None: ...

    task = "typed" if "payload" in kwargs else "report"
    with pytest.raises(ValueError, match=error):
        app.periodic(task, **kwargs)  # type: ignore[arg-type]


def test_a_schedule_needs_a_registered_task() -> None:
    with pytest.raises(UnknownTask, match="unknown task 'nope'"):
        App().periodic("nope", cron="0 * * * *")
