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
    Observation,
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
