"""A pool's flow of work, for a latency target, from what Postgres measured by task name.

`measure` turns a backlog and the recent flow by task name (`Backend.flows`:
the pool's last FLOW_SAMPLE finished plain tasks within FLOW_WINDOW_SECONDS,
and the tasks that became ready in the span they cover) into the `Flow` that
`scaler.decide` reads. A task name without finished tasks in the window takes
the pool's mean service time; without any, the service time is unknown (None)
and the scaler counts tasks instead. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.backend import Backlog, TaskFlow
from shoal_operator.pools.scaler import Flow

FLOW_WINDOW_SECONDS = 60.0  # the service times and arrivals are this recent
FLOW_SAMPLE = 1000  # at most this many finished tasks per pool (the newest)
FLOW_INTERVAL_SECONDS = 5.0  # a database's flows are read at most this often


def measure(backlog: Backlog, flows: Sequence[TaskFlow]) -> Flow:
    """The pool's Flow: the ready tasks and the oldest and newest one's age from
    `backlog`; the mean service time of the ready tasks by their names (of the recent
    ones when none is ready); arrivals per second and the slot-seconds of work they
    bring per second; the tasks running longer than the target."""
    finished = sum(f.finished for f in flows)
    if not finished:
        arrivals = sum(f.arrivals for f in flows)
        span = max((f.span_seconds for f in flows), default=FLOW_WINDOW_SECONDS)
        return Flow(backlog.oldest_ready_seconds, None, arrivals / span, 0.0, backlog.ready,
                    backlog.newest_ready_seconds, sum(f.long_running for f in flows))
    pool_mean = sum(f.busy_seconds for f in flows) / finished

    def service(f: TaskFlow) -> float:
        return f.busy_seconds / f.finished if f.finished else pool_mean

    ready = sum(f.ready for f in flows)
    mix = (sum(f.ready * service(f) for f in flows) / ready) if ready else pool_mean
    span = max(f.span_seconds for f in flows)
    return Flow(oldest_ready_seconds=backlog.oldest_ready_seconds, service_seconds=mix,
                arrival_rate=sum(f.arrivals for f in flows) / span,
                arrival_work=sum(f.arrivals * service(f) for f in flows) / span,
                ready=backlog.ready, newest_ready_seconds=backlog.newest_ready_seconds,
                long_running=sum(f.long_running for f in flows))
