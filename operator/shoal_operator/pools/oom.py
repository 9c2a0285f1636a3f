"""OOM kills of a pool's workers, as pure decisions (the pod watcher, oom_watch.py, acts).

- `oom_kills(pod)`: every run of a container of the pod that ended `OOMKilled`, as
  the pod's status shows it (`state.terminated` while the container is down,
  `lastState.terminated` once it restarted): one `OOMKill` per run, under one
  `key` whichever field shows it.
- `OOMKill.key` (`container@finishedAt`) names the run within its pod: two runs of
  one container never end within the same second (a restart takes longer). With
  the pod's uid it names the run for good; `handled_keys` / `handled_annotation`
  keep the keys acted on in the pod's HANDLED annotation, so that an operator that
  restarts does not act on a run twice.
- `OOMKill.run(pool)`: the run as the backend knows it, `KilledWorker`: its leases
  are those its worker took between the run's start and its kill.
- `tags_route` / `pool_route`: the `Reroute` that `spec.onOOMKilled` asks for, or
  `RouteUnavailable` saying why it cannot be honoured (the task is then retried as
  without it).
- `summary`: the message of the pool's TaskOOMKilled Event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shoal.backend import KilledLease, KilledWorker, Reroute
from shoal.errors import ShoalError
from shoal_operator.pools.spec import OnOOMKilled, TaskSelector

OOM_KILLED = "OOMKilled"
HANDLED = "shoal.dev/oom-handled"  # pod annotation: keys of the runs acted on
TIMESTAMP_RESOLUTION = timedelta(seconds=1)  # the kubelet's timestamps are whole seconds
MAX_IDS = 20  # task ids named per group in an Event


class RouteUnavailable(ShoalError):
    """`spec.onOOMKilled` cannot be honoured (in words: which pool or tags, and why)."""


@dataclass(frozen=True, slots=True)
class OOMKill:
    """One run of a pod's container that the kernel killed for exceeding its memory."""

    pod: str
    container: str
    started_at: datetime
    finished: str  # finishedAt as the kubelet wrote it (RFC 3339, whole seconds)
    next_started_at: datetime | None  # when the container's next run started, if it did
    memory_limit: str | None

    @property
    def key(self) -> str:
        return f"{self.container}@{self.finished}"

    @property
    def killed_at(self) -> datetime:
        """The latest moment the run may have taken a lease: finishedAt rounded up to the
        next whole second, and never past the next run's start (its leases are its own)."""
        latest = datetime.fromisoformat(self.finished) + TIMESTAMP_RESOLUTION
        return latest if self.next_started_at is None else min(latest, self.next_started_at)

    @property
    def cause(self) -> str:
        """What the tasks' error says: `OOMKilled on pod P (container C, memory limit L)`."""
        limit = f", memory limit {self.memory_limit}" if self.memory_limit else ""
        return f"{OOM_KILLED} on pod {self.pod} (container {self.container}{limit})"

    def run(self, pool: str) -> KilledWorker:
        return KilledWorker(pool=pool, pod_name=self.pod, started_at=self.started_at,
                            killed_at=self.killed_at, cause=self.cause)


def oom_kills(pod: Mapping[str, Any]) -> list[OOMKill]:
    """The OOMKilled runs the pod's status shows, each once, in container order.

    A termination without its start or end time (never seen from a kubelet for a
    run that ran) is passed over: its leases cannot be told from the next run's.
    """
    limits = {c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
              for c in (pod.get("spec") or {}).get("containers") or ()}
    name = str(pod["metadata"]["name"])
    found: dict[str, OOMKill] = {}
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        state = status.get("state") or {}
        current = state.get("running") or state.get("terminated") or {}
        runs = ((state.get("terminated"), None),
                ((status.get("lastState") or {}).get("terminated"), current.get("startedAt")))
        for ended, next_start in runs:
            if not ended or ended.get("reason") != OOM_KILLED:
                continue
            if not (ended.get("startedAt") and ended.get("finishedAt")):
                continue
            container = str(status.get("name"))
            limit = limits.get(container)
            kill = OOMKill(pod=name, container=container,
                           started_at=datetime.fromisoformat(ended["startedAt"]),
                           finished=str(ended["finishedAt"]),
                           next_started_at=(datetime.fromisoformat(next_start)
                                            if next_start else None),
                           memory_limit=None if limit is None else str(limit))
            found.setdefault(kill.key, kill)
    return list(found.values())


