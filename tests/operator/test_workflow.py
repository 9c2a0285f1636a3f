"""Workflow CRs end to end: real API server, real Postgres, real `shoal worker` processes.

The operator runs as `shoal operator` (the session fixture); workers of the demo
app (`examples/tasks.py:app`) run as plain subprocesses serving the pool's task
namespace. The tests read the backend through `Backend` to check what really
happened (instances, step states, recorded commands), and the CRs through kubectl.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from shoal.backend import Backend, WorkflowStatus
from tests.cluster.access import KubeAccess
from tests.cluster.kstatus import kstatus
from tests.operator.harness import (
    VENV_BIN,
    OperatorProcess,
    apply,
    condition,
    events_for,
)
from tests.support import eventually, wait_for

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
NS = f"wf-e2e-{uuid.uuid4().hex[:6]}"
POOL = "demo"
TASK_NS = f"{NS}-tasks"


@pytest.fixture(scope="module")
def pool(kube: KubeAccess, operator_db: str, shoal_operator: OperatorProcess) -> Iterator[str]:
    """Namespace, database Secret and a WorkerPool (manual, 0 replicas: workers run below).

    The namespace is deleted while the operator still runs, so finalizers are honoured.
    """
    kube.kubectl("create", "namespace", NS)
    apply(kube, {"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "db", "namespace": NS},
                 "stringData": {"dsn": operator_db}})
    apply(kube, {"apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool",
                 "metadata": {"name": POOL, "namespace": NS},
                 "spec": {"app": "examples/tasks.py:app", "template": {"image": "shoal:dev"},
                          "database": {"secretRef": {"name": "db"}},
                          "tasks": {"namespace": TASK_NS},
                          "replicas": 0, "scaling": {"mode": "manual"}}})
    yield POOL
    result = kube.kubectl("delete", "namespace", NS, "--timeout=120s")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def workers(operator_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Two `shoal worker` processes of the demo app on the pool's task namespace.

    Their heartbeat comes every 30 s (claim TTL 60 s), so a running step that
    stops within seconds of a cancel was told by the cancel's NOTIFY.
    """
    log = tmp_path_factory.mktemp("workers") / "workers.log"
    procs = []
    with log.open("ab") as out:
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(VENV_BIN / "shoal"), "worker", "--app", "examples/tasks.py:app",
                 "--dsn", operator_db, "--namespace", TASK_NS, "--concurrency", "4",
                 "--metrics-port", "0", "--claim-ttl", "60s", "--worker-id", f"e2e-{i}"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
    yield
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def workflow(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"poolRef": POOL, "steps": steps, **spec}}


