"""The operator at scale (issue 19): hundreds of WorkerPools on one database, thousands of
Workflows, on kind.

Brings up a one-node kind cluster (tests/cluster, or $SHOAL_TEST_KUBECONFIG's cluster) and
one Postgres server on this host with pg_stat_statements loaded, then, for each operator
under test (`--before PATH`: the operator of another checkout, e.g. a git worktree of
main; then this checkout's), in namespaces of its own and a database of its own on that
same server:

1. creates WorkerPools in steps (`--steps`, default 10, 50, 100, 200 pools, spread over
   `--namespaces` namespaces, all on one database) and measures at each step:
   - reconcile latency: the pool's creation → its first status (`observedGeneration`);
   - over an idle window (`--window` s): the operator's CPU (share of one core), RSS, API
     requests/s (counted by the API server: the operator authenticates as a ServiceAccount
     of its own, which a FlowSchema of its own matches:
     `apiserver_flowcontrol_dispatched_requests_total`), database statements/s
     (pg_stat_statements, the operator's database only) and backlog statements per
     re-check round (the operator's `--recheck-interval`, default 10 s);
   - scale latency: a burst of 4 tasks enqueued to several pools at once → each pool's
     Deployment replica count changed (seen by a watch), `--bursts` pools per step, each
     pool once; the tasks are cancelled after each round.
2. creates `--workflows` Workflows (paused at creation, so their steps wait and the pools
   stay put) over the pools, and measures the time until the backend holds every
   instance and until every CR carries its phase label; then the idle window and scale
   latency again, with them all in place;
3. restarts the operator and, `--restart-settle` seconds later, measures the idle window
   once more: the operator's cost (and RSS) with everything in place, without the
   creation burst behind it.

The pools' pods never run: a nodeSelector no node matches keeps them Pending, so the
figures are the operator's, the API server's and Postgres's, not the workers'. The
operator runs out of the cluster, as a process on this host against kind's API server
(as bench/scale_latency.py runs it), authenticated as a ServiceAccount bound to
cluster-admin. Results: a table on stdout and in docs/fleet/operator.txt, every figure
in docs/fleet/operator.json, and docs/fleet/operator.png (latency, CPU, RSS, requests
against the number of pools).

    .venv/bin/python -m bench.operator_scale --before ../wt-main   # about 35 minutes
    .venv/bin/python -m bench.operator_scale --quick               # CI smoke, about 3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch

from bench.harness import cpu_seconds, percentile
from shoal.backend import Backend, NewTask
from shoal_operator.kube import Kube, KubeError
from tests.cluster.access import KubeAccess
from tests.cluster.images import SHOAL_IMAGE
from tests.cluster.kind import network_gateway
from tests.cluster.postgres import PostgresServer, free_port
from tests.cluster.setup import open_cluster
from tests.operator.harness import install_crds
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "fleet"
GROUP, VERSION = "shoal.dev", "v1alpha1"
ACCOUNT, ACCOUNT_NS = "shoal-bench-operator", "shoal-bench"
BURST = 4  # tasks per pool and burst: 2 replicas at concurrency 2
# Fragments only the backlog statements have (pg_stat_statements replaces constants).
BACKLOG_FRAGMENTS = ("unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY",
                     "AND t.tags <@ $2::text[]")
STATEMENTS = ("SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(calls) FILTER (WHERE "
              + " OR ".join(f"strpos(query, ${i + 2}) > 0" for i in range(len(BACKLOG_FRAGMENTS)))
              + "), 0)::bigint FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
              " WHERE datname = $1)")


@dataclass
class Stage:
    """What one variant measured at one number of pools (and Workflows)."""

    pools: int
    workflows: int
    restarted: bool = False  # measured after a restart of the operator, everything in place
    reconcile_ms: list[float] = field(default_factory=list)
    scale_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0
    cpu_share: float = 0.0
    rss_mib: float = 0.0
    api_per_s: float = 0.0
    db_per_s: float = 0.0
    backlog_per_round: float = 0.0
    own_requests: dict[str, float] = field(default_factory=dict)  # per second, in the window


@dataclass
class Variant:
    """One operator under test: its code, namespaces and database."""

    label: str
    src: Path | None  # None: this checkout
    prefix: str
    database: str
    stages: list[Stage] = field(default_factory=list)
    workflows: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    commit: str = ""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def commit_of(src: Path) -> str:
    found = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "operator",
                            "worker"], capture_output=True, text=True).stdout.strip()
    return found.stdout.strip() + ("+changes" if dirty else "")


class Operator:
    """`shoal operator` of one checkout, as a process on this host."""

    def __init__(self, src: Path, kubeconfig: Path, prefix: str, log: Path,
                 recheck: float) -> None:
        self.src = src
        self.log = log
        self.liveness = free_port()
        self.metrics_port = free_port()
        env = os.environ | {"KUBECONFIG": str(kubeconfig),
                            "PYTHONPATH": f"{src / 'worker'}{os.pathsep}{src / 'operator'}"}
        argv = [sys.executable, "-c", "import sys; from shoal.cli import main; sys.exit(main())",
                "operator", "--namespace", f"{prefix}-*", "--liveness-port", str(self.liveness),
                "--metrics-port", str(self.metrics_port), "--recheck-interval", str(recheck)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=src)
        wait_for(self.ready, 90, "the operator's /readyz")
        self.peak_rss = 0.0

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}: see {self.log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness}/readyz",
                                        timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def requests(self) -> dict[str, float]:
        """The operator's own counts: its client's API requests by verb and resource
        (this branch's operator only) and the status sync's Workflow patches by kind."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        counts: dict[str, float] = {}
        for m in re.finditer(r'^shoal_operator_api_requests_total\{resource="([^"]*)",'
                             r'verb="([^"]*)"\} (\S+)$', text, re.MULTILINE):
            counts[f"{m.group(2)} {m.group(1)}"] = float(m.group(3))
        for m in re.finditer(r'^shoal_workflow_patches_total\{kind="([^"]*)"\} (\S+)$', text,
                             re.MULTILINE):
            counts[f"workflow {m.group(1)} patches"] = float(m.group(2))
        return counts

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds([self.pid])

    def rss(self) -> float:
        value = rss_mib(self.pid)
        self.peak_rss = max(self.peak_rss, value)
        return value

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ClusterView:
    """What the bench sees of the cluster through two watches: each pool's first status
    and each pool Deployment's replica count, with the time each was seen."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.first_status: dict[tuple[str, str], float] = {}
        self.replicas: dict[tuple[str, str], int] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(self._pools(), self._deployments())

    async def _stream(self, list_fn: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        while True:
            with contextlib.suppress(asyncio.TimeoutError, client.ApiException):
                async with watch.Watch().stream(list_fn, *args, timeout_seconds=600,
                                                **kwargs) as stream:
                    async for event in stream:
                        yield event

    async def _pools(self) -> None:
        objects = client.CustomObjectsApi(self.api)
        async for event in self._stream(objects.list_cluster_custom_object, GROUP, VERSION,
                                        "workerpools"):
            obj = event["object"]
            meta = obj["metadata"]
            key = (meta["namespace"], meta["name"])
            if key not in self.first_status and "observedGeneration" in (obj.get("status")
                                                                          or {}):
                self.first_status[key] = time.monotonic()
                self.changed.set()

    async def _deployments(self) -> None:
        apps = client.AppsV1Api(self.api)
        async for event in self._stream(apps.list_deployment_for_all_namespaces,
                                        label_selector="app.kubernetes.io/managed-by="
                                                       "shoal-operator"):
            dep = event["object"]
            key = (dep.metadata.namespace, dep.metadata.name)
            self.replicas[key] = int(dep.spec.replicas or 0)
            self.changed.set()

    async def until(self, check: Callable[[], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not check():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True


def pool_manifest(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "app": "examples/tasks.py:app",
            "template": {"image": SHOAL_IMAGE, "imagePullPolicy": "Never",
                         "nodeSelector": {"shoal.dev/bench": "nowhere"}},
            "database": {"secretRef": {"name": "pg"}},
            "tasks": {"namespace": f"{namespace}-{name}"},
            "concurrency": 2,
            "scaling": {"minReplicas": 0, "maxReplicas": 4, "scaleDownStabilization": "5s",
                        "scaleUp": {"pods": 4, "period": "1s"}},
        },
    }


def workflow_manifest(namespace: str, name: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Workflow",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"pause": "true"}},
        "spec": {"poolRef": pool, "steps": [{"name": "a", "task": "noop"}]},
    }


def apf_requests(kube: KubeAccess) -> float:
    """Requests the API server dispatched for the operator's ServiceAccount so far."""
    text = kube.kubectl("get", "--raw", "/metrics", check=True).stdout
    return sum(float(m.group(1)) for m in re.finditer(
        r'^apiserver_flowcontrol_dispatched_requests_total\{[^}]*flow_schema="'
        + ACCOUNT + r'"[^}]*\} (\S+)$', text, re.MULTILINE))


def operator_identity(kube: KubeAccess, tmp: Path) -> Path:
    """A kubeconfig of the operator's own ServiceAccount, and the FlowSchema that counts it."""
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ACCOUNT_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": ACCOUNT, "namespace": ACCOUNT_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": ACCOUNT},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ACCOUNT_NS}]},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
         "metadata": {"name": ACCOUNT},
         "spec": {"priorityLevelConfiguration": {"name": "workload-high"},
                  "matchingPrecedence": 500, "distinguisherMethod": {"type": "ByUser"},
                  "rules": [{"subjects": [{"kind": "ServiceAccount", "serviceAccount": {
                      "name": ACCOUNT, "namespace": ACCOUNT_NS}}],
                      "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"],
                                         "resources": ["*"], "clusterScope": True,
                                         "namespaces": ["*"]}],
                      "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
    ]
    for obj in objects:
        kube.kubectl("apply", "-f", "-", input=json.dumps(obj), check=True)
    token = kube.kubectl("create", "token", ACCOUNT, "-n", ACCOUNT_NS, "--duration=12h",
                         check=True).stdout.strip()
    return kube.token_kubeconfig(token, tmp / "operator-kubeconfig")


