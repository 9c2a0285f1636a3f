"""A worker node cut off from Postgres under load, then healed (issue 18).

On the harness's kind cluster, every pod of a pool on the node that runs the
maintenance leader (the leader and a follower) has its traffic dropped inside
that node: DROP rules for the pod's IP, both ways, at the top of the node
container's FORWARD chain, which the pods' traffic to Postgres (on this host, at
the kind network's gateway) crosses. No socket is closed and nothing answers:
the gray failure of a silent network. The kubelet's probes come from the node
itself, not through FORWARD, so readiness is still observed. The pods on the
other node stay connected and take over.

Measured from the outside (the API server; Postgres, read right after the cut;
the rules' packet counters) and from the handlers' own records (the recorder's
log in the folder shared with the nodes: one line per start, cancel and finish,
each run with an id that its result carries), never from Shoal's bookkeeping:

- nothing lost, no task completed twice, no stale result (each stored result is
  that of the task's latest-started completed run);
- each task held by a partitioned pod runs again on a connected pod within one
  claim TTL plus one maintenance pass of the cut, although the leader was cut off
  too, never before its lease expired, and within a pass of the later of its
  expiry and the new leader's election;
- each partitioned run is stopped by its own worker (self-fencing) by its
  lease's expiry;
- the partitioned pods go NotReady within TTL/2 plus the kubelet's detection,
  stay NotReady while cut off, are Ready again soon after the heal, and no
  container restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.aio import MAX_BACKOFF
from shoal.backend import Backend, LinkTimeouts, NewTask
from shoal.worker.maintenance import pass_interval
from tests.cluster.access import KubeAccess
from tests.cluster.engine import docker
from tests.e2e.support import PARTITION_HEADER, PARTITION_ROWS, RunLog, recorder_pool, settled
from tests.operator.harness import (
    OperatorProcess,
    apply,
    create_secret,
    pod_ready,
    pool_pods,
)
from tests.support import eventually, wait_for

pytestmark = [pytest.mark.kube, pytest.mark.kind]

POOL = "cut"
PODS = 4  # two per node
CONCURRENCY = 3
# Long enough that TTL/2 stands clear of the kubelet's readiness detection
# (failureThreshold 2 x periodSeconds 1) and of this test's polling; short enough
# that the scenario takes about a minute.
CLAIM_TTL = 16.0
PASS = pass_interval(CLAIM_TTL)  # the leader reaps expired leases once per pass
LINK = LinkTimeouts.for_claim_ttl(CLAIM_TTL)
FOREVER = 600.0  # the long runs sleep until the test lets them finish (a flag file)
# What follows a reap before the re-run's first line is written: the NOTIFY, the
# claim, the recorder's note (a connected pod has a free slot: see `load`).
CLAIM_SLACK = 1.0
# The API server showing a probe's result (the kubelet's status write), and this
# test's polling of it.
STATUS_SLACK = 1.0
# A fenced handler is cancelled at its deadline (at or before the lease's expiry
# in the database); its `cancelled` note is written by its clean-up once the event
# loop delivers the cancellation.
FENCE_SLACK = 0.5
# A follower stands for election when the term it saw would lapse, plus up to a
# quarter pass of jitter (maintenance.follower_pause); then one round trip.
TAKEOVER_BOUND = PASS / 4 + 0.5



@dataclass
class Partition:
    """DROP rules for pods' IPs in their nodes' FORWARD chains, both ways; `heal`
    deletes exactly the rules `cut` inserted."""

    tag: str
    rules: list[tuple[str, list[str]]] = field(default_factory=list)  # (node, rule)

    def cut(self, pods: list[dict[str, Any]]) -> None:
        by_node: dict[str, list[list[str]]] = defaultdict(list)
        for pod in pods:
            ip = pod["status"]["podIP"]
            for match in (["-s", ip], ["-d", ip]):
                rule = [*match, "-m", "comment", "--comment", self.tag, "-j", "DROP"]
                by_node[pod["spec"]["nodeName"]].append(rule)
        for node, rules in by_node.items():  # one exec per node: the pods lose it together
            script = " && ".join("iptables -I FORWARD 1 " + " ".join(r) for r in rules)
            try:
                docker("exec", node, "sh", "-c", script)
            finally:  # what went in comes out, even if a later rule failed
                self.rules += [(node, r) for r in rules]

    def packets(self) -> dict[str, int]:
        """Packets each rule dropped so far, by 'NODE from IP' and 'NODE to IP'."""
        counts = {}
        for node in sorted({n for n, _ in self.rules}):
            listing = docker("exec", node, "iptables", "-L", "FORWARD", "-v", "-n", "-x").stdout
            for line in listing.splitlines():
                if f"/* {self.tag} */" in line:
                    # pkts bytes target prot opt in out source destination /* tag */
                    fields = line.split()
                    source, destination = fields[-5], fields[-4]
                    where = f"from {source}" if source != "0.0.0.0/0" else f"to {destination}"
                    counts[f"{node} {where}"] = int(fields[0])
        return counts

    def heal(self) -> None:
        while self.rules:
            node, rule = self.rules[-1]
            docker("exec", node, "iptables", "-D", "FORWARD", *rule, check=False)
            self.rules.pop()


@contextlib.contextmanager
def partitioned(pods: list[dict[str, Any]], tag: str) -> Iterator[Partition]:
    partition = Partition(tag)
    try:
        partition.cut(pods)
        yield partition
    finally:
        partition.heal()


@dataclass
class ReadyWatch:
    """The pool's pods as the API server shows them, polled: each change of a pod's
    Ready condition with the time it was seen (once the answer arrived: an upper
    bound), and each pod's container restarts."""

    kube: KubeAccess
    namespace: str
    seen: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            pods = await asyncio.to_thread(pool_pods, self.kube, self.namespace, POOL)
            now = time.time()
            for pod in pods:
                name, ready = pod["metadata"]["name"], pod_ready(pod)
                changes = self.seen.setdefault(name, [])
                if not changes or changes[-1][1] != ready:
                    changes.append((now, ready))
                self.restarts[name] = sum(s["restartCount"] for s in pod["status"].get(
                    "containerStatuses", []))
            await asyncio.sleep(0.2)

    def since(self, pod: str, ready: bool, after: float) -> float | None:
        """Seconds from `after` to when `pod` was first seen (not) Ready after it."""
        return next((t - after for t, r in self.seen.get(pod, []) if t >= after and r == ready),
                    None)

    def ready_between(self, pod: str, start: float, end: float) -> bool:
        return any(r for t, r in self.seen.get(pod, []) if start < t < end)


