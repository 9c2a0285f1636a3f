"""A pool's Flow from Postgres's figures by task name (`flow.measure`)."""

from __future__ import annotations

import pytest

from shoal.backend import Backlog, TaskFlow
from shoal_operator.pools.flow import measure

BACKLOG = Backlog(ready=12, running=2, waiting=0, dead=0, oldest_ready_seconds=7.0,
                  newest_ready_seconds=0.5)


def named(name: str, finished: int, busy: float, arrivals: int, ready: int,
          span: float = 60.0, long_running: int = 0) -> TaskFlow:
    return TaskFlow(name, finished, busy, arrivals, ready, long_running, span)


def test_service_time_follows_the_ready_mix_and_work_follows_the_arrivals() -> None:
    flows = [named("fast", 100, 50.0, 120, 2),  # 0.5 s each
             named("slow", 10, 100.0, 6, 10, long_running=1)]  # 10 s each
    flow = measure(BACKLOG, flows)
    assert flow.service_seconds == pytest.approx((2 * 0.5 + 10 * 10) / 12)
    assert flow.arrival_rate == pytest.approx(126 / 60)
    assert flow.arrival_work == pytest.approx((120 * 0.5 + 6 * 10) / 60)
    assert (flow.oldest_ready_seconds, flow.newest_ready_seconds, flow.ready) == (7.0, 0.5, 12)
    assert flow.long_running == 1


def test_a_name_without_history_takes_the_pools_mean() -> None:
    flows = [named("known", 10, 20.0, 10, 0), named("new", 0, 0.0, 4, 4)]
    flow = measure(BACKLOG, flows)
    assert flow.service_seconds == pytest.approx(2.0)
    assert flow.arrival_work == pytest.approx((10 * 2 + 4 * 2) / 60)


def test_nothing_ready_uses_the_recent_mean_and_a_short_span_scales_the_rates() -> None:
    flow = measure(BACKLOG, [named("a", 1000, 250.0, 1000, 0, span=5.0)])
    assert flow.service_seconds == pytest.approx(0.25)
    assert flow.arrival_rate == pytest.approx(200.0)


def test_without_finished_tasks_the_service_time_is_unknown() -> None:
    flow = measure(BACKLOG, [named("new", 0, 0.0, 6, 6)])
    assert flow.service_seconds is None
    assert flow.arrival_rate == pytest.approx(0.1)
    assert measure(BACKLOG, []).service_seconds is None
