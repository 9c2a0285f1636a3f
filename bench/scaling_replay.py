"""One trace replayed on kind with real Pods, against bench.scaling_sim on the same trace.

Issue 20 asks that one trace replayed on kind validate the simulator: the real figures
within 20 % of the simulated ones. This brings up what bench.scale_latency does (a
one-node kind cluster, a Postgres on this host that pods reach, `shoal operator`) and
two WorkerPools of the demo app (`examples/tasks.py:app`): concurrency 2, minReplicas 1,
maxReplicas 5, scaleDownStabilization 30 s, podStartupTime 6 s, one with
`targetQueueAge: 20s` (latency), one by count (targetTasksPerReplica: the concurrency,
the default). Each pool gets the same trace, generated from a seed: a stream of 0.25
`sleep` tasks/s of 1-3 s, a burst of 60 of them 40 s in (over 4 s), arrivals for 120 s
and a 90 s tail for the scale-down; every task is enqueued at its arrival time, so its
run_at is its enqueue time. The count pool's trace starts 90 s after the latency pool's,
so the two bursts' pods do not start together on two cores.

Real figures, from outside Shoal's scaler:
- per task, wait = started_at - run_at from the task rows (both on the database's
  clock; the demo app keeps no records of its own); the oldest ready task's age each
  second, rebuilt from the same rows;
- the pool's Pods and Deployment, polled every 0.5 s: pod-seconds from a Pod's first
  sighting to the poll it is gone at (a terminating Pod counts until it is gone), each
  Pod's start-up from its first sighting to its Ready condition, and the replicas the
  Deployment asks for.
Everything is counted over the trace's horizon (the pool's first Pod, started before,
from the trace's start).

Simulated figures: `scaling_sim.simulate` on the same Trace with a `Model` of the same
spec, its pods' start-up uniform over the range this run's own scale-up Pods took
(creation to Ready, both pools: the simulator is validated on the queue and the
scaling, not on kind's start-up time), the pool starting at one Ready pod and no service
history, as the real pools do. Twice: A evaluates `decide()` as the operator does (on a
0.1 s tick after an enqueue, every 10 s otherwise, the Flow read again once 5 s old); B as
bench.scaling_sim's four traces do (every 1 s, the Flow fresh each time).

Output: the table on stdout and in docs/scaling/replay.txt, the plot in
docs/scaling/replay.png, the real run's observations in docs/scaling/replay.json
(`--from` renders again from such a file, without a cluster). About 6 minutes:

    .venv/bin/python -m bench.scaling_replay
    .venv/bin/python -m bench.scaling_replay --from docs/scaling/replay.json

It exits 1 when pod-seconds or the p99 wait of either pool is not within 20 % of
simulation A.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

from bench.kind_operator import demo_pool, operator_on_kind
from bench.scaling_sim import (
    Model,
    Policy,
    Run,
    ShoalCount,
    ShoalLatency,
    Trace,
    _build,
    _markdown,
    _poisson,
    quantile,
    simulate,
)
from shoal.backend import Backend, NewTask, TaskFilter
from shoal_operator.kube import Kube, KubeError, deployment_path, pods_path
from shoal_operator.pools.autoscaler import MIN_EVALUATION_GAP
from shoal_operator.pools.flow import FLOW_INTERVAL_SECONDS
from tests.operator.harness import apply
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs/scaling"
NAMESPACE = "bench-replay"
SEED = 20
POLL = 0.5  # seconds between polls of the Pods and the Deployments
WITHIN = 0.20  # the bound: real within 20 % of simulated
STARTUP_SPEC = 6.0  # podStartupTime in both pools' specs (bench.scale_latency: ~5 s)
# The pools' spec; the pods' start-up range is measured.
SPEC = Model(concurrency=2, target_age=20.0, min_replicas=1, max_replicas=5,
             stabilization=30.0, pod_startup_time=STARTUP_SPEC)
POOLS = {"latency": 0.0, "count": 90.0}  # pool -> its trace's start after the run's
RECHECK = 10.0  # the operator's --recheck-interval (its default, which the run uses)
# How the simulation evaluates decide(): A as the operator does, B as bench.scaling_sim's
# traces do (Model's defaults).
CADENCES: dict[str, dict[str, Any]] = {
    f"as the operator evaluates: on a {MIN_EVALUATION_GAP:g} s tick after an enqueue (it "
    f"is woken by them) and every {RECHECK:g} s, the Flow (service times, arrivals) read "
    f"again once {FLOW_INTERVAL_SECONDS:g} s old":
        {"tick": MIN_EVALUATION_GAP, "recheck": RECHECK, "flow_interval": FLOW_INTERVAL_SECONDS},
    "as bench.scaling_sim's four traces: decide() every 1 s on a fresh Flow": {},
}


def trace(seed: int = SEED) -> Trace:
    """0.25 tasks/s of 1-3 s for 120 s, 60 more in 4 s at 40 s; a 90 s tail."""
    rng = random.Random(seed)
    length = 120.0
    rows = [(t, round(rng.uniform(1.0, 3.0), 2), "sleep", False)
            for t in _poisson(rng, lambda t: 0.25, 0.25, length)]
    rows += [(40.0 + rng.random() * 4.0, round(rng.uniform(1.0, 3.0), 2), "sleep", False)
             for _ in range(60)]
    return _build("replay", "0.25 tasks/s of 1-3 s sleeps, 60 more in 4 s at 40 s", length,
                  rows, tail=90.0)


def pool_manifest(name: str) -> dict[str, Any]:
    scaling: dict[str, Any] = {
        "minReplicas": SPEC.min_replicas, "maxReplicas": SPEC.max_replicas,
        "scaleDownStabilization": f"{SPEC.stabilization:g}s",
        "podStartupTime": f"{STARTUP_SPEC:g}s"}
    if name == "latency":
        scaling["targetQueueAge"] = f"{SPEC.target_age:g}s"
    return demo_pool(name, NAMESPACE, concurrency=SPEC.concurrency, scaling=scaling)


# -- the real run ------------------------------------------------------------------


@dataclass
class SeenPod:
    """One Pod as the polls saw it, in seconds from the pool's trace start."""

    name: str
    first: float
    ready: float | None = None
    terminating: float | None = None
    gone: float | None = None


