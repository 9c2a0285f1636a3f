"""OOM kills of a pool's workers as pure decisions: which runs a pod's status shows, each
run's window and key, the handled-runs annotation, onOOMKilled's reroute and the Event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.backend import KilledLease, Reroute
from shoal_operator.errors import InvalidPoolSpec
from shoal_operator.pools.oom import (
    HANDLED,
    MAX_IDS,
    RouteUnavailable,
    handled_annotation,
    handled_keys,
    oom_kills,
    outcome,
    pool_route,
    route_words,
    summary,
    tags_route,
)
from shoal_operator.pools.spec import OnOOMKilled, PoolSpec, TaskSelector


def at(seconds: int) -> str:
    return f"2026-01-02T03:04:{seconds:02d}Z"


def t(seconds: int) -> datetime:
    return datetime(2026, 1, 2, 3, 4, seconds, tzinfo=UTC)


def terminated(reason: str, started: int, finished: int) -> dict[str, Any]:
    return {"terminated": {"reason": reason, "exitCode": 137, "startedAt": at(started),
                           "finishedAt": at(finished),
                           "containerID": f"containerd://{started:02d}"}}


def pod(*statuses: dict[str, Any], limit: str | None = "64Mi") -> dict[str, Any]:
    resources = {"limits": {"memory": limit}} if limit else {}
    return {"metadata": {"name": "small-abc", "uid": "u1", "namespace": "ns"},
            "spec": {"containers": [{"name": "worker", "resources": resources}]},
            "status": {"containerStatuses": [{"name": "worker", **s} for s in statuses]}}


def test_a_restarted_container_shows_its_oom_killed_run_in_last_state() -> None:
    (kill,) = oom_kills(pod({"state": {"running": {"startedAt": at(20)}},
                             "lastState": terminated("OOMKilled", 1, 19), "restartCount": 1}))
    assert (kill.pod, kill.container, kill.memory_limit) == ("small-abc", "worker", "64Mi")
    assert kill.key == f"worker@{at(19)}"
    assert kill.cause == "OOMKilled on pod small-abc (container worker, memory limit 64Mi)"
    run = kill.run("small")
    assert (run.pool, run.pod_name, run.started_at, run.cause) == (
        "small", "small-abc", t(1), kill.cause)
    assert run.killed_at == t(20)  # finishedAt is whole seconds: up to the next second


def test_the_next_run_bounds_the_killed_one() -> None:
    """A lease taken once the next run started is the next run's, whatever the rounding."""
    (kill,) = oom_kills(pod({"state": {"running": {"startedAt": at(19)}},
                             "lastState": terminated("OOMKilled", 1, 19)}))
    assert kill.killed_at == t(19)


def test_a_container_down_shows_it_in_state_under_the_same_key() -> None:
    down = pod({"state": terminated("OOMKilled", 1, 19), "restartCount": 0})
    up = pod({"state": {"running": {"startedAt": at(25)}},
              "lastState": terminated("OOMKilled", 1, 19), "restartCount": 1})
    assert [k.key for k in oom_kills(down)] == [k.key for k in oom_kills(up)]
    assert oom_kills(down)[0].killed_at == t(20)


def test_two_oom_killed_runs_of_one_container_are_two_kills() -> None:
    kills = oom_kills(pod({"state": terminated("OOMKilled", 21, 30),
                           "lastState": terminated("OOMKilled", 1, 19)}))
    assert [(k.key, k.started_at, k.killed_at) for k in kills] == [
        (f"worker@{at(30)}", t(21), t(31)), (f"worker@{at(19)}", t(1), t(20))]


@pytest.mark.parametrize("status", [
    {"state": {"running": {"startedAt": at(1)}}},
    {"state": terminated("Error", 1, 19)},
    {"state": {"waiting": {"reason": "CrashLoopBackOff"}},
     "lastState": terminated("Completed", 1, 19)},
    {"state": {"terminated": {"reason": "OOMKilled", "finishedAt": at(19)}}},  # no start
    {},
])
def test_other_ends_are_no_oom_kill(status: dict[str, Any]) -> None:
    assert oom_kills(pod(status)) == []


def test_without_a_limit_the_cause_says_none() -> None:
    (kill,) = oom_kills(pod({"state": terminated("OOMKilled", 1, 19)}, limit=None))
    assert kill.cause == "OOMKilled on pod small-abc (container worker)"