@contextlib.asynccontextmanager
async def watching(kube: KubeAccess, namespace: str) -> AsyncIterator[ReadyWatch]:
    watch = ReadyWatch(kube, namespace)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def load(backend: Backend, log: RunLog, namespace: str) -> AsyncIterator[list[int]]:
    """Short runs enqueued two every half second while the context lasts (their ids):
    the connected pods stay busy, with a slot free for a re-queued task."""
    ids: list[int] = []

    async def produce() -> None:
        while True:
            ids.extend(await backend.enqueue(log.tasks("tracked", 2, namespace, sleep=0.5)))
            await asyncio.sleep(0.5)

    task = asyncio.create_task(produce())
    try:
        yield ids
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True)
class Count:
    """What the recorder's log and the stored results say of a set of tasks."""

    lost: list[int]
    twice: dict[int, int]
    stale: list[int]
    reruns: int

    @classmethod
    async def of(cls, backend: Backend, log: RunLog, ids: list[int]) -> Count:
        rows = {r["id"]: r for r in await backend.pool.fetch(
            "SELECT id, state::text, result FROM shoal.tasks WHERE id = ANY($1::bigint[])",
            ids)}
        starts: dict[int, dict[str, float]] = defaultdict(dict)  # task -> run id -> start
        done: dict[int, list[str]] = defaultdict(list)  # task -> run ids
        for e in log.events():
            if e["event"] == "start":
                starts[e["task"]][e["run_id"]] = e["t"]
            elif e["event"] == "done":
                done[e["task"]].append(e["run_id"])
        lost = [i for i in ids if not done[i] or rows[i]["state"] != "succeeded"]
        twice = {i: len(done[i]) for i in ids if len(done[i]) > 1}
        stale = [i for i in ids if done[i] and (rows[i]["result"] or {}).get("run_id")
                 != max(done[i], key=lambda run: starts[i][run])]
        return cls(lost, twice, stale, sum(len(s) - 1 for s in starts.values()))


def epoch(value: datetime) -> float:
    return value.timestamp()


def spread(pool: dict[str, Any]) -> dict[str, Any]:
    """The pool with its pods spread over the nodes (two a node)."""
    pool["spec"]["template"]["affinity"] = {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"shoal.dev/pool": POOL}},
            "topologyKey": "kubernetes.io/hostname"}}]}}
    return pool


