"""The scaling decision: desired replicas from a backlog snapshot and recent history.

`decide` is a pure function (no I/O, no clock: `now` is an argument), so
every rule is unit-tested:

- load = ready + running tasks the pool can serve; desired = ceil(load /
  targetTasksPerReplica), kept at the current count while the load per
  replica is within `tolerance` of the target (the HPA rule);
- from zero, the pool starts only when the load exceeds the activation
  threshold;
- clamped to [minReplicas, maxReplicas];
- scale-down waits out the stabilization window: the highest recommendation
  inside the window wins, so a brief dip never removes pods;
- per-period rate limits: at most max(pods, percent of the count at the start
  of the period) added or removed per period;
- a failed backend read never scales from garbage: the count is held, and
  after N consecutive failures the fallback count (if any) is used;
- the pause annotation holds the current count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from shoal.backend import WorkerRow
from shoal_operator.pools.spec import RateLimit, Scaling


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    at: float
    before: int
    after: int


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the scaler remembers between evaluations of one pool."""

    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[ScaleEvent, ...] = ()
    failures: int = 0

    @classmethod
    def starting(cls, now: float, current: int) -> ScalerState:
        """A fresh state that counts the current replicas as a recommendation made now,
        so an operator restart never skips the scale-down stabilization window."""
        return cls(recommendations=((now, current),))


@dataclass(frozen=True, slots=True)
class Observation:
    """One snapshot: the Deployment's replicas, and the load (None: the read failed)."""

    now: float
    current: int
    load: int | None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The replicas to run and why, in words for Events and conditions."""

    desired: int
    reason: str
    message: str
    active: bool
    limited: bool = False
    limit_reason: str = "DesiredWithinRange"
    state: ScalerState = field(default_factory=ScalerState)


def _hpa(load: int, current: int, target: int, tolerance: float) -> tuple[int, bool]:
    """(replicas for `load`, whether it was held by the tolerance band)."""
    if current > 0:
        ratio = load / (current * target)
        if abs(ratio - 1.0) <= tolerance:
            return current, True
    return math.ceil(load / target), False


def _moved(events: tuple[ScaleEvent, ...], since: float, up: bool) -> int:
    return sum((e.after - e.before) if up else (e.before - e.after) for e in events
               if e.at > since and (e.after > e.before) == up)


def _step(limit: RateLimit, start: int) -> int:
    return max(limit.pods, math.ceil(start * limit.percent / 100))


def decide(scaling: Scaling, target: int, obs: Observation, state: ScalerState) -> Decision:
    """Desired replicas for one pool; see the module docstring for the rules."""
    current = obs.current
    if obs.paused:
        return Decision(current, "Paused", f"paused by annotation: holding {current} replicas",
                        active=False, state=state)
    if obs.load is None:
        failures = state.failures + 1
        state = replace(state, failures=failures)
        fb = scaling.fallback
        if fb.replicas is not None and failures >= fb.after_failures:
            held = _record(state, obs.now, current, fb.replicas)
            return Decision(fb.replicas, "Fallback" if fb.replicas != current else "Steady",
                            f"backend unreadable {failures} times in a row: "
                            f"running the fallback of {fb.replicas} replicas",
                            active=False, state=held)
        return Decision(current, "BackendUnavailable",
                        f"backend unreadable ({failures} in a row): holding {current} replicas",
                        active=False, state=state)

    load = obs.load
    state = replace(state, failures=0)
    reason, why = "Steady", f"load {load} (target {target} per replica)"
    if current == 0 and load <= scaling.activation_threshold:
        raw = 0
        reason, why = "BelowActivation", (f"load {load} is at or below the activation "
                                           f"threshold {scaling.activation_threshold}")
    else:
        raw, tolerated = _hpa(load, current, target, scaling.tolerance_percent / 100)
        if tolerated:
            reason = "WithinTolerance"
    bounded = min(max(raw, scaling.min_replicas), scaling.max_replicas)
    limited, limit_reason = False, "DesiredWithinRange"
    if raw > scaling.max_replicas:
        limited, limit_reason = True, "TooManyReplicas"
    elif raw < scaling.min_replicas:
        limited, limit_reason = True, "TooFewReplicas"

    window = scaling.scale_down_stabilization_seconds
    recs = tuple(r for r in state.recommendations if r[0] > obs.now - window)
    recs = (*recs, (obs.now, bounded))
    state = replace(state, recommendations=recs)
    desired = bounded
    if bounded < current:
        desired = min(current, max(r for _, r in recs))
        if desired > bounded:
            reason = "Stabilizing"
            why += (f"; the {window:g}s stabilization window holds {desired} "
                    f"(the load alone needs {bounded})")

    if desired > current:
        since = obs.now - scaling.scale_up.period_seconds
        start = current - _moved(state.events, since, up=True)
        ceiling = start + _step(scaling.scale_up, start)
        if desired > ceiling:
            desired, limited, limit_reason = max(ceiling, current), True, "ScaleUpLimit"
            why += f"; scale-up limited to {desired} this period"
    elif desired < current:
        since = obs.now - scaling.scale_down.period_seconds
        start = current + _moved(state.events, since, up=False)
        floor = start - _step(scaling.scale_down, start)
        if desired < floor:
            desired, limited, limit_reason = min(floor, current), True, "ScaleDownLimit"
            why += f"; scale-down limited to {desired} this period"

    if desired != current:
        reason = "ScaledUp" if desired > current else "ScaledDown"
        state = _record(state, obs.now, current, desired)
    horizon = max(scaling.scale_up.period_seconds, scaling.scale_down.period_seconds)
    state = replace(state, events=tuple(e for e in state.events if e.at > obs.now - horizon))
    message = (f"{current} -> {desired} replicas: {why}" if desired != current
               else f"holding {current} replicas: {why}")
    return Decision(desired, reason, message, active=True, limited=limited,
                    limit_reason=limit_reason, state=state)


def _record(state: ScalerState, now: float, before: int, after: int) -> ScalerState:
    if before == after:
        return state
    return replace(state, events=(*state.events, ScaleEvent(now, before, after)))


def deletion_costs(pod_names: Iterable[str], workers: Iterable[WorkerRow]) -> dict[str, int]:
    """`controller.kubernetes.io/pod-deletion-cost` per pod: its in-flight task count.

    Idle pods (and pods whose worker has no liveness row yet) cost 0 and are
    removed first; the busiest pod costs the most and is removed last.
    """
    in_flight = {w.pod_name: w.in_flight for w in workers if w.pod_name}
    return {pod: max(0, in_flight.get(pod, 0)) for pod in pod_names}