def test_the_annotation_keeps_the_handled_runs_the_status_still_shows() -> None:
    kills = oom_kills(pod({"state": terminated("OOMKilled", 21, 30),
                           "lastState": terminated("OOMKilled", 1, 19)}))
    old = "worker@2025-01-01T00:00:00Z"  # a run the status no longer shows
    handled = handled_keys({HANDLED: f"{old},{kills[1].key}"})
    assert handled == {old, kills[1].key}
    assert handled_annotation(kills, handled | {kills[0].key}) == ",".join(
        sorted(k.key for k in kills))
    assert handled_annotation(kills, {old}) == ""
    assert handled_keys(None) == handled_keys({HANDLED: ""}) == frozenset()


SMALL = TaskSelector(namespace="jobs", tags=("std",))


def test_a_pool_route_takes_the_target_pools_tags_and_names() -> None:
    big = TaskSelector(namespace="jobs", tags=("highmem", "std"), names=("render",))
    assert pool_route("big", big, SMALL, True) == Reroute(tags=("highmem", "std"),
                                                          names=("render",))
    assert pool_route("big", TaskSelector(namespace="jobs", tags=("highmem",)), SMALL,
                      True) == Reroute(tags=("highmem",), names=None)


@pytest.mark.parametrize(("target", "same_database", "problem"), [
    (TaskSelector(namespace="other", tags=("highmem",)), True,
     "WorkerPool big serves task namespace 'other', not 'jobs'"),
    (TaskSelector(namespace="jobs", tags=("highmem",)), False,
     "WorkerPool big uses another database"),
    (TaskSelector(namespace="jobs", tags=("std",)), True,
     "WorkerPool big: its tags ['std'] are all tags of this pool's workers, so this pool "
     "would claim the retry again"),
    (TaskSelector(namespace="jobs"), True,
     "WorkerPool big: its tags [] are all tags of this pool's workers"),
])
def test_a_pool_route_that_cannot_work_says_why(target: TaskSelector, same_database: bool,
                                                problem: str) -> None:
    with pytest.raises(RouteUnavailable, match=problem.replace("[", r"\[")):
        pool_route("big", target, SMALL, same_database)


def test_a_tags_route_needs_a_tag_this_pool_lacks() -> None:
    assert tags_route(["highmem"], SMALL) == Reroute(tags=("highmem",))
    with pytest.raises(RouteUnavailable, match=r"tags \['std'\]: its tags \['std'\] are all"):
        tags_route(["std"], SMALL)


BASE = {"app": "tasks:app", "template": {"image": "shoal"},
        "database": {"secretRef": {"name": "pg"}}}


def test_on_oom_killed_takes_pool_or_tags() -> None:
    spec = PoolSpec.from_body({**BASE, "onOOMKilled": {"pool": "big"}})
    assert spec.on_oom_killed == OnOOMKilled(pool="big")
    assert route_words(OnOOMKilled(tags=("a", "b"))) == "tags ['a', 'b']"
    assert PoolSpec.from_body(BASE).on_oom_killed is None
    for bad, problem in (({}, "set exactly one of onOOMKilled.pool and onOOMKilled.tags"),
                         ({"pool": "big", "tags": ["x"]}, "set exactly one"),
                         ({"tags": []}, "spec.onOOMKilled.tags: Tuple should have at least 1"),
                         ({"pool": "Big"}, "spec.onOOMKilled.pool: String should match")):
        with pytest.raises(InvalidPoolSpec, match=problem):
            PoolSpec.from_body({**BASE, "onOOMKilled": bad})


def lease(task_id: int, state: str = "ready", rerouted: bool = False,
          reaped: bool = False) -> KilledLease:
    return KilledLease(task_id=task_id, state=state, rerouted=rerouted, reaped=reaped)


def test_the_event_says_what_became_of_each_task() -> None:
    (kill,) = oom_kills(pod({"state": terminated("OOMKilled", 1, 19)}))
    leases = [lease(3), lease(1, rerouted=True, reaped=True), lease(2, "dead")]
    assert [outcome(x) for x in leases] == ["retried", "rerouted", "dead"]
    assert summary(kill, leases, "WorkerPool big") == (
        f"OOMKilled on pod small-abc (container worker, memory limit 64Mi) at {at(19)}; "
        "retried now: 3; retried on WorkerPool big: 1; dead letters (lease-expiry budget "
        "used up): 2; the lease reaper had ended 1 first (cause added)")
    assert summary(kill, [], None).endswith(f"at {at(19)}; it held no task")
    many = summary(kill, [lease(i) for i in range(MAX_IDS + 5)], None)
    assert many.endswith(f", {MAX_IDS - 1} and 5 more")