@dataclass
class Observed:
    """What one pool's real run was, in seconds from its trace start (task times on the
    database's clock, moved onto this host's by the offset measured at enqueue)."""

    pool: str
    tasks: list[tuple[float, float | None]] = field(default_factory=list)  # run_at, started
    pods: list[SeenPod] = field(default_factory=list)
    desired: list[tuple[float, int]] = field(default_factory=list)  # the Deployment's
    clock_offset: float = 0.0  # database clock - this host's, at enqueue (median)


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


async def _watch(k: Kube, starts: dict[str, float], seen: dict[str, Observed],
                 stop: asyncio.Event) -> None:
    """Poll the Pods and Deployments of every pool each POLL s until `stop`."""
    pods: dict[str, tuple[str, SeenPod]] = {}  # name -> (pool, what was seen)
    while not stop.is_set():
        now = time.time()
        listed = await k.get(pods_path(NAMESPACE))
        present = set()
        for item in listed.get("items", []):
            meta = item["metadata"]
            pool = (meta.get("labels") or {}).get("shoal.dev/pool")
            if pool not in seen:
                continue
            at = now - starts[pool]
            name = meta["name"]
            present.add(name)
            if name not in pods:
                pods[name] = (pool, SeenPod(name, at))
                seen[pool].pods.append(pods[name][1])
            pod = pods[name][1]
            if _ready(item) and pod.ready is None:
                pod.ready = at
            if meta.get("deletionTimestamp") and pod.terminating is None:
                pod.terminating = at
        for name, (pool, pod) in pods.items():
            if name not in present and pod.gone is None:
                pod.gone = now - starts[pool]
        for pool, observed in seen.items():
            try:
                dep = await k.get(deployment_path(NAMESPACE, pool))
            except KubeError:
                continue
            observed.desired.append((now - starts[pool], int(dep["spec"]["replicas"])))
        await asyncio.sleep(max(0.0, POLL - (time.time() - now)))


async def _enqueue(backend: Backend, pool: str, tr: Trace, start: float) -> list[float]:
    """Each task at its arrival time (tasks due together in one statement); the host's
    clock at each statement, per task."""
    sent: list[float] = []
    i = 0
    while i < len(tr.arrival):
        wait = start + tr.arrival[i] - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        due = time.time() - start
        batch = []
        while i < len(tr.arrival) and tr.arrival[i] <= due:
            batch.append(NewTask("sleep", {"seconds": tr.duration[i]},
                                 namespace=f"{NAMESPACE}-{pool}"))
            i += 1
        sent += [time.time()] * len(batch)
        await backend.enqueue(batch)
    return sent