def handled_keys(annotations: Mapping[str, str] | None) -> frozenset[str]:
    """The keys of the runs acted on, as the pod's HANDLED annotation lists them."""
    value = (annotations or {}).get(HANDLED) or ""
    return frozenset(key for key in value.split(",") if key)


def handled_annotation(kills: Iterable[OOMKill], handled: Iterable[str]) -> str:
    """The HANDLED annotation's value: the handled keys of the runs the status still
    shows (a run it no longer shows cannot come back), so it never grows."""
    done = set(handled)
    return ",".join(sorted(kill.key for kill in kills if kill.key in done))


def tags_route(tags: Sequence[str], source: TaskSelector) -> Reroute:
    """The reroute of `onOOMKilled.tags`, for retries of tasks of a pool serving `source`.

    Raises RouteUnavailable when every one of `tags` is a tag of the pool's workers:
    a worker claims a task whose tags are a subset of its own, so the pool would
    claim the retry again.
    """
    return _away_from(source, Reroute(tags=tuple(tags)), f"tags {list(tags)}")


def pool_route(name: str, target: TaskSelector, source: TaskSelector,
               same_database: bool) -> Reroute:
    """The reroute of `onOOMKilled.pool` (WorkerPool `name`, serving `target`; on this
    pool's database or not) for retries of tasks of a pool serving `source`: the
    target's tags, for the task names it runs.

    Raises RouteUnavailable when the target serves another task namespace or database,
    or when its tags are all tags of this pool's workers (see `tags_route`).
    """
    what = f"WorkerPool {name}"
    if target.namespace != source.namespace:
        raise RouteUnavailable(f"{what} serves task namespace {target.namespace!r}, "
                               f"not {source.namespace!r}")
    if not same_database:
        raise RouteUnavailable(f"{what} uses another database")
    return _away_from(source, Reroute(tags=tuple(target.tags),
                                      names=tuple(target.names) or None), what)


def _away_from(source: TaskSelector, reroute: Reroute, what: str) -> Reroute:
    if set(reroute.tags) <= set(source.tags):
        raise RouteUnavailable(
            f"{what}: its tags {sorted(reroute.tags)} are all tags of this pool's workers, "
            f"so this pool would claim the retry again")
    return reroute


def route_words(on: OnOOMKilled) -> str:
    """Where `on` sends retries, in words: `WorkerPool big` or `tags [highmem]`."""
    return f"WorkerPool {on.pool}" if on.pool is not None else f"tags {list(on.tags or ())}"


def outcome(lease: KilledLease) -> str:
    """What became of a task: `dead` (its lease-expiry budget was used up), `rerouted`
    or `retried` (the label value of the operator's OOM task metric)."""
    if lease.state == "dead":
        return "dead"
    return "rerouted" if lease.rerouted else "retried"


def summary(kill: OOMKill, leases: Sequence[KilledLease], route: str | None) -> str:
    """The TaskOOMKilled Event's message: the kill and what became of each task it held
    (`route`: where rerouted retries went, in words)."""
    groups: dict[str, list[int]] = {}
    for lease in leases:
        groups.setdefault(outcome(lease), []).append(lease.task_id)
    titles = {"retried": "retried now", "rerouted": f"retried on {route}",
              "dead": "dead letters (lease-expiry budget used up)"}
    parts = [f"{titles[name]}: {_ids(groups[name])}" for name in titles if name in groups]
    reaped = [lease.task_id for lease in leases if lease.reaped]
    if reaped:
        parts.append(f"the lease reaper had ended {_ids(reaped)} first (cause added)")
    held = "; ".join(parts) if parts else "it held no task"
    return f"{kill.cause} at {kill.finished}; {held}"


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in sorted(ids)[:MAX_IDS])
    return shown + (f" and {len(ids) - MAX_IDS} more" if len(ids) > MAX_IDS else "")
