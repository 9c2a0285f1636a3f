"""The lead a pool scales ahead by: learned Pod start-up, and the periodic ticks due within it."""

from __future__ import annotations

from datetime import UTC, datetime

from shoal.backend import PoolTasks, ScheduleStatus
from shoal_operator.pools.lead import (
    DEFAULT_STARTUP_SECONDS,
    SAMPLES,
    StartupClock,
    due_ticks,
    lead_seconds,
)

NOON = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def schedule(task: str, cron: str, namespace: str = "default",
             tags: tuple[str, ...] = ()) -> ScheduleStatus:
    return ScheduleStatus(namespace=namespace, name=f"{task}-{cron}", task=task, cron=cron,
                          timezone="UTC", payload=None, priority=0, tags=list(tags),
                          last_tick=NOON, last_task_id=None, last_state=None,
                          declared_at=NOON)


def test_a_scale_up_is_timed_when_its_pods_are_ready() -> None:
    clock = StartupClock()
    assert clock.seconds is None
    clock.scaled_up(100.0, 2)
    clock.ready(104.0, 1)  # one of the two: not yet
    assert clock.seconds is None
    clock.ready(107.5, 2)
    assert clock.seconds == 7.5
    clock.ready(200.0, 2)  # timed once
    assert clock.seconds == 7.5


def test_the_lead_is_the_slowest_recent_start_and_forgets_old_ones() -> None:
    clock = StartupClock()
    clock.scaled_up(0.0, 1)
    clock.ready(30.0, 1)
    for i in range(SAMPLES):
        clock.scaled_up(100.0 + i * 10, 2 + i)
        clock.ready(102.0 + i * 10, 2 + i)
    assert clock.seconds == 2.0  # the 30 s start is older than the last SAMPLES


def test_each_scale_up_is_timed_and_an_abandoned_one_is_not() -> None:
    clock = StartupClock()
    clock.scaled_up(0.0, 2)
    clock.scaled_up(5.0, 4)
    clock.ready(9.0, 4)
    assert clock.seconds == 9.0  # the first two Pods took 9 s, the next two 4 s
    clock = StartupClock()
    clock.scaled_up(0.0, 4)
    clock.scaled_up(5.0, 2)  # a scale-down came between: 4 will not be reached
    clock.ready(8.0, 2)
    assert clock.seconds == 3.0


def test_a_scale_up_that_never_gets_ready_is_not_timed() -> None:
    clock = StartupClock()
    clock.scaled_up(0.0, 3)
    clock.ready(10_000.0, 0)  # crash-looping: dropped after PENDING_SECONDS
    clock.ready(10_001.0, 3)
    assert clock.seconds is None


def test_the_spec_overrides_what_was_learned() -> None:
    assert lead_seconds(12.0, 40.0) == 12.0
    assert lead_seconds(None, 40.0) == 40.0
    assert lead_seconds(None, None) == DEFAULT_STARTUP_SECONDS


def test_ticks_due_within_the_lead_count_for_the_pools_that_run_their_task() -> None:
    every_minute = schedule("report", "* * * * *")
    hourly = schedule("rollup", "0 * * * *")
    gpu = schedule("train", "* * * * *", tags=("gpu",))
    other_namespace = schedule("report", "* * * * *", namespace="billing")
    schedules = [every_minute, hourly, gpu, other_namespace]
    at = NOON.replace(second=40)  # next minute tick in 20 s, next hour in 59 min 20 s

    ticks = due_ticks(schedules, PoolTasks("default"), at, lead=30)
    assert ticks.due == 1  # report; train needs a gpu pool, billing is another namespace
    assert ticks.next_seconds == 50.0  # 12:02:00 enters the lead at 12:01:30

    assert due_ticks(schedules, PoolTasks("default"), at, lead=10).due == 0
    gpu_pool = PoolTasks("default", ("gpu",))
    assert due_ticks(schedules, gpu_pool, at, lead=30).due == 2
    assert due_ticks(schedules, PoolTasks("default", names=("rollup",)), at, lead=30) \
        .next_seconds == 59 * 60 + 20 - 30
    assert due_ticks([], PoolTasks("default"), at, lead=30).next_seconds is None
