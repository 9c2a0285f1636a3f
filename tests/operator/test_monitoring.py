"""The chart's monitoring: every metric its alert rules and its Grafana dashboard query
is in the /metrics of a real worker or of the real operator (with a pool and a
workflow to report on), and `promtool check rules` accepts the rules."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shoal import Client
from shoal.backend import Backend, NewTask
from tests.cluster.access import KubeAccess
from tests.cluster.postgres import free_port
from tests.cluster.tools import PROMTOOL
from tests.operator.harness import OperatorProcess, apply, create_secret, pool
from tests.support import Spawner, eventually, spawn, wait_for

pytestmark = pytest.mark.kube
__all__ = ["spawn"]  # a fixture: `shoal worker` processes

CHART = Path(__file__).resolve().parents[2] / "charts" / "shoal"
MONITORING = ("metrics.podMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
              "metrics.grafanaDashboard.enabled=true", "metrics.serviceMonitor.enabled=true")
# Series names in PromQL: Shoal's own, and the process and Python collectors'.
METRIC = re.compile(r"\b(?:shoal|process|python)_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "info": ("_info",), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count")}


def render(kube: KubeAccess) -> list[dict[str, Any]]:
    args = [a for v in MONITORING for a in ("--set", v)]
    text = kube.helm("template", "shoal", str(CHART), "-n", "shoal-system", *args,
                     check=True).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def queried(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Metric name -> where it is queried (alert names, dashboard panel titles)."""
    found: dict[str, set[str]] = {}
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            for name in METRIC.findall(r["expr"]):
                found.setdefault(name, set()).add(f"alert {r['alert']}")
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    dashboard = json.loads(config_map["data"]["shoal.json"])
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            for name in METRIC.findall(target["expr"]):
                found.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for variable in dashboard["templating"]["list"]:
        for name in METRIC.findall(variable.get("definition", "")):
            found.setdefault(name, set()).add(f"variable {variable['name']}")
    return found


def exported(text: str) -> tuple[set[str], set[str]]:
    """(series names a /metrics page declares, series names with samples on it)."""
    declared, sampled = set(), set()
    for family in text_string_to_metric_families(text):
        declared |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        sampled |= {s.name for s in family.samples}
    return declared | sampled, sampled


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def test_every_queried_metric_is_exported(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend, operator_db: str, spawn: Spawner) -> None:
    wanted = queried(render(kube))
    assert {"shoal_workerpool_oldest_ready_age_seconds", "shoal_leases_lost_total",
            "shoal_workflows", "process_cpu_seconds_total"} <= wanted.keys()

    # The operator reports on a paused pool (no pods) with a task waiting, and a workflow.
    create_secret(kube, namespace, pod_dsn)
    paused = pool("watched", namespace, minReplicas=0)
    paused["metadata"]["annotations"] = {"pause": "true"}
    apply(kube, paused)
    await backend.enqueue([NewTask("echo", 1, namespace=namespace)])
    apply(kube, {"apiVersion": "shoal.dev/v1alpha1", "kind": "Workflow",
                 "metadata": {"name": "wf", "namespace": namespace},
                 "spec": {"poolRef": "watched", "steps": [{"name": "a", "task": "echo"}]}})

    def operator_reports() -> str | None:
        text = shoal_operator.metrics()
        ready = f'shoal_workerpool_tasks{{namespace="{namespace}",pool="watched",state="ready"'
        has_workflow = f'shoal_workflows{{namespace="{namespace}",phase="Running"}} 1.0'
        return text if ready in text and has_workflow in text else None

    operator_text = wait_for(operator_reports, 60, "the operator's per-task and workflow series")

    # A worker that ran a task (so its histograms have samples).
    port = free_port()
    worker = await spawn.worker(operator_db, "--metrics-port", str(port),
                                "--metrics-host", "127.0.0.1", "--namespace", "elsewhere")
    task_id = await Client(backend, namespace="elsewhere").enqueue("echo", 2)
    await eventually(lambda: _succeeded(backend, task_id), what="the worker to run the task")
    worker_text = await asyncio.to_thread(scrape, port)
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0

    declared_w, sampled_w = exported(worker_text)
    declared_o, sampled_o = exported(operator_text)
    missing = {name: sorted(where) for name, where in wanted.items()
               if name not in declared_w | declared_o}
    assert not missing, f"queried but exported by neither process: {missing}"
    # The series the dashboard's queue and capacity panels stand on have samples.
    assert {"shoal_workerpool_tasks", "shoal_workerpool_oldest_ready_age_seconds",
            "shoal_workerpool_desired_replicas", "shoal_workerpool_max_replicas",
            "shoal_workerpool_backlog", "shoal_workflows"} <= sampled_o
    assert {"shoal_tasks_finished_total", "shoal_claim_latency_seconds_bucket",
            "shoal_task_duration_seconds_bucket", "shoal_tasks_in_flight",
            "shoal_worker_build_info", "process_cpu_seconds_total",
            "process_resident_memory_bytes"} <= sampled_w


async def _succeeded(backend: Backend, task_id: int) -> bool:
    return (await backend.get_task(task_id)).state == "succeeded"


def test_promtool_accepts_the_rules(kube: KubeAccess, tmp_path: Path) -> None:
    [rule] = [d for d in render(kube) if d["kind"] == "PrometheusRule"]
    rules = tmp_path / "shoal-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([str(PROMTOOL.ensure()), "check", "rules", str(rules)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr
