"""The scaling decision: HPA rule, activation, clamps, stabilization, rate limits, failures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from shoal.backend import WorkerRow
from shoal_operator.backends import Backends
from shoal_operator.conditions import Condition
from shoal_operator.health import Health
from shoal_operator.kube import Kube
from shoal_operator.pools import autoscaler
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.pools.scaler import (
    Flow,
    Observation,
    ScaleEvent,
    ScalerState,
    decide,
    deletion_costs,
)
from shoal_operator.pools.spec import Fallback, ScaleDown, ScaleUp, Scaling
from shoal_operator.pools.status import StatusWriter

FAST_UP = ScaleUp(pods=100, percent=100, period="15s")
FAST_DOWN = ScaleDown(pods=100, percent=100, period="15s")


def scaling(**overrides: object) -> Scaling:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 10,
                               "scale_down_stabilization": "60s",
                               "scale_up": FAST_UP, "scale_down": FAST_DOWN}
    return Scaling(**(base | overrides))


def test_burst_scales_to_ceil_of_load_over_target() -> None:
    d = decide(scaling(), 10, Observation(0, 1, 41), ScalerState.starting(0, 1))
    assert (d.desired, d.reason) == (5, "ScaledUp")
    assert d.active and not d.limited


def test_within_tolerance_holds() -> None:
    # 2 replicas x 10 = 20 target; 21 is 5% above: inside the 10% band.
    d = decide(scaling(), 10, Observation(0, 2, 21), ScalerState.starting(0, 2))
    assert (d.desired, d.reason) == (2, "WithinTolerance")
    d = decide(scaling(), 10, Observation(0, 2, 23), ScalerState.starting(0, 2))
    assert (d.desired, d.reason) == (3, "ScaledUp")


def test_clamped_to_max_reports_limited() -> None:
    d = decide(scaling(max_replicas=3), 10, Observation(0, 1, 500), ScalerState())
    assert d.desired == 3
    assert (d.limited, d.limit_reason) == (True, "TooManyReplicas")


def test_min_replicas_floor() -> None:
    d = decide(scaling(min_replicas=2, scale_down_stabilization="0s"), 10,
               Observation(100, 5, 0), ScalerState())
    assert d.desired == 2
    assert d.limit_reason == "TooFewReplicas"


def test_activation_threshold_from_zero() -> None:
    s = scaling(min_replicas=0, activation_threshold=5)
    assert decide(s, 10, Observation(0, 0, 5), ScalerState()).desired == 0
    assert decide(s, 10, Observation(0, 0, 5), ScalerState()).reason == "BelowActivation"
    assert decide(s, 10, Observation(0, 0, 6), ScalerState()).desired == 1
    # Once active, a small load keeps one replica (activation only gates 0 -> 1).
    assert decide(s, 10, Observation(0, 1, 3), ScalerState()).desired == 1


def test_scale_down_waits_out_the_stabilization_window() -> None:
    s = scaling(scale_down_stabilization="30s")
    state = ScalerState.starting(0, 5)
    d = decide(s, 10, Observation(0, 5, 50), state)
    assert d.desired == 5
    d = decide(s, 10, Observation(10, 5, 0), d.state)
    assert (d.desired, d.reason) == (5, "Stabilizing")
    d = decide(s, 10, Observation(29, 5, 0), d.state)
    assert d.desired == 5
    d = decide(s, 10, Observation(31, 5, 0), d.state)
    assert (d.desired, d.reason) == (1, "ScaledDown")


def test_stabilization_takes_highest_recent_recommendation() -> None:
    s = scaling(scale_down_stabilization="30s")
    d = decide(s, 10, Observation(0, 6, 60), ScalerState.starting(0, 6))
    d = decide(s, 10, Observation(20, 6, 30), d.state)  # wants 3, window still has 6
    assert d.desired == 6
    d = decide(s, 10, Observation(35, 6, 0), d.state)  # 6 left the window; 3 (t=20) remains
    assert d.desired == 3


def test_restart_does_not_skip_the_window() -> None:
    s = scaling(scale_down_stabilization="30s")
    d = decide(s, 10, Observation(1000, 4, 0), ScalerState.starting(1000, 4))
    assert d.desired == 4


def test_scale_up_rate_limit_per_period() -> None:
    s = scaling(max_replicas=100, scale_up=ScaleUp(pods=2, percent=50, period="10s"))
    d = decide(s, 1, Observation(0, 2, 100), ScalerState())
    assert (d.desired, d.limit_reason) == (4, "ScaleUpLimit")  # max(2 pods, 50% of 2) = +2
    d = decide(s, 1, Observation(5, 4, 100), d.state)
    assert d.desired == 4  # the period's budget (+2 from 2) is used up
    d = decide(s, 1, Observation(11, 4, 100), d.state)
    assert d.desired == 6  # a new period: +max(2, 50% of 4)


def test_scale_down_rate_limit_per_period() -> None:
    s = scaling(min_replicas=0, scale_down_stabilization="0s",
                scale_down=ScaleDown(pods=1, percent=0, period="10s"))
    d = decide(s, 10, Observation(0, 5, 0), ScalerState())
    assert (d.desired, d.limit_reason) == (4, "ScaleDownLimit")
    d = decide(s, 10, Observation(5, 4, 0), d.state)
    assert d.desired == 4
    d = decide(s, 10, Observation(10.5, 4, 0), d.state)
    assert d.desired == 3


def test_failed_read_holds_then_falls_back() -> None:
    s = scaling(fallback=Fallback(replicas=2, after_failures=3))
    state = ScalerState()
    for _ in range(2):
        d = decide(s, 10, Observation(0, 7, None), state)
        assert (d.desired, d.reason, d.active) == (7, "BackendUnavailable", False)
        state = d.state
    d = decide(s, 10, Observation(0, 7, None), state)
    assert (d.desired, d.reason) == (2, "Fallback")
    # A good read resets the failure count.
    d = decide(s, 10, Observation(1, 2, 20), d.state)
    assert d.state.failures == 0


def test_failed_read_without_fallback_never_changes_replicas() -> None:
    state = ScalerState()
    for _ in range(10):
        d = decide(scaling(), 10, Observation(0, 3, None), state)
        assert d.desired == 3
        state = d.state


def test_paused_holds() -> None:
    d = decide(scaling(), 10, Observation(0, 3, 1000, paused=True), ScalerState())
    assert (d.desired, d.reason, d.active) == (3, "Paused", False)


def test_due_tasks_count_as_load_and_are_named() -> None:
    s = scaling(pod_startup_time="25s")
    d = decide(s, 10, Observation(0, 1, 38, due=3), ScalerState.starting(0, 1))
    assert (d.desired, d.reason) == (5, "ScaledUp")  # ceil(41 / 10)
    assert "load 41 (3 due within 25s of it)" in d.message
    # From zero, a periodic tick due within the start-up time starts a pod now.
    d = decide(scaling(min_replicas=0), 10, Observation(0, 0, 0, due=1), ScalerState())
    assert d.desired == 1


LATENCY = {"target_queue_age": "30s", "pod_startup_time": "0s", "min_replicas": 0,
           "max_replicas": 100}


def flow(ready: int, oldest: float = 0.0, service: float | None = 1.0, rate: float = 0.0,
         newest: float | None = None, long_running: int = 0) -> Flow:
    """A burst unless told otherwise: every ready task as old as the oldest."""
    return Flow(oldest_ready_seconds=oldest, service_seconds=service, arrival_rate=rate,
                arrival_work=rate * (service or 0), ready=ready,
                newest_ready_seconds=oldest if newest is None else newest,
                long_running=long_running)


def latency(current: int, running: int, f: Flow, due: int = 0, now: float = 0,
            state: ScalerState | None = None, **overrides: object) -> int:
    obs = Observation(now, current, running + f.ready, due=due, flow=f)
    return decide(scaling(**(LATENCY | overrides)), 4, obs, state or ScalerState()).desired


def test_latency_without_service_history_scales_by_count_and_says_so() -> None:
    s = scaling(**LATENCY)
    for f in (flow(36, oldest=5, service=None), None):
        d = decide(s, 4, Observation(0, 1, 40, flow=f), ScalerState.starting(0, 1))
        assert (d.desired, d.reason) == (10, "ScaledUp")  # ceil(40 / 4)
        assert "no service history yet for the 30s target: by count" in d.message
    d = decide(s, 4, Observation(0, 10, 40, flow=flow(36, service=None)), ScalerState())
    assert d.reason == "WithinTolerance"


def test_latency_drains_a_burst_before_the_target() -> None:
    # 150 fresh tasks of 2 s, nothing running: within 30 s a slot starts (2 + 30)/2 = 16
    # of them: 9.4 slots, 3 replicas. Without the backlog: 1.
    assert latency(1, 0, flow(150, service=2.0)) == 3
    # The same burst 22 s old has 8 s left: 150 x 2 / (2 + 8) = 30 slots.
    assert latency(1, 0, flow(150, oldest=22, service=2.0)) == 8
    # Without the newest task's age, the newest is taken as fresh: with no arrivals to
    # explain the backlog, it is still a burst.
    assert latency(1, 0, Flow(22, 2.0, 0.0, 0.0, 150)) == 8
    # Unless a stream brought it (150 tasks in 22 s at the arrival rate): its newest task
    # has the whole 30 s, and the oldest start first.
    assert latency(1, 0, flow(150, oldest=22, newest=0, service=2.0, rate=150 / 22)) == 3


def test_latency_counts_the_slots_the_stream_holds() -> None:
    # A stream at full use: 40 slots busy with 20 s tasks (Little's law: 2 tasks/s x 20 s),
    # 60 queued over the last 12 s. A busy slot frees in about 20 s, then starts
    # (20 + 30 - 20)/20 = 1.5 of them within 30 s: all 40 slots are needed. Were the
    # running tasks not holding slots, 24 would do (6 replicas); without the backlog, 1.
    f = flow(60, oldest=12, newest=0, service=20.0, rate=5.0)
    assert latency(10, 40, f, scale_down_stabilization="0s") == 10


def test_latency_pays_for_the_start_up_of_pods_it_adds() -> None:
    # A fresh burst with 4 slots there (they start 4 x 16 = 64 tasks within 30 s): added
    # slots serve only after the start-up, so each starts (2 + 30 - 12)/2 = 10 of the
    # other 86, not 16: 4 + 8.6 slots, 4 replicas (3 without the start-up).
    assert latency(1, 0, flow(150, service=2.0), pod_startup_time="12s") == 4
    # The start-up time measured by the operator overrides the spec's.
    obs = Observation(0, 1, 150, flow=flow(150, service=2.0), startup_seconds=12.0)
    assert decide(scaling(**LATENCY), 4, obs, ScalerState()).desired == 4


def test_latency_keeps_a_margin_for_the_stream_while_pods_start() -> None:
    # 200 tasks of 2 s queued by a stream of 10/s: while a pod starts (12 s), 99 % of such
    # streams bring at most 2.33 x sqrt(2 x 12 / 10) = 3.6 s more wait than on average, so
    # the newest gets 26.4 s, not 30: 4 + 17.5 slots, 6 replicas (5 without the margin).
    f = flow(200, oldest=20, newest=0, service=2.0, rate=10.0)
    assert latency(1, 0, f, pod_startup_time="12s") == 6


def test_latency_waits_for_the_pods_it_started() -> None:
    # 4 s after scaling 1 -> 3 for a 20 s old burst, the two new pods serve in 8 s: within
    # the 10 s left each of their slots starts (2 + 10 - 8)/2 = 2 tasks, not 6. More are
    # needed than if they were serving already.
    f = flow(100, oldest=20, service=2.0)
    started = ScalerState(events=(ScaleEvent(0, 1, 3),))
    waiting = latency(3, 0, f, now=4, state=started, pod_startup_time="12s")
    serving = latency(3, 0, f, now=4, state=ScalerState(), pod_startup_time="12s")
    assert (serving, waiting) == (5, 7)


def test_latency_counts_due_tasks_without_the_start_up_penalty() -> None:
    # At zero, 200 ticks of 3 s due within the start-up time: their pods start now and are
    # Ready when they are due: 200 x 3 / (3 + 30) = 18.2 slots, 5 replicas.
    s = scaling(**(LATENCY | {"pod_startup_time": "12s"}))
    d = decide(s, 4, Observation(0, 0, 0, due=200, flow=flow(0, service=3.0)), ScalerState())
    assert (d.desired, d.reason) == (5, "ScaledUp")
    assert "0 ready, 200 due within 12s x 3s, 0 running;" in d.message
    assert "-> 18.2 slots for the due (4 per replica)" in d.message


def test_latency_keeps_slots_of_tasks_running_longer_than_the_target() -> None:
    # 13 running, nothing queued: those running for over 30 s keep their slots.
    assert latency(4, 13, flow(0, long_running=13), scale_down_stabilization="0s") == 4
    assert latency(4, 13, flow(0), scale_down_stabilization="0s") == 1
    # Nor do their slots take the queue: 20 quick tasks 20 s old need slots beside the 4
    # long ones; 4 slots of quick ones would start them all within the 10 s left.
    assert latency(1, 4, flow(20, oldest=20, service=0.5, long_running=4)) == 2
    assert latency(1, 4, flow(20, oldest=20, service=0.5)) == 1


def test_latency_tolerance_clamp_and_message() -> None:
    s = scaling(**LATENCY)
    f = flow(150, oldest=12.4, newest=2, service=2.0, rate=2.5)
    d = decide(s, 4, Observation(0, 1, 152, flow=f), ScalerState.starting(0, 1))
    assert d.message == ("1 -> 4 replicas: oldest ready 12s of 30s target; 150 ready x 2s, "
                         "2 running; 2.5 tasks/s (5 slot-s/s) -> 12.9 slots for the oldest "
                         "(4 per replica)")
    # 12.9 slots on 3 replicas of 4: within the 10 % band.
    d = decide(s, 4, Observation(0, 3, 152, flow=f), ScalerState.starting(0, 3))
    assert (d.desired, d.reason) == (3, "WithinTolerance")
    capped = decide(scaling(**(LATENCY | {"max_replicas": 2})), 4,
                    Observation(0, 1, 152, flow=f), ScalerState())
    assert (capped.desired, capped.limit_reason) == (2, "TooManyReplicas")
    # 2 ready tasks of 1 s on 1 replica: well within its 4 slots, nothing to change.
    d = decide(s, 4, Observation(0, 1, 3, flow=flow(2)), ScalerState.starting(0, 1))
    assert (d.desired, d.reason) == (1, "LatencyTarget")


def _row(pod: str, in_flight: int) -> WorkerRow:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return WorkerRow(id=pod, pool="p", pod_name=pod, namespace="default", tags=[],
                     task_names=[], concurrency=4, in_flight=in_flight, draining=False,
                     started_at=t, last_seen=t)


def test_deletion_costs_idle_first_busiest_last() -> None:
    costs = deletion_costs(["a", "b", "c", "new"], [_row("a", 3), _row("b", 0), _row("c", 1)])
    assert costs == {"a": 3, "b": 0, "c": 1, "new": 0}
    assert sorted(costs, key=costs.__getitem__)[-1] == "a"


async def test_a_recovery_right_after_a_failure_is_written() -> None:
    """ok, failure, the same ok within a second: the last write must not be skipped as a
    repeat of the first, or the failure's conditions would stay up."""
    written: list[tuple[str, ...]] = []

    class Recorder(StatusWriter):
        def __init__(self) -> None:  # writes nowhere: records the reasons
            pass

        async def patch(self, pool: Mapping[str, Any], fields: Mapping[str, Any] | None = None,
                        conditions: Iterable[Condition] = ()) -> bool:
            written.append(tuple(c["reason"] for c in conditions))
            return True

    scaler = autoscaler.PoolScaler(
        kopf.Body({"metadata": {"namespace": "ns", "name": "p"}, "spec": {}}),
        autoscaler.Autoscaler(cast(Kube, None), cast(Backends, None), PoolRegistry(),
                              Recorder(), Health(), recheck_seconds=10))
    ok = [scaler._condition("ScalingActive", True, "WithinTolerance", "ok")]
    await scaler._write_status({"replicas": 1}, ok)
    await scaler.evaluate()  # spec {} is invalid: ScalingActive=False, InvalidSpec
    await scaler._write_status({"replicas": 1}, ok)
    assert written == [("WithinTolerance",), ("InvalidSpec",), ("WithinTolerance",)]