async def _settled(k: Kube, pools: Sequence[str]) -> None:
    """Until every pool has its minReplicas, Ready, and no other Pod."""
    async with asyncio.timeout(180):
        while True:
            items = (await k.get(pods_path(NAMESPACE))).get("items", [])
            ok = True
            for pool in pools:
                mine = [p for p in items
                        if (p["metadata"].get("labels") or {}).get("shoal.dev/pool") == pool]
                ok &= len(mine) == sum(map(_ready, mine)) == SPEC.min_replicas
            if ok:
                return
            await asyncio.sleep(0.5)


async def observe(kubeconfig: Path, dsn: str, tr: Trace) -> dict[str, Observed]:
    """Replay `tr` on every pool (each from its offset) and observe it."""
    await config.load_kube_config(config_file=str(kubeconfig))
    k = Kube(client.ApiClient())
    backend = await Backend.connect(dsn)
    try:
        await _settled(k, list(POOLS))
        begin = time.time() + 1.0
        starts = {pool: begin + offset for pool, offset in POOLS.items()}
        seen = {pool: Observed(pool) for pool in POOLS}
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(k, starts, seen, stop))
        sent = await asyncio.gather(*(_enqueue(backend, pool, tr, starts[pool])
                                      for pool in POOLS))
        end = max(starts.values()) + tr.horizon
        await asyncio.sleep(max(0.0, end - time.time()) + POLL)
        stop.set()
        await watcher
        for (pool, observed), at in zip(seen.items(), sent, strict=True):
            rows = await backend.list_tasks(TaskFilter(namespace=f"{NAMESPACE}-{pool}"),
                                            limit=10_000)
            rows.sort(key=lambda r: r.id)  # enqueue order: the order of `at`
            offset = statistics.median(r.run_at.timestamp() - t for r, t in zip(
                rows, at, strict=True))
            base = starts[pool] + offset  # the trace's start on the database's clock
            observed.clock_offset = offset
            observed.tasks = [(r.run_at.timestamp() - base,
                               None if r.started_at is None else r.started_at.timestamp() - base)
                              for r in rows]
        return seen
    finally:
        await backend.close()
        await k.api.close()


def run_on_kind(tr: Trace) -> dict[str, Observed]:
    """Bring up the cluster, Postgres, the operator and the pools; replay; tear down."""
    with operator_on_kind(NAMESPACE, "replay") as (kube, dsn):
        for pool in POOLS:
            apply(kube, pool_manifest(pool))
        wait_for(lambda: kube.kubectl("get", "deploy", *POOLS, "-n", NAMESPACE
                                      ).returncode == 0, 60, "the Deployments")
        print(f"pools up; replaying {len(tr.arrival)} tasks per pool over "
              f"{tr.horizon + max(POOLS.values()):.0f} s", file=sys.stderr, flush=True)
        return asyncio.run(observe(kube.kubeconfig, dsn, tr))


# -- the figures --------------------------------------------------------------------


def real_run(observed: Observed, tr: Trace) -> Run:
    """The real figures as a `Run`, counted as `simulate` counts them."""
    horizon = tr.horizon
    waits = sorted((horizon if started is None else started) - run_at
                   for run_at, started in observed.tasks)
    run = Run(f"{observed.pool} (kind)", len(waits), sum(1 for w in waits if w > SPEC.target_age),
              quantile(waits, 0.99), 0.0, p50=quantile(waits, 0.5))
    for pod in observed.pods:
        end = horizon if pod.gone is None else min(pod.gone, horizon)
        run.pod_seconds += max(0.0, end - max(pod.first, 0.0))
    steps = sorted(observed.desired)
    for second in range(int(horizon)):
        run.times.append(float(second))
        before = [n for t, n in steps if t <= second]
        run.replicas.append(before[-1] if before else SPEC.min_replicas)
        waiting = [run_at for run_at, started in observed.tasks
                   if run_at <= second and (started is None or started > second)]
        run.oldest.append(second - min(waiting) if waiting else 0.0)
    return run


def startups(seen: dict[str, Observed]) -> list[float]:
    """Creation (first sighting) to Ready of the Pods the scale-ups started."""
    return sorted(p.ready - p.first for o in seen.values() for p in o.pods
                  if p.ready is not None and p.first > 0)


def model_for(seen: dict[str, Observed]) -> Model:
    """The spec, with the pods' start-up range measured on this run (all its Pods if
    none was started by a scale-up)."""
    times = startups(seen) or sorted(p.ready - p.first for o in seen.values() for p in o.pods
                                     if p.ready is not None)
    return replace(SPEC, startup=(times[0], times[-1]))


def policy_for(pool: str, model: Model) -> Policy:
    return ShoalLatency(model) if pool == "latency" else ShoalCount(model.concurrency, model)


@dataclass
class Pair:
    """One pool's real run and its simulations, one per cadence (CADENCES' order)."""

    pool: str
    real: Run
    sims: list[Run]
    horizon: float

    def figures(self) -> list[tuple[str, float, list[float], bool]]:
        """(figure, real, simulated, whether a relative difference means anything); the
        figures named "..., s" or "..., %" are shown to a tenth."""
        runs = [self.real, *self.sims]
        late = [(1 - r.within) * 100 for r in runs]
        extra = [r.pod_seconds - SPEC.min_replicas * self.horizon for r in runs]
        rows: list[tuple[str, list[float], bool]] = [
            ("tasks", [r.tasks for r in runs], True),
            (f"waited > {SPEC.target_age:g} s, %", late, False),
            ("p50 wait, s", [r.p50 for r in runs], True),
            ("p99 wait, s", [r.p99 for r in runs], True),
            ("pod-seconds", [r.pod_seconds for r in runs], True),
            ("pod-seconds above minReplicas", extra, True),
            ("max replicas", [max(r.replicas) for r in runs], True),
        ]
        return [(name, values[0], values[1:], rel) for name, values, rel in rows]

    def within(self, figure: str, sim: int) -> bool:
        [(_, real, sims, _)] = [f for f in self.figures() if f[0] == figure]
        return abs(real - sims[sim]) <= WITHIN * abs(sims[sim])


CHECKED = ("pod-seconds", "p99 wait, s")  # the figures the 20 % applies to


def _fmt(figure: str, value: float) -> str:
    return f"{value:,.1f}" if figure.endswith((", s", ", %")) else f"{value:,.0f}"


def _diff(real: float, sim: float, relative: bool) -> str:
    if not relative:
        return f"{real - sim:+.1f} points"
    if sim == 0:
        return "n/a (0 simulated)"
    return f"{real / sim - 1:+.1%}"


def table(pairs: Sequence[Pair], tr: Trace, model: Model, seen: dict[str, Observed],
          command: str, source: Path | None) -> str:
    rows = []
    for p in pairs:
        for name, real, sims, rel in p.figures():
            row = [p.pool, name, _fmt(name, real)]
            for sim in sims:
                row += [_fmt(name, sim), _diff(real, sim, rel)]
            rows.append(row)
    header = ["pool", "figure", "real (kind)"]
    for i in range(len(CADENCES)):
        header += [f"sim {'AB'[i]}", f"real vs {'AB'[i]}"]
    times = startups(seen)
    offsets = ", ".join(f"{o.pool} {o.clock_offset * 1000:+.0f} ms" for o in seen.values())
    out = [f"$ {command}", ""]
    if source is not None:
        out += [f"(rendered again from {source}, the observations of an earlier real run)",
                ""]
    out += [f"Trace: {tr.about}; {len(tr.arrival)} tasks over {tr.length:g} s + {tr.tail:g} s "
            f"tail (seed {SEED}), replayed on kind on each pool. Pools: concurrency "
            f"{model.concurrency}, {model.min_replicas}-{model.max_replicas} replicas, "
            f"scaleDownStabilization {model.stabilization:g} s, podStartupTime "
            f"{STARTUP_SPEC:g} s; latency: targetQueueAge {model.target_age:g} s; count: "
            f"targetTasksPerReplica {model.concurrency} (the default).",
            f"Pod start-up on kind (creation to Ready, the {len(times)} Pods the scale-ups "
            f"started): {_startup_summary(times)}; the simulation's start-up: uniform "
            f"{model.startup[0]:.1f}-{model.startup[1]:.1f} s. Waits from the task rows "
            f"(started_at - run_at, the database's clock; offset to this host's: {offsets}).",
            "Simulated:"]
    out += [f"- {'AB'[i]}: {about}" for i, about in enumerate(CADENCES)]
    out += [""]
    out += _markdown(header, rows)
    out += [""]
    for i in range(len(CADENCES)):
        checks = [(p.pool, figure.split(",")[0], p.within(figure, i))
                  for p in pairs for figure in CHECKED]
        holds = all(ok for _, _, ok in checks)
        verdicts = [f"{pool} {figure} {'within' if ok else 'NOT within'}"
                    for pool, figure, ok in checks]
        out.append(f"Real within {WITHIN:.0%} of sim {'AB'[i]} (pod-seconds and p99 wait, "
                   f"both pools): {'yes' if holds else 'NO'} ({'; '.join(verdicts)}).")
    out += ["", "The share that waited longer than the target is compared in points: near "
            "0 % a relative difference means nothing."]
    return "\n".join(out) + "\n"


