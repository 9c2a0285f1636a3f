"""The scaling decision: desired replicas from a backlog snapshot and recent history.

`decide` is a pure function (no I/O, no clock: `now` is an argument), so
every rule is unit-tested:

- load = ready + running tasks the pool can serve, plus the delayed tasks and
  periodic ticks due within the pods' start-up time (`due`: counted as ready
  now, so the pods are Ready when the work is due); desired = ceil(load /
  targetTasksPerReplica), kept at the current count while the load per
  replica is within `tolerance` of the target (the HPA rule);
- with `targetQueueAge` (T) and a measured service time s (`Flow`), the
  latency rule replaces the count: the fewest slots that start every ready
  task before its deadline. Within a budget H, a slot free in w seconds
  starts (s + H - w)/s queued tasks: an idle slot w = 0, a busy one w = s (a
  task that has run longer than T: never, it keeps its slot), a pod this
  scaler added less than a start-up time u ago what is left of u, a slot
  added now u (the fluid model of a FIFO queue). Three deadlines; the largest
  need wins:
  - the oldest: the ready tasks a stream at the arrival rate would not have
    brought between the newest's and the oldest's age (a burst, as old as
    the oldest), within H = T - the oldest's age;
  - the newest: all ready tasks, within T - the newest's age - a margin for
    what arrives while a pod starts (99 % of a Poisson stream: 2.33 x
    sqrt(2u / arrival rate), at most u), scaled by the stream's share of the
    backlog (a burst already here needs no margin);
  - the due: ready + due within T, slots added now counted as free (their
    pods start a start-up time ahead of the work);
  budgets never shrink below a quarter of T. The steady stream is served by
  the busy slots as they free (Little's law: they are the stream, measured
  rather than predicted from arrival_work, which bench/scaling_sim.py found
  noisier and dearer). desired = ceil(slots / target), `target` being the
  slots per replica (the concurrency), with the same tolerance band, and at
  least one replica while any task is ready, running or due. Without service
  history the count rule applies, and the message says so;
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

BUDGET_FLOOR = 0.25  # of the target: a budget never shrinks below this
Z99 = 2.33  # the normal quantile of 99 %


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
class Flow:
    """The pool's flow of work, measured from Postgres, for a latency target.

    - oldest_ready_seconds: age of the oldest ready task the pool serves (0: none ready);
    - service_seconds: mean seconds a task of the ready mix holds a slot (None: no history);
    - arrival_rate: tasks per second arriving (enqueued and due) over the window;
    - arrival_work: slot-seconds of work arriving per second: the sum over task names of
      rate x service time;
    - ready: the ready tasks among the load (the rest of it is running);
    - newest_ready_seconds: age of the newest ready task (0: none ready; None: not
      measured, taken as 0: the backlog's newest task is taken to be fresh);
    - long_running: running tasks that have run longer than the target so far (with a
      heavy tail, the ones likely to run longest; 0 when not measured).
    """

    oldest_ready_seconds: float
    service_seconds: float | None
    arrival_rate: float
    arrival_work: float
    ready: int
    newest_ready_seconds: float | None = None
    long_running: int = 0


@dataclass(frozen=True, slots=True)
class Observation:
    """One snapshot: the Deployment's replicas, the load (None: the read failed), the tasks
    due within the pods' start-up time, and the flow of work (for a latency target)."""

    now: float
    current: int
    load: int | None
    paused: bool = False
    due: int = 0
    flow: Flow | None = None
    # The pool's lead as the autoscaler resolved it (lead.lead_seconds: podStartupTime,
    # else learned, else a default), which `due` was counted with; None: the spec's
    # podStartupTime (callers without a StartupClock: the simulator, tests).
    startup_seconds: float | None = None


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


def _hpa(load: float, current: int, target: int, tolerance: float) -> tuple[int, bool]:
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

    load = obs.load + obs.due
    state = replace(state, failures=0)
    shown = f"{load}" + (f" ({_due(_lead(scaling, obs), obs.due, '')} of it)" if obs.due else "")
    reason, why = "Steady", f"load {shown} (target {target} per replica)"
    age = scaling.target_queue_age_seconds
    if current == 0 and load <= scaling.activation_threshold:
        raw = 0
        reason, why = "BelowActivation", (f"load {shown} is at or below the activation "
                                           f"threshold {scaling.activation_threshold}")
    elif age is not None and obs.flow is not None and obs.flow.service_seconds is not None:
        slots, why = _latency(age, scaling, target, obs, obs.flow, obs.flow.service_seconds,
                              state.events)
        raw, tolerated = _hpa(slots, current, target, scaling.tolerance_percent / 100)
        reason = "WithinTolerance" if tolerated else "LatencyTarget"
        why += f" ({target} per replica)"
    else:
        raw, tolerated = _hpa(load, current, target, scaling.tolerance_percent / 100)
        if tolerated:
            reason = "WithinTolerance"
        if age is not None:
            reason = "NoServiceHistory" if not tolerated else reason
            why = f"no service history yet for the {age:g}s target: by count, {why}"
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
    horizon = max(scaling.scale_up.period_seconds, scaling.scale_down.period_seconds,
                  _lead(scaling, obs) or 0.0)  # the latency rule's pods still starting
    state = replace(state, events=tuple(e for e in state.events if e.at > obs.now - horizon))
    message = (f"{current} -> {desired} replicas: {why}" if desired != current
               else f"holding {current} replicas: {why}")
    return Decision(desired, reason, message, active=True, limited=limited,
                    limit_reason=limit_reason, state=state)


def _lead(scaling: Scaling, obs: Observation) -> float | None:
    """The pods' start-up time: the caller's lead, else the spec's podStartupTime."""
    return obs.startup_seconds if obs.startup_seconds is not None else scaling.pod_startup_seconds


def _due(lead: float | None, due: int, sep: str = " ") -> str:
    if not due:
        return ""
    return f"{sep}{due} due" + (f" within {lead:g}s" if lead is not None else "")


def _latency(age: float, scaling: Scaling, target: int, obs: Observation, flow: Flow,
             service: float, events: tuple[ScaleEvent, ...]) -> tuple[float, str]:
    """Slots for the latency target, and the figures in words (see the module docstring)."""
    lead = _lead(scaling, obs)
    startup = lead or 0.0
    service = max(service, 0.001)
    oldest, rate, ready = flow.oldest_ready_seconds, flow.arrival_rate, flow.ready
    newest = min(flow.newest_ready_seconds or 0.0, oldest)
    running = max(0, (obs.load or 0) - ready)
    # A task that has run longer than the target is likely to run on (a heavy tail): its
    # slot takes no queued task within the budget. The others end in about s.
    stuck = min(flow.long_running, running)
    floor = BUDGET_FLOOR * age
    # The current slots, in the order a scale-down keeps them (the ReplicaSet removes
    # starting pods first, then idle ones): busy, idle, starting (pods this scaler added
    # less than a start-up time ago), each as the seconds until it takes a queued task.
    starting: list[float] = []
    for e in reversed(events):
        if e.after > e.before and e.at > obs.now - startup:
            starting += [startup - (obs.now - e.at)] * (e.after - e.before)
    starting = starting[:obs.current]
    serving = obs.current * target - len(starting) * target
    busy = min(running, serving)
    held = min(stuck, busy)
    slots_now = ([(float(held), math.inf), (float(busy - held), service),
                  (float(serving - busy), 0.0)] + [(float(target), wait) for wait in starting])

    def slots_for(queued: float, budget: float, late: bool = True) -> float:
        """The fewest slots that start `queued` tasks within `budget`: a slot free in w
        seconds starts (s + budget - w)/s of them; one added now is free after the
        start-up, unless `late` is False (its pods were ordered a start-up time ahead)."""
        slots = 0.0
        for count, wait in slots_now:
            each = max(0.0, service + budget - wait) / service
            if each * count >= queued:
                return slots + (queued / each if each else 0.0)
            slots, queued = slots + count, queued - each * count
        added = max(budget - startup, floor) if late else budget
        return slots + queued * service / (service + added)

    # The ready tasks arrived between `oldest` and `newest` seconds ago: what a stream at
    # the arrival rate brings in that time is spread over it; the rest is a burst, as old
    # as the oldest.
    stream_share = min(1.0, rate * (oldest - newest) / ready) if ready else 1.0
    burst = ready * (1 - stream_share)
    # Arrivals while a pod starts, at 99 % (Poisson, service CV 1), push the newest back.
    margin = (min(startup, Z99 * math.sqrt(2 * startup / rate)) if rate > 0 else startup)
    margin *= stream_share
    needs = (
        (slots_for(burst, max(age - oldest, floor)), "the oldest"),
        (slots_for(ready, max(age - newest - margin, floor)), "the newest"),
        (slots_for(ready + obs.due, age, late=False), "the due"),
    )
    slots, binding = max(needs)
    # A task running longer than the target keeps its slot (scaling below it would
    # interrupt it).
    slots = max(slots, float(stuck))
    if running + ready + obs.due:
        slots = max(slots, 1.0)
    long = f" ({stuck} for over {age:g}s)" if stuck else ""
    why = (f"oldest ready {oldest:.0f}s of {age:g}s target; {ready} ready"
           f"{_due(lead, obs.due, ', ')} x {service:.2g}s, {running} running{long}; "
           f"{rate:.2g} tasks/s ({flow.arrival_work:.3g} slot-s/s) -> {slots:.3g} slots "
           f"for {binding}")
    return slots, why


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