async def test_the_leaders_node_partitioned_from_postgres_under_load(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """The node of the maintenance leader and a follower loses Postgres for longer than
    a claim TTL while every slot is busy, then the network heals."""
    assert kube.kind is not None
    log = RunLog.create(kube)
    create_secret(kube, namespace, pod_dsn)
    apply(kube, spread(recorder_pool(POOL, namespace, replicas=PODS, concurrency=CONCURRENCY,
                                     claimTTL=f"{CLAIM_TTL:g}s")))
    await asyncio.to_thread(wait_for, lambda: sum(map(pod_ready, pool_pods(
        kube, namespace, POOL))) == PODS, 120, f"{PODS} Ready worker pods")
    pods = {p["metadata"]["name"]: p for p in pool_pods(kube, namespace, POOL)}

    async def leader() -> str:  # "" until one of the pods leads
        holder = await backend.pool.fetchval(
            "SELECT holder FROM shoal.leaders WHERE role = 'maintenance' AND expires_at > now()")
        return holder if holder in pods else ""
    leading: str = await eventually(leader, within=60, interval=0.2, what="a leader")
    node = pods[leading]["spec"]["nodeName"]
    victims = [p for p in pods.values() if p["spec"]["nodeName"] == node]
    cut_off = {p["metadata"]["name"] for p in victims}
    connected = set(pods) - cut_off
    placement = {name: p["spec"]["nodeName"] for name, p in pods.items()}
    assert len(cut_off) >= 2 and connected, f"pods by node: {placement}"
    probe = victims[0]["spec"]["containers"][0]["readinessProbe"]
    # /readyz answers 503 within TTL/2 of a silent link (LinkTimeouts: probe + stall);
    # the kubelet then needs failureThreshold failed probes, one each periodSeconds.
    not_ready_bound = (CLAIM_TTL / 2 + probe["failureThreshold"] * probe["periodSeconds"]
                       + STATUS_SLACK)
    # After the heal: the connection attempt under way ends within its bound, the next
    # comes within the reconnect backoff's cap; then one probe succeeds.
    ready_bound = LINK.connect + MAX_BACKOFF + probe["periodSeconds"] + STATUS_SLACK

    async with watching(kube, namespace) as watch, load(backend, log, namespace) as short_ids:
        # The pool works for a claim TTL first, as a pool that has run for a while: a
        # new leader reaps only once in contact with the database for that long (the
        # maintenance service's rule for outages that cut everyone off).
        await asyncio.sleep(CLAIM_TTL)
        # Then every slot takes a run that lasts until its flag file appears. The cut
        # follows their claims at once, so the leases expire a whole TTL after it and
        # each pod's link has just been heard from: the latest re-runs, and the
        # slowest path to NotReady (the idle link's probe).
        flags, pod_flags = log.host_path.parent, log.pod_path.rpartition("/")[0]
        slots = PODS * CONCURRENCY
        long_ids = await backend.enqueue([NewTask("tracked", {
            "log": log.pod_path, "sleep": FOREVER, "fast_flag": f"{pod_flags}/go-{i}"},
            namespace=namespace) for i in range(slots)])
        flag = {task: flags / f"go-{i}" for i, task in enumerate(long_ids)}

        def first_runs() -> dict[int, dict[str, Any]]:
            return {e["task"]: e for e in log.events("start") if e["task"] in flag}
        await eventually(lambda: len(first_runs()) == slots, within=60, interval=0.1,
                         what="every slot running a long task")
        runs = first_runs()
        assert {e["host"] for e in runs.values()} == set(pods), placement
        held = {task for task, e in runs.items() if e["host"] in cut_off}
        restarts = dict(watch.restarts)
        assert set(restarts) == set(pods), restarts

        cut = time.time()
        with partitioned(victims, f"shoal-partition-{namespace}") as partition:
            # What Postgres holds for the partitioned pods, right after the cut.
            leases = {r["id"]: r for r in await backend.pool.fetch(
                "SELECT id, worker_id, lease_expires_at FROM shoal.tasks "
                "WHERE state = 'running' AND worker_id = ANY($1::text[])", sorted(cut_off))}
            term = await backend.pool.fetchrow(
                "SELECT holder, term, expires_at FROM shoal.leaders WHERE role = 'maintenance'")
            assert term["holder"] == leading, term
            assert set(leases) == held, (leases, held)
            assert {r["worker_id"] for r in leases.values()} == cut_off, leases
            expiry = {task: epoch(r["lease_expires_at"]) for task, r in leases.items()}
            for task in set(long_ids) - held:  # the connected pods' slots free up
                flag[task].touch()

            def rerun(task: int) -> dict[str, Any] | None:
                return next((e for e in log.events("start") if e["task"] == task
                             and e["host"] in connected and e["t"] > cut), None)

            def stopped(task: int) -> dict[str, Any] | None:
                return next((e for e in log.events() if e["run_id"] == runs[task]["run_id"]
                             and e["event"] != "start"), None)

            await eventually(lambda: all(watch.since(p, False, cut) is not None
                                         for p in cut_off),
                             within=not_ready_bound + 20, interval=0.2,
                             what="the partitioned pods NotReady")
            await eventually(lambda: all(map(rerun, held)), within=CLAIM_TTL + PASS + 30,
                             interval=0.2, what="every held task re-run on a connected pod")
            await eventually(lambda: all(map(stopped, held)), within=30, interval=0.2,
                             what="every partitioned run stopped")
            successor = await backend.pool.fetchrow(
                "SELECT holder, term, elected_at FROM shoal.leaders WHERE role = 'maintenance'")
            dropped = partition.packets()
        healed = time.time()
        for task in held:  # the re-runs may finish now
            flag[task].touch()
        await eventually(lambda: all(watch.since(p, True, healed) is not None
                                     for p in cut_off),
                         within=ready_bound + 30, interval=0.2,
                         what="the partitioned pods Ready again")
        restarts_after = dict(watch.restarts)
    ids = long_ids + short_ids
    await settled(backend, ids, 120)
    count = await Count.of(backend, log, ids)

    reruns = {task: rerun(task) or {} for task in held}
    ends = {task: stopped(task) or {} for task in held}
    elected = epoch(successor["elected_at"])
    takeover = elected - epoch(term["expires_at"])
    overlap = max(ends[t]["t"] - reruns[t]["t"] for t in held)
    from_cut = max(reruns[t]["t"] - cut for t in held)
    from_expiry = {t: reruns[t]["t"] - expiry[t] for t in held}
    # No reap before the lease expires, nor before a connected worker leads; then
    # within a pass of the new leader.
    from_reapable = max(reruns[t]["t"] - max(expiry[t], elected) for t in held)
    fenced_late = max(ends[t]["t"] - expiry[t] for t in held)
    not_ready = {p: watch.since(p, False, cut) or 0.0 for p in cut_off}
    ready_again = {p: watch.since(p, True, healed) or 0.0 for p in cut_off}
    followers = sorted(cut_off - {leading})
    row = (f"| leader's node cut off {healed - cut:.0f} s (TTL {CLAIM_TTL:g} s, "
           f"{len(held)} leases) | {len(ids)} | {len(count.lost)} | {len(count.twice)} | "
           f"{count.reruns} | {overlap:.2f} | {len(count.stale)} | "
           f"{max(from_expiry.values()):.1f} | {from_cut:.1f} | "
           f"{not_ready[leading]:.1f} leader, "
           + ", ".join(f"{not_ready[p]:.1f}" for p in followers)
           + f" | {max(ready_again.values()):.1f} |")
    PARTITION_ROWS.append(row)
    print(f"\n{PARTITION_HEADER}\n{row}")
    print(f"cut {_clock(cut)}, healed {_clock(healed)}; leases expiring "
          f"{min(expiry.values()) - cut:.1f}..{max(expiry.values()) - cut:.1f} s after the "
          f"cut; term {term['term']} of {leading} lapsing {epoch(term['expires_at']) - cut:.1f}"
          f" s after it, term {successor['term']} won by {successor['holder']} "
          f"{takeover:.1f} s after the lapse; re-runs {from_reapable:.1f} s at most after both; "
          f"runs stopped {fenced_late:+.2f} s from their expiry at the latest; packets "
          f"dropped {dropped}")
    for pod in sorted(cut_off):  # what the partitioned workers said (shown on a failure)
        said = kube.kubectl("logs", pod, "-n", namespace, f"--since-time={_rfc3339(cut - 5)}")
        print(f"--- {pod}{' (leader)' if pod == leading else ''}:\n{said.stdout}")

    assert not count.lost, f"lost: {count.lost}"
    assert not count.twice, f"completed more than once: {count.twice}"
    assert not count.stale, f"stale results: {count.stale}"
    assert len(dropped) == 2 * len(cut_off) and all(dropped.values()), (
        f"a rule dropped nothing: {dropped}")
    assert successor["holder"] in connected and successor["term"] > term["term"], successor
    assert 0 <= takeover <= TAKEOVER_BOUND, f"the role taken {takeover:.1f} s after the lapse"
    assert all(reruns[t]["host"] in connected for t in held)
    assert min(from_expiry.values()) > 0, f"re-run before its lease expired: {from_expiry}"
    assert from_cut <= CLAIM_TTL + PASS + CLAIM_SLACK, (
        f"a held task re-ran {from_cut:.1f} s after the cut; bound "
        f"{CLAIM_TTL + PASS + CLAIM_SLACK:g} s")
    assert from_reapable <= PASS + CLAIM_SLACK, (
        f"a held task re-ran {from_reapable:.1f} s after it could be reaped")
    assert all(ends[t]["event"] == "cancelled" for t in held), ends
    assert fenced_late <= FENCE_SLACK, f"a partitioned run stopped {fenced_late:.2f} s late"
    assert max(not_ready.values()) <= not_ready_bound, (
        f"NotReady {not_ready} s after the cut; bound {not_ready_bound:g} s")
    assert not any(watch.ready_between(p, cut, healed) for p in cut_off), watch.seen
    assert max(ready_again.values()) <= ready_bound, (
        f"Ready {ready_again} s after the heal; bound {ready_bound:g} s")
    assert restarts_after == restarts, (restarts, restarts_after)


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