def get_wf(kube: KubeAccess, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = kube.get_json("workflows.shoal.dev", name, "-n", NS)
    return found


def wait_phase(kube: KubeAccess, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_wf(kube, name)
        return obj if obj and (obj.get("status") or {}).get("phase") == phase else None
    return wait_for(check, timeout, f"Workflow {name} to be {phase}")


def annotate(kube: KubeAccess, name: str, *pairs: str) -> None:
    result = kube.kubectl("annotate", "workflows.shoal.dev", name, "-n", NS, "--overwrite", *pairs)
    assert result.returncode == 0, result.stderr


async def instance(backend: Backend, kube: KubeAccess, name: str) -> UUID:
    obj = get_wf(kube, name)
    assert obj is not None
    found = await backend.workflow_id_by_key(obj["metadata"]["uid"])
    assert found is not None, f"no backend instance for {name}"
    return found


async def wait_backend(backend: Backend, workflow_id: UUID, what: str, check: Any,
                       within: float = 20) -> WorkflowStatus:
    """The instance's status once `check` holds for it."""
    async def status() -> WorkflowStatus | None:
        found = await backend.workflow_status(workflow_id)
        return found if check(found) else None

    found: WorkflowStatus = await eventually(status, within=within, what=what)
    return found


def step_state(status: WorkflowStatus, name: str) -> str:
    return next(s.state for s in status.steps if s.name == name)


async def start_long_step(kube: KubeAccess, backend: Backend, name: str, seconds: float,
                          *then: dict[str, Any]) -> UUID:
    """Workflow `name`: a step `long` sleeping `seconds`, then `then`; returns once `long` runs."""
    apply(kube, workflow(name, [
        {"name": "long", "task": "sleep", "input": {"seconds": seconds}}, *then]))
    wait_phase(kube, name, "Running")
    wid = await instance(backend, kube, name)
    await wait_backend(backend, wid, "step long running",
                       lambda s: step_state(s, "long") == "running")
    return wid


async def test_three_steps_succeed_with_outputs_flowing(kube: KubeAccess, pool: str,
                                                        workers: None, backend: Backend,
                                                        shoal_operator: OperatorProcess):
    apply(kube, workflow("chain", [
        {"name": "a", "task": "echo", "input": {"n": "${workflow.input.n}"}},
        {"name": "b", "task": "echo", "dependsOn": ["a"], "input": {"m": "${steps.a.output.n}"}},
        {"name": "c", "task": "echo", "dependsOn": ["b"],
         "input": {"text": "got ${steps.b.output.m} from ${steps.a.output.n}"}},
    ], input={"n": 42}))
    obj = wait_phase(kube, "chain", "Succeeded")
    status = obj["status"]
    assert status["progress"] == "3/3"
    assert json.loads(status["output"]) == {"text": "got 42 from 42"}
    assert [s["state"] for s in status["steps"]] == ["succeeded"] * 3
    assert status["finishedAt"] >= status["startedAt"]
    assert (condition(obj, "Complete")["status"], condition(obj, "Complete")["reason"]) == (
        "True", "Succeeded")
    assert condition(obj, "Failed")["status"] == "False"
    assert condition(obj, "Accepted")["status"] == "True"
    assert obj["metadata"]["labels"]["shoal.dev/phase"] == "Succeeded"
    # The phase label is the operator's output, not a change kopf must record (and patch).
    handled = [v for k, v in obj["metadata"]["annotations"].items()
               if k.endswith("last-handled-configuration")]
    assert handled and "shoal.dev/phase" not in handled[0]
    assert status["workflowId"] == str(await instance(backend, kube, "chain"))
    table = kube.kubectl("get", "workflows", "-n", NS, "chain").stdout
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "PROGRESS", "PAUSED", "AGE"]
    assert table.split("\n")[1].split()[:4] == ["chain", "Succeeded", "3/3", "false"]
    wide = kube.kubectl("get", "shwf", "-n", NS, "chain", "-o", "wide").stdout
    assert "MESSAGE" in wide and "POOL" in wide
    # `wf` is Argo Workflows' short name, no longer Shoal's.
    assert "doesn't have a resource type" in kube.kubectl("get", "wf", "-n", NS).stderr
    selected = kube.kubectl("get", "shoal", "-n", NS, "-l", "shoal.dev/phase=Succeeded",
                            "-o", "name").stdout
    assert "workflow.shoal.dev/chain" in selected
    metrics = shoal_operator.metrics()
    assert 'shoal_workflow_patches_total{kind="status"}' in metrics
    assert "shoal_workflows_tracked" in metrics


def kubectl_wait(kube: KubeAccess, condition_: str, name: str, timeout: str
                 ) -> subprocess.CompletedProcess[str]:
    return kube.kubectl("wait", f"--for=condition={condition_}", f"--timeout={timeout}",
                        f"workflows.shoal.dev/{name}", "-n", NS)


async def test_kubectl_wait_and_kstatus_read_success_failure_and_cancel(
        kube: KubeAccess, pool: str, workers: None, backend: Backend):
    """Complete only on success, Failed on failure and cancel: a script waiting for
    success stops waiting; kstatus reads Current, Failed, Failed."""
    apply(kube, workflow("goes-well", [{"name": "a", "task": "echo", "input": {"x": 1}}]))
    apply(kube, workflow("goes-wrong", [{"name": "a", "task": "fail", "input": "boom"}]))
    await start_long_step(kube, backend, "goes-away", 120)
    [running] = kstatus([get_wf(kube, "goes-away")])
    assert running["status"] == "InProgress", running
    annotate(kube, "goes-away", "cancel=true")

    waited = kubectl_wait(kube, "Complete", "goes-well", "60s")
    assert waited.returncode == 0, waited.stderr
    for name in ("goes-wrong", "goes-away"):
        failed = kubectl_wait(kube, "Failed", name, "60s")
        assert failed.returncode == 0, (name, failed.stderr)
        never = kubectl_wait(kube, "Complete", name, "2s")
        assert never.returncode != 0 and "timed out" in never.stderr, (name, never)
    objects = [get_wf(kube, n) for n in ("goes-well", "goes-wrong", "goes-away")]
    assert [o["status"]["phase"] for o in objects] == ["Succeeded", "Failed", "Cancelled"]
    assert [condition(o, "Failed")["reason"] for o in objects] == [
        "Succeeded", "Failed", "Cancelled"]
    assert [r["status"] for r in kstatus(objects)] == ["Current", "Failed", "Failed"]
    assert all(o["status"]["observedGeneration"] == o["metadata"]["generation"]
               for o in objects)


async def test_pause_stops_new_steps_and_resume_continues(kube: KubeAccess, pool: str,
                                                          workers: None, backend: Backend):
    wid = await start_long_step(kube, backend, "pausable", 2,
                                {"name": "next", "task": "noop", "dependsOn": ["long"]})
    t0 = time.monotonic()
    annotate(kube, "pausable", "pause=true")
    await wait_backend(backend, wid, "paused", lambda s: s.state == "paused", within=5)
    paused_after = time.monotonic() - t0
    assert paused_after < 1.0, f"paused after {paused_after:.2f}s"
    # The running step finishes; the next one does not start while paused.
    await wait_backend(backend, wid, "long succeeded",
                       lambda s: step_state(s, "long") == "succeeded", within=10)
    await asyncio.sleep(1.5)
    status = await backend.workflow_status(wid)
    assert status.state == "paused"
    assert next(s for s in status.steps if s.name == "next").attempts == 0
    obj = wait_phase(kube, "pausable", "Paused")
    assert obj["status"]["paused"] is True
    assert condition(obj, "Paused")["status"] == "True"
    ack = obj["status"]["commands"][-1]
    assert ack["command"] == "pause" and ack["applied"] is True
    assert ack["by"].startswith("kubectl-annotate (pause=true)")
    annotate(kube, "pausable", "pause=false")
    obj = wait_phase(kube, "pausable", "Succeeded")
    assert [c["command"] for c in obj["status"]["commands"]] == ["pause", "resume"]


async def test_created_with_pause_starts_nothing_until_resumed(
        kube: KubeAccess, pool: str, workers: None, backend: Backend):
    manifest = workflow("born-paused", [{"name": "a", "task": "noop"}])
    manifest["metadata"]["annotations"] = {"shoal.dev/pause": "true"}
    apply(kube, manifest)
    obj = wait_phase(kube, "born-paused", "Paused")
    assert obj["metadata"]["labels"]["shoal.dev/phase"] == "Paused"
    wid = await instance(backend, kube, "born-paused")
    await asyncio.sleep(1.0)
    status = await backend.workflow_status(wid)
    assert status.state == "paused" and status.steps[0].attempts == 0
    # The annotation's pause is acknowledged, as already satisfied.
    assert [(c.command, c.applied) for c in status.commands] == [("pause", False)]
    annotate(kube, "born-paused", "shoal.dev/pause=false")
    wait_phase(kube, "born-paused", "Succeeded")


async def test_cancel_stops_a_long_step_cooperatively(kube: KubeAccess, pool: str,
                                                      workers: None, backend: Backend):
    wid = await start_long_step(kube, backend, "cancellable", 120,
                                {"name": "after", "task": "noop", "dependsOn": ["long"]})
    annotate(kube, "cancellable", "shoal.dev/cancel=true")
    # Within 3 s: the cancel's NOTIFY, not the next heartbeat (30 s away), told the worker.
    await wait_backend(backend, wid, "the running step cancelled",
                       lambda s: step_state(s, "long") == "cancelled", within=3)
    obj = wait_phase(kube, "cancellable", "Cancelled", timeout=20)
    assert [s["state"] for s in obj["status"]["steps"]] == ["cancelled", "cancelled"]
    assert (condition(obj, "Failed")["status"], condition(obj, "Failed")["reason"]) == (
        "True", "Cancelled")
    assert condition(obj, "Complete")["status"] == "False"
    # Cancel is irreversible: cancel=false is refused with an Event and a condition.
    annotate(kube, "cancellable", "shoal.dev/cancel=false")
    refused = wait_for(lambda: (c := condition(get_wf(kube, "cancellable"), "AnnotationsValid"))
                       and c["status"] == "False" and c, 15, "AnnotationsValid=False")
    assert "cannot undo a cancel" in refused["message"]
    wait_for(lambda: [e for e in events_for(kube, NS, "cancellable")
                      if e["reason"] == "InvalidAnnotation" and e["type"] == "Warning"],
             15, "a Warning Event InvalidAnnotation")
    assert (await backend.workflow_status(wid)).state == "cancelled"


async def test_bad_annotation_value_is_refused_without_a_command(
        kube: KubeAccess, pool: str, workers: None, backend: Backend):
    apply(kube, workflow("maybe", [{"name": "long", "task": "sleep",
                                    "input": {"seconds": 3}}]))
    wait_phase(kube, "maybe", "Running")
    annotate(kube, "maybe", "pause=maybe")
    refused = wait_for(lambda: (c := condition(get_wf(kube, "maybe"), "AnnotationsValid"))
                       and c["status"] == "False" and c, 15, "AnnotationsValid=False")
    assert refused["message"] == ("annotation pause='maybe' is not true or false: use pause=true "
                                  "or pause=false")
    events = wait_for(lambda: [e for e in events_for(kube, NS, "maybe")
                               if e["reason"] == "InvalidAnnotation"], 15, "the Event")
    assert events[0]["type"] == "Warning"
    # Named so that kubectl reaches it even beside Argo's Workflow kind.
    assert f"kubectl annotate --overwrite workflows.shoal.dev/maybe -n {NS}" in \
        events[0]["message"]
    status = await backend.workflow_status(await instance(backend, kube, "maybe"))
    assert status.commands == []
    wait_phase(kube, "maybe", "Succeeded")


async def test_cycle_is_refused_with_a_clear_condition(kube: KubeAccess, pool: str,
                                                       backend: Backend):
    apply(kube, workflow("loop", [
        {"name": "a", "task": "noop", "dependsOn": ["c"]},
        {"name": "b", "task": "noop", "dependsOn": ["a"]},
        {"name": "c", "task": "noop", "dependsOn": ["b"]},
    ]))
    obj = wait_phase(kube, "loop", "Failed")
    accepted = condition(obj, "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert accepted["message"] == "dependency cycle: a -> c -> b -> a"
    assert obj["status"]["message"] == accepted["message"]
    wait_for(lambda: [e for e in events_for(kube, NS, "loop") if e["reason"] == "InvalidSpec"],
             15, "the InvalidSpec Event")  # posted in the background
    assert await backend.workflow_id_by_key(obj["metadata"]["uid"]) is None


async def test_an_unreadable_stored_spec_fails_the_workflow_with_its_reason(
        kube: KubeAccess, pool: str, workers: None, backend: Backend):
    """A stored spec this Shoal cannot read (as a newer version or a hand edit may leave
    it) fails that workflow when its running step reports: reason UnreadableStoredSpec on
    the conditions, a Warning Event, and the workers go on."""
    wid = await start_long_step(kube, backend, "unreadable", 2,
                                {"name": "after", "task": "noop", "dependsOn": ["long"]})
    await backend.pool.execute("UPDATE shoal.workflows SET spec = jsonb_set(spec, '{steps}', "
                               "'\"long,after\"') WHERE id = $1", wid)
    obj = wait_phase(kube, "unreadable", "Failed")
    message = "UnreadableStoredSpec: spec.steps: Input should be a valid list"
    assert obj["status"]["message"] == message
    for type_ in ("Failed", "Stalled"):
        found = condition(obj, type_) or {}
        assert (found.get("status"), found.get("reason")) == ("True", "UnreadableStoredSpec")
    assert [(s["name"], s["state"]) for s in obj["status"]["steps"]] == [
        ("long", "succeeded"), ("after", "cancelled")]
    events = wait_for(lambda: [e for e in events_for(kube, NS, "unreadable")
                               if e["reason"] == "UnreadableStoredSpec"], 15, "the Event")
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert events[0]["message"] == message
    apply(kube, workflow("after-unreadable", [{"name": "a", "task": "echo", "input": {}}]))
    wait_phase(kube, "after-unreadable", "Succeeded")  # the workers still serve


def test_schema_and_cel_refuse_what_they_can(kube: KubeAccess, pool: str):
    dup = workflow("dup", [{"name": "a", "task": "noop"}, {"name": "a", "task": "echo"}])
    result = kube.kubectl("apply", "-f", "-", input=json.dumps(dup))
    assert result.returncode != 0 and "step names must be unique" in result.stderr
    no_pool = workflow("nopool", [{"name": "a", "task": "noop"}])
    del no_pool["spec"]["poolRef"]
    result = kube.kubectl("apply", "-f", "-", input=json.dumps(no_pool))
    assert result.returncode != 0 and "poolRef" in result.stderr


def test_spec_is_immutable_once_started(kube: KubeAccess, pool: str, workers: None):
    apply(kube, workflow("frozen", [{"name": "a", "task": "noop"}]))
    wait_for(lambda: ((get_wf(kube, "frozen") or {}).get("status") or {}).get("workflowId"),
             30, "the instance id in status")
    result = kube.kubectl("patch", "workflows.shoal.dev", "frozen", "-n", NS, "--type=merge",
                          "-p", json.dumps({"spec": {"priority": 5}}))
    assert result.returncode != 0
    assert "spec is immutable once the workflow has started" in result.stderr


async def test_operator_restart_loses_no_command_and_makes_no_duplicate(
        kube: KubeAccess, pool: str, workers: None, backend: Backend,
        shoal_operator: OperatorProcess):
    apply(kube, workflow("restart", [
        {"name": "first", "task": "sleep", "input": {"seconds": 8}},
        {"name": "second", "task": "noop", "dependsOn": ["first"]},
    ]))
    obj = wait_phase(kube, "restart", "Running")
    uid = obj["metadata"]["uid"]
    wid = await instance(backend, kube, "restart")
    for value, phase in (("true", "Paused"), ("false", "Succeeded")):
        assert shoal_operator.proc is not None
        shoal_operator.proc.kill()  # SIGKILL: no cleanup, no last words
        shoal_operator.proc.wait()
        annotate(kube, "restart", f"pause={value}")  # while no operator runs
        shoal_operator.start()
        wait_phase(kube, "restart", phase, timeout=60)
    status = await backend.workflow_status(wid)
    ours = [(c.command, c.request_id) for c in status.commands]
    assert ours == [("pause", f"{uid}/pause/1"), ("resume", f"{uid}/resume/2")]
    assert await backend.workflow_id_by_key(uid) == wid


async def test_create_survives_an_operator_killed_mid_submit(
        kube: KubeAccess, pool: str, workers: None, backend: Backend,
        shoal_operator: OperatorProcess):
    """Killed right after a create, the restarted operator finds the same instance."""
    name = f"kill-{uuid.uuid4().hex[:6]}"
    apply(kube, workflow(name, [{"name": "a", "task": "noop"}]))
    await asyncio.sleep(0.3)
    assert shoal_operator.proc is not None
    shoal_operator.proc.kill()
    shoal_operator.proc.wait()
    shoal_operator.start()
    obj = wait_phase(kube, name, "Succeeded", timeout=60)
    assert obj["status"]["workflowId"] == str(await instance(backend, kube, name))


async def test_delete_cancels_the_instance(kube: KubeAccess, pool: str, workers: None,
                                           backend: Backend):
    wid = await start_long_step(kube, backend, "doomed", 120)
    result = kube.kubectl("delete", "workflows.shoal.dev", "doomed", "-n", NS, "--timeout=30s")
    assert result.returncode == 0, result.stderr
    assert get_wf(kube, "doomed") is None
    status = await wait_backend(backend, wid, "cancelled", lambda s: s.state == "cancelled")
    assert status.steps[0].state == "cancelled"
    assert status.commands[-1].actor == f"Workflow {NS}/doomed deleted"


async def test_delete_goes_through_when_the_backend_is_unreachable(
        kube: KubeAccess, pool: str, workers: None):
    """Bounded retries, then a Warning Event, and the CR is gone."""
    apply(kube, {"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "nowhere", "namespace": NS},
                 "stringData": {"dsn": "postgresql://shoal@127.0.0.1:9/none"}})
    apply(kube, {"apiVersion": "shoal.dev/v1alpha1", "kind": "WorkerPool",
                 "metadata": {"name": "nowhere", "namespace": NS},
                 "spec": {"app": "examples/tasks.py:app", "template": {"image": "shoal:dev"},
                          "database": {"secretRef": {"name": "nowhere"}},
                          "replicas": 0, "scaling": {"mode": "manual"}}})
    spec = workflow("stranded", [{"name": "a", "task": "noop"}])
    spec["spec"]["poolRef"] = "nowhere"
    apply(kube, spec)
    refused = wait_for(lambda: (c := condition(get_wf(kube, "stranded"), "Accepted"))
                       and c["status"] == "False" and c, 30, "Accepted=False")
    assert refused["reason"] == "BackendUnavailable"
    assert get_wf(kube, "stranded")["status"]["phase"] == "Pending"
    t0 = time.monotonic()
    result = kube.kubectl("delete", "workflows.shoal.dev", "stranded", "-n", NS, "--timeout=90s")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - t0 < 90
    events = events_for(kube, NS, "stranded")
    assert [e for e in events if e["reason"] == "CancelFailed" and e["type"] == "Warning"]


README = REPO / "README.md"
MARKER = "<!-- With Argo Workflows installed: tests/operator/test_workflow.py runs these. -->"
ARGO_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "workflows.argoproj.io"},
    "spec": {"group": "argoproj.io", "scope": "Namespaced",
             "names": {"kind": "Workflow", "listKind": "WorkflowList", "plural": "workflows",
                       "singular": "workflow", "shortNames": ["wf", "wfs"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {
                               "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def readme_commands() -> list[list[str]]:
    """The kubectl commands of the README's block for clusters with Argo Workflows."""
    text = README.read_text()
    block = re.search(re.escape(MARKER) + r"\n```sh\n(.*?)```", text, re.DOTALL)
    assert block, "README.md lacks the block for clusters with Argo Workflows"
    commands = [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]
    assert commands and all(c[0] == "kubectl" for c in commands), commands
    return commands


@pytest.fixture
def argo(kube: KubeAccess, tmp_path: Path) -> Iterator[str]:
    """A stand-in of Argo Workflows' CRD (its names: plural `workflows`, short name `wf`),
    installed for one test. Yields the `--cache-dir` flag every kubectl of that test must
    use: no other test's kubectl ever learns of the stand-in from its discovery cache."""
    cache = f"--cache-dir={tmp_path / 'kube-cache'}"
    kube.kubectl(cache, "apply", "-f", "-", input=json.dumps(ARGO_CRD), check=True)
    kube.kubectl(cache, "wait", "--for=condition=Established", "--timeout=60s",
                 "crd/workflows.argoproj.io", check=True)
    try:
        yield cache
    finally:
        kube.kubectl(cache, "delete", "crd", "workflows.argoproj.io", "--timeout=60s")


def test_readme_commands_reach_shoal_with_argo_workflows_installed(
        kube: KubeAccess, pool: str, workers: None, argo: str):
    """With Argo's Workflow kind beside Shoal's, the bare `workflow` reaches Argo's, and the
    README's commands for that case reach Shoal's."""
    for obj in ({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                 "metadata": {"name": "nightly-etl", "namespace": NS},
                 "spec": {"entrypoint": "main"}},
                workflow("nightly-etl", [{"name": "a", "task": "echo", "input": 1}])):
        kube.kubectl(argo, "apply", "-f", "-", input=json.dumps(obj), check=True)
    wait_phase(kube, "nightly-etl", "Succeeded")
    bare = kube.kubectl(argo, "annotate", "workflow", "nightly-etl", "-n", NS, "probe=bare",
                        check=True)
    assert "workflow.argoproj.io/nightly-etl annotated" in bare.stdout, bare.stdout

    for command in readme_commands():
        result = kube.kubectl(argo, *command[1:], "-n", NS)
        assert result.returncode == 0, (command, result.stderr)
        assert "nightly-etl" in result.stdout and "argoproj" not in result.stdout, (
            command, result.stdout)

    def annotations(resource: str) -> dict[str, str]:
        found = json.loads(kube.kubectl(argo, "get", resource, "nightly-etl", "-n", NS,
                                        "-o", "json", check=True).stdout)
        return dict(found["metadata"].get("annotations") or {})

    shoal = annotations("workflows.shoal.dev")
    assert (shoal.get("pause"), shoal.get("cancel"), shoal.get("probe")) == (
        "false", "true", None)
    assert annotations("workflows.argoproj.io").get("probe") == "bare"
    assert not {"pause", "cancel"} & set(annotations("workflows.argoproj.io"))