class Bench:
    """One run: the cluster, the Postgres server and the variants, one after the other."""

    def __init__(self, args: argparse.Namespace, kube: KubeAccess, pg: PostgresServer,
                 tmp: Path) -> None:
        self.args = args
        self.kube = kube
        self.pg = pg
        self.tmp = tmp
        self.kubeconfig = operator_identity(kube, tmp)

    async def run(self, variants: list[Variant]) -> None:
        await config.load_kube_config(config_file=str(self.kube.kubeconfig))
        api = client.ApiClient()
        self.k = Kube(api)
        self.view = ClusterView(api)
        watcher = asyncio.create_task(self.view.run())
        try:
            for variant in variants:
                await self.variant(variant)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await api.close()

    def namespaces(self, variant: Variant) -> list[str]:
        return [f"{variant.prefix}-{i}" for i in range(self.args.namespaces)]

    async def variant(self, variant: Variant) -> None:
        args = self.args
        dsn = self.pg.create_database(variant.database)
        backend = await Backend.connect(dsn)
        await backend.migrate()
        await backend.pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        pod_dsn = self.pg.dsn_for(variant.database, host=network_gateway())
        for ns in self.namespaces(variant):
            self.kube.kubectl("create", "namespace", ns, check=True)
            self.kube.kubectl("create", "secret", "generic", "pg", "-n", ns,
                              f"--from-literal=dsn={pod_dsn}", check=True)
        src = variant.src or REPO
        variant.commit = commit_of(src)
        print(f"\n== {variant.label}: operator of {src} ({variant.commit}), namespaces "
              f"{variant.prefix}-*, database {variant.database}", flush=True)
        operator = self.operator = Operator(src, self.kubeconfig, variant.prefix,
                                            self.tmp / f"operator-{variant.label}.log",
                                            args.recheck)
        pools: list[tuple[str, str]] = []
        burst: set[tuple[str, str]] = set()
        try:
            for step in args.steps:
                stage = Stage(pools=step, workflows=0)
                new = [(self.namespaces(variant)[i % args.namespaces], f"pool-{i:03d}")
                       for i in range(len(pools), step)]
                stage.reconcile_ms = await self.create_pools(new)
                pools += new
                await self.window(stage, operator, backend, variant)
                stage.scale_ms = await self.bursts(pools, burst, backend)
                variant.stages.append(stage)
                self.report(variant.label, stage)
            stage = Stage(pools=len(pools), workflows=args.workflows)
            variant.workflows = await self.create_workflows(variant, pools, backend)
            await self.window(stage, operator, backend, variant)
            stage.scale_ms = await self.bursts(pools, burst, backend)
            variant.stages.append(stage)
            self.report(variant.label, stage)
            variant.peak_rss_mib = operator.peak_rss
            operator.stop()
            operator = self.operator = Operator(
                src, self.kubeconfig, variant.prefix,
                self.tmp / f"operator-{variant.label}-restarted.log", args.recheck)
            await asyncio.sleep(args.restart_settle)
            stage = Stage(pools=len(pools), workflows=args.workflows, restarted=True)
            await self.window(stage, operator, backend, variant)
            variant.stages.append(stage)
            self.report(variant.label, stage)
        finally:
            operator.rss()
            variant.peak_rss_mib = max(variant.peak_rss_mib, operator.peak_rss)
            operator.stop()
            await backend.close()

    async def create_pools(self, new: list[tuple[str, str]]) -> list[float]:
        limit = asyncio.Semaphore(10)
        created: dict[tuple[str, str], float] = {}

        async def create(ns: str, name: str) -> None:
            async with limit:
                await self.k.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workerpools",
                                    pool_manifest(ns, name))
                created[(ns, name)] = time.monotonic()

        await asyncio.gather(*(create(*p) for p in new))
        done = await self.view.until(lambda: all(p in self.view.first_status for p in new),
                                     within=300)
        if not done:
            print(f"  {sum(p not in self.view.first_status for p in new)} pools never got "
                  "a status", flush=True)
        return [(self.view.first_status[p] - created[p]) * 1000 for p in new
                if p in self.view.first_status]

    async def window(self, stage: Stage, operator: Operator, backend: Backend,
                     variant: Variant) -> None:
        """The idle costs: CPU, RSS, API requests and statements over `--window` seconds."""
        await asyncio.sleep(self.args.settle)
        fragments = BACKLOG_FRAGMENTS
        cpu0, api0, own0 = operator.cpu(), apf_requests(self.kube), operator.requests()
        db0 = await backend.pool.fetchrow(STATEMENTS, variant.database, *fragments)
        t0 = time.monotonic()
        await asyncio.sleep(self.args.window)
        elapsed = time.monotonic() - t0
        cpu1, api1, own1 = operator.cpu(), apf_requests(self.kube), operator.requests()
        db1 = await backend.pool.fetchrow(STATEMENTS, variant.database, *fragments)
        stage.window_s = elapsed
        stage.cpu_share = (cpu1 - cpu0) / elapsed
        stage.rss_mib = operator.rss()
        stage.api_per_s = (api1 - api0) / elapsed
        stage.db_per_s = (db1[0] - db0[0]) / elapsed
        stage.backlog_per_round = (db1[1] - db0[1]) / (elapsed / self.args.recheck)
        stage.own_requests = {k: round((v - own0.get(k, 0)) / elapsed, 2)
                              for k, v in own1.items() if v > own0.get(k, 0)}

    async def bursts(self, pools: list[tuple[str, str]], burst: set[tuple[str, str]],
                     backend: Backend) -> list[float]:
        """Scale latency: BURST tasks to `--burst-pools` pools at once, `--bursts` pools in all."""
        fresh = [p for p in pools if p not in burst][:self.args.bursts]
        latencies: list[float] = []
        for start in range(0, len(fresh), self.args.burst_pools):
            group = fresh[start:start + self.args.burst_pools]
            burst.update(group)
            before = {p: self.view.replicas.get(p, 0) for p in group}
            seen: dict[tuple[str, str], float] = {}
            t0 = time.monotonic()
            ids = await backend.enqueue([NewTask("noop", None, namespace=f"{ns}-{name}")
                                         for ns, name in group for _ in range(BURST)])

            def scaled(group: list[tuple[str, str]] = group,
                       before: dict[tuple[str, str], int] = before,
                       seen: dict[tuple[str, str], float] = seen) -> bool:
                for p in group:
                    if p not in seen and self.view.replicas.get(p, 0) != before[p]:
                        seen[p] = time.monotonic()
                return len(seen) == len(group)

            if not await self.view.until(scaled, within=60):
                print(f"  {len(group) - len(seen)} pools did not scale within 60 s", flush=True)
            latencies += [(seen[p] - t0) * 1000 for p in group if p in seen]
            for task_id in ids:
                await backend.cancel_task(task_id, actor="bench")
            await asyncio.sleep(1)
        # Back to zero before the next idle window: its figures are the idle operator's.
        if not await self.view.until(lambda: all(self.view.replicas.get(p, 0) == 0
                                                 for p in fresh), within=120):
            print("  some pools did not scale back to 0 within 120 s", flush=True)
        return latencies

    async def create_workflows(self, variant: Variant, pools: list[tuple[str, str]],
                               backend: Backend) -> dict[str, float]:
        """`--workflows` paused Workflows over the pools: creation, submission, phase labels."""
        n = self.args.workflows
        by_ns: dict[str, list[str]] = {}
        for ns, name in pools:
            by_ns.setdefault(ns, []).append(name)
        namespaces = sorted(by_ns)
        limit = asyncio.Semaphore(20)

        async def create(i: int) -> None:
            ns = namespaces[i % len(namespaces)]
            pool = by_ns[ns][(i // len(namespaces)) % len(by_ns[ns])]
            async with limit:
                await self.k.create(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workflows",
                                    workflow_manifest(ns, f"wf-{i:05d}", pool))

        print(f"  creating {n} Workflows ...", flush=True)
        t0 = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(n)))
        result = {"created_s": time.monotonic() - t0}
        print(f"  created in {result['created_s']:.1f} s", flush=True)
        deadline = t0 + self.args.workflow_timeout
        async def in_backend() -> int:
            return int(await backend.pool.fetchval(
                f"SELECT count(*) FROM {backend.schema}.workflows"))

        submitted = await self.count_until(in_backend, n, deadline, every=2)
        result["submitted"] = submitted
        result["submitted_s"] = time.monotonic() - t0
        print(f"  {submitted} submitted after {result['submitted_s']:.1f} s", flush=True)
        labelled = await self.count_until(lambda: self.labelled(namespaces), n, deadline,
                                          every=10)
        result["labelled"] = labelled
        result["labelled_s"] = time.monotonic() - t0
        print(f"  {labelled} labelled Paused after {result['labelled_s']:.1f} s", flush=True)
        return result

    async def count_until(self, count: Callable[[], Awaitable[int]], n: int, deadline: float,
                          every: float) -> int:
        """`count()` every `every` seconds (sampling the operator's RSS) until it reaches
        `n` or `deadline` (monotonic) passes; its last value."""
        counted = 0
        while time.monotonic() < deadline:
            counted = await count()
            self.operator.rss()
            if counted >= n:
                break
            await asyncio.sleep(every)
        return counted

    async def labelled(self, namespaces: list[str]) -> int:
        total = 0
        for ns in namespaces:
            token = ""
            while True:
                query = {"labelSelector": "shoal.dev/phase=Paused", "limit": "2000"}
                if token:
                    query["continue"] = token
                try:
                    page = await self.k.get(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workflows",
                                            query)
                except KubeError:
                    break
                total += len(page.get("items") or [])
                token = (page.get("metadata") or {}).get("continue") or ""
                if not token:
                    break
        return total

    @staticmethod
    def report(label: str, s: Stage) -> None:
        print(f"  [{label}] {row(s)}", flush=True)
        if s.own_requests:
            print(f"    per second, as the operator counts them: {s.own_requests}", flush=True)


def pct(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "-"


HEADER = ("pools | workflows | reconcile p50/p99 ms | scale p50/p99 ms | CPU % of a core | "
          "RSS MiB | API req/s | DB statements/s | backlog statements per round")


def row(s: Stage) -> str:
    workflows = f"{s.workflows} (restarted)" if s.restarted else str(s.workflows)
    return (f"{s.pools} | {workflows} | {pct(s.reconcile_ms, 50)} / {pct(s.reconcile_ms, 99)}"
            f" | {pct(s.scale_ms, 50)} / {pct(s.scale_ms, 99)} | {s.cpu_share * 100:.1f} | "
            f"{s.rss_mib:.0f} | {s.api_per_s:.1f} | {s.db_per_s:.1f} | "
            f"{s.backlog_per_round:.1f}")


def table(variants: list[Variant], args: argparse.Namespace, command: str) -> str:
    lines = [f"$ {command}", "",
             f"{args.namespaces} namespaces, one database per operator on one Postgres "
             f"server; re-check interval {args.recheck:g} s; idle windows of {args.window:g} s;"
             f" scale latency: {BURST} tasks to {args.burst_pools} pools at once, up to "
             f"{args.bursts} pools per step. The operator runs out of the cluster (a process "
             "on this host against kind's API server).", ""]
    for v in variants:
        lines += [f"{v.label}: {v.commit} (peak RSS {v.peak_rss_mib:.0f} MiB)", HEADER,
                  "|".join("---" for _ in HEADER.split("|"))]
        lines += [row(s) for s in v.stages]
        w = v.workflows
        if w:
            lines.append(f"{args.workflows} Workflows: created in {w['created_s']:.0f} s; "
                         f"{w['submitted']:.0f} in the backend after {w['submitted_s']:.0f} s; "
                         f"{w['labelled']:.0f} labelled Paused after {w['labelled_s']:.0f} s")
        lines.append("")
    return "\n".join(lines)


def plot(variants: list[Variant], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels: list[tuple[Any, str, list[tuple[str, Callable[[Stage], float]]]]] = [
        (axes[0][0], "latency p99 (ms)",
         [("reconcile", lambda s: percentile(s.reconcile_ms, 99) if s.reconcile_ms else 0),
          ("scale", lambda s: percentile(s.scale_ms, 99) if s.scale_ms else 0)]),
        (axes[0][1], "operator CPU (% of a core)", [("CPU", lambda s: s.cpu_share * 100)]),
        (axes[1][0], "operator RSS (MiB)", [("RSS", lambda s: s.rss_mib)]),
        (axes[1][1], "per second", [("API requests", lambda s: s.api_per_s),
                                    ("DB statements", lambda s: s.db_per_s)]),
    ]
    for ax, title, series in panels:
        for v in variants:
            stages = [s for s in v.stages if not s.workflows]
            for name, value in series:
                ax.plot([s.pools for s in stages], [value(s) for s in stages], marker="o",
                        label=f"{v.label} {name}" if len(series) > 1 else v.label)
        ax.set_title(title)
        ax.set_xlabel("WorkerPools on one database")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Shoal operator at scale (bench.operator_scale; without Workflows)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    settings = {"shared_preload_libraries": "pg_stat_statements"}
    with PostgresServer(settings=settings, max_connections=200) as pg:
        yield pg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None, metavar="PATH",
                        help="also measure the operator of this checkout, first")
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")],
                        default=[10, 50, 100, 200], help="pool counts (default 10,50,100,200)")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=20000)
    parser.add_argument("--window", type=float, default=30.0, help="idle window, seconds")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--recheck", type=float, default=10.0,
                        help="the operators' --recheck-interval (default 10, its default)")
    parser.add_argument("--bursts", type=int, default=20, help="pools burst per step")
    parser.add_argument("--burst-pools", type=int, default=5, help="pools burst at once")
    parser.add_argument("--workflow-timeout", type=float, default=1500.0)
    parser.add_argument("--restart-settle", type=float, default=60.0,
                        help="after the Workflows, the operator is restarted; its idle window "
                             "starts this many seconds later")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 2 namespaces, 4 and 8 pools, 100 Workflows, short windows")
    parser.add_argument("--out", type=Path, default=None,
                        help="where operator.{txt,json,png} go (default docs/fleet; with "
                             "--quick a temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.namespaces, args.workflows = [4, 8], 2, 100
        args.window, args.settle, args.bursts, args.burst_pools = 10.0, 2.0, 4, 2
        args.restart_settle = 10.0
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="shoal-opscale-out-")) if args.quick else OUT
    command = "python -m bench.operator_scale " + " ".join(sys.argv[1:])
    run = uuid.uuid4().hex[:4]  # a reused cluster keeps an earlier run's namespaces
    variants = []
    if args.before is not None:
        variants.append(Variant("before", args.before.resolve(), f"opscale-{run}-before",
                                "opscale_before"))
    variants.append(Variant("after", None, f"opscale-{run}-after", "opscale_after"))
    with (
        tempfile.TemporaryDirectory(prefix="shoal-opscale-") as tmp,
        open_cluster(Path(tmp), name="shoal-bench", nodes=1) as kube,
        postgres() as pg,
    ):
        install_crds(kube)
        bench = Bench(args, kube, pg, Path(tmp))
        try:
            asyncio.run(bench.run(variants))
        finally:
            text = table(variants, args, command)
            print("\n" + text)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "operator.txt").write_text(text)
            print(f"written to {args.out}")
            (args.out / "operator.json").write_text(json.dumps(
                {"command": command, "variants": [asdict(v) | {"src": str(v.src or REPO)}
                                                  for v in variants]}, indent=1))
            if any(v.stages for v in variants):
                plot(variants, args.out / "operator.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