def _startup_summary(times: Sequence[float]) -> str:
    if not times:
        return "none"
    return (f"{times[0]:.1f} to {times[-1]:.1f} s, median {statistics.median(times):.1f} s")


def plot(pairs: Sequence[Pair], path: Path) -> None:
    """Replicas and the oldest ready task's age over time: real, sim A, sim B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(pairs), figsize=(5.5 * len(pairs), 6.5), squeeze=False)
    for col, p in enumerate(pairs):
        top, bottom = axes[0][col], axes[1][col]
        lines = [(p.real, "kind", "tab:blue", 2.0)] + [
            (run, f"sim {'AB'[i]}", color, 1.2)
            for i, (run, color) in enumerate(zip(p.sims, ("tab:orange", "tab:green"),
                                                 strict=False))]
        for run, label, color, width in lines:
            top.step(run.times, run.replicas, where="post", color=color, lw=width,
                     label=f"{label}: {run.pod_seconds:,.0f} pod-s")
            bottom.plot(run.times, run.oldest, color=color, lw=width,
                        label=f"{label}: p99 wait {run.p99:.1f} s")
        bottom.axhline(SPEC.target_age, color="k", ls="--", lw=0.8)
        top.set_title(f"{p.pool} pool", fontsize=9)
        top.set_ylabel("replicas (the Deployment's)")
        bottom.set_ylabel("oldest ready task, s")
        bottom.set_xlabel("seconds from the trace's start")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("bench.scaling_replay: one trace on kind and in bench.scaling_sim (target "
                 f"{SPEC.target_age:g} s, dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _load(path: Path) -> dict[str, Observed]:
    data = json.loads(path.read_text())
    return {pool: Observed(pool, [(a, b) for a, b in o["tasks"]],
                           [SeenPod(**p) for p in o["pods"]],
                           [(t, n) for t, n in o["desired"]], o["clock_offset"])
            for pool, o in data.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="a replay.json of an earlier real run: no cluster")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="where replay.txt, .png and .json go (default docs/scaling)")
    args = parser.parse_args(argv)
    command = "python -m bench.scaling_replay" + "".join(f" {a}"
                                                          for a in (argv or sys.argv[1:]))
    tr = trace()
    if args.source is not None:
        seen = _load(args.source)
    else:
        started = time.monotonic()
        seen = run_on_kind(tr)
        print(f"real run done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    model = model_for(seen)
    pairs = [Pair(pool, real_run(seen[pool], tr),
                  [simulate(tr, policy_for(pool, replace(model, **cadence)), SEED, record=True)
                   for cadence in CADENCES.values()], tr.horizon)
             for pool in POOLS]
    text = table(pairs, tr, model, seen, command, args.source)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay.txt").write_text(text)
    plot(pairs, args.out / "replay.png")
    if args.source is None:
        (args.out / "replay.json").write_text(json.dumps(
            {pool: asdict(o) for pool, o in seen.items()}, indent=1) + "\n")
    print(f"written to {args.out}/replay.txt and replay.png", file=sys.stderr)
    return 0 if all(p.within(f, 0) for p in pairs for f in CHECKED) else 1


if __name__ == "__main__":
    sys.exit(main())
