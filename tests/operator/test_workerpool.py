"""WorkerPool end to end: a real control plane, real Postgres, real worker processes.

The node agent runs each worker Pod's `shoal worker` as a local process, so
scale-ups start real workers and scale-downs SIGTERM them (they drain). On an
existing cluster (`SHOAL_TEST_KUBECONFIG`) the pods run `SHOAL_TEST_IMAGE`
(default `shoal:dev`, the Dockerfile's image: the package and examples/) and
reach the database at `SHOAL_TEST_POD_DSN` (see conftest.py `pod_dsn`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from shoal.backend import Backend, NewTask
from tests.cluster.access import KubeAccess
from tests.cluster.kstatus import kstatus
from tests.operator.harness import (
    APP,
    IMAGE,
    OperatorProcess,
    apply,
    condition,
    create_secret,
    events_for,
    pod_ready,
    pool,
    pool_pods,
)
from tests.support import eventually, wait_for

pytestmark = pytest.mark.kube

def deployment(kube: KubeAccess, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get_json("deployment", name, "-n", namespace)


def ready_pods(kube: KubeAccess, namespace: str, name: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pool_pods(kube, namespace, name)
                  if pod_ready(p))


def live_pods(kube: KubeAccess, namespace: str, name: str) -> list[str]:
    pods = kube.get_json("pods", "-n", namespace, "-l", f"shoal.dev/pool={name}")
    return sorted(p["metadata"]["name"] for p in pods["items"])


def wp(kube: KubeAccess, namespace: str, name: str) -> dict[str, Any]:
    return kube.get_json("workerpool", name, "-n", namespace)


def test_crd_rejects_min_above_max(kube: KubeAccess, crds: None, namespace: str) -> None:
    result = kube.kubectl("apply", "-f", "-",
                          input=json.dumps(pool("bad", namespace, minReplicas=5, maxReplicas=2)))
    assert result.returncode != 0
    assert "minReplicas must not exceed scaling.maxReplicas" in result.stderr


def test_pool_becomes_a_ready_deployment(kube: KubeAccess, shoal_operator: OperatorProcess,
                                         pod_dsn: str, namespace: str) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("web", namespace))
    dep = wait_for(lambda: deployment(kube, namespace, "web"), 30, "the Deployment")
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("WorkerPool", "web", True)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--pool" in container["args"] and APP in container["args"]
    wait_for(lambda: len(ready_pods(kube, namespace, "web")) == 1, 60, "one Ready worker pod")
    obj = wait_for(lambda: (o := wp(kube, namespace, "web"))
                   and (condition(o, "Ready") or {}).get("status") == "True" and o, 30,
                   "Ready=True on the pool")
    assert obj["status"]["readyReplicas"] == 1
    assert obj["status"]["selector"] == "shoal.dev/pool=web"
    assert (condition(obj, "BackendReachable") or {}).get("status") == "True"
    generation = obj["metadata"]["generation"]
    assert obj["status"]["observedGeneration"] == generation
    for type_ in ("Ready", "ScalingActive", "ScalingLimited", "BackendReachable"):
        assert (condition(obj, type_) or {}).get("observedGeneration") == generation, type_
    table = kube.kubectl("get", "wp", "-n", namespace).stdout
    assert table.split()[:8] == ["NAME", "MODE", "DESIRED", "READY", "BACKLOG", "PAUSED",
                                 "STATUS", "AGE"], table
    assert "AllReplicasReady" in table


async def test_burst_scales_up_then_idle_pods_go_first(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str,
        namespace: str, backend: Backend) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("burst", namespace))
    await asyncio.to_thread(wait_for, lambda: len(ready_pods(kube, namespace, "burst")) == 1,
                            60, "one Ready worker pod")
    # One long task (claimed first: higher priority) and seven short ones:
    # 8 tasks / concurrency 2 = 4 replicas.
    [long_id] = await backend.enqueue([NewTask("sleep", {"seconds": 25}, namespace=namespace,
                                               priority=10)])
    short_ids = await backend.enqueue([NewTask("sleep", {"seconds": 3}, namespace=namespace)
                                       for _ in range(7)])
    enqueued = time.monotonic()
    await asyncio.to_thread(
        wait_for, lambda: deployment(kube, namespace, "burst")["spec"]["replicas"] == 4,
        10, "4 replicas")
    scale_up_seconds = time.monotonic() - enqueued
    assert scale_up_seconds < 3, scale_up_seconds
    await asyncio.to_thread(wait_for, lambda: len(ready_pods(kube, namespace, "burst")) == 4,
                            60, "4 Ready worker pods")
    events = [e["reason"] for e in events_for(kube, namespace, "burst")]
    assert "ScaledUp" in events

    # The long task's worker is the busy pod that must survive the scale-down.
    long_task = await backend.get_task(long_id)
    assert long_task.state == "running", long_task
    busy_pod = long_task.worker_id
    assert busy_pod in live_pods(kube, namespace, "burst")

    await asyncio.to_thread(
        wait_for, lambda: deployment(kube, namespace, "burst")["spec"]["replicas"] == 1,
        40, "the scale-down to minReplicas")
    survivors = await asyncio.to_thread(
        wait_for, lambda: (p := live_pods(kube, namespace, "burst")) and len(p) == 1 and p,
        40, "one pod left")
    assert survivors == [busy_pod]
    # Age alone would keep this pod too (it is the oldest); the operator's mark,
    # which the ReplicaSet controller ranks before age, is what makes it survive
    # when it is not: the busy pod costs its in-flight count, idle ones 0.
    survivor = kube.get_json("pod", busy_pod, "-n", namespace)
    assert survivor["metadata"]["annotations"][
        "controller.kubernetes.io/pod-deletion-cost"] == "1"
    assert (await backend.get_task(long_id)).state == "running"  # never interrupted

    async def all_done() -> list[Any]:
        while True:
            tasks = [await backend.get_task(i) for i in [long_id, *short_ids]]
            if all(t.state == "succeeded" for t in tasks):
                return tasks
            await asyncio.sleep(0.5)

    tasks = await asyncio.wait_for(all_done(), 60)
    # Each ran to completion exactly once: no lease was lost, none was re-run.
    assert [t.attempts for t in tasks] == [1] * 8
    assert tasks[0].worker_id == busy_pod
    obj = wp(kube, namespace, "burst")
    assert obj["status"]["desiredReplicas"] == 1
    assert "ScaledDown" in [e["reason"] for e in events_for(kube, namespace, "burst")]
    metrics = shoal_operator.metrics()
    assert f'shoal_workerpool_desired_replicas{{namespace="{namespace}",pool="burst"}} 1.0' \
        in metrics
    assert "shoal_workerpool_backlog{" in metrics and "shoal_build_info{" in metrics


GREET = """\
from shoal import App

app = App("mounted")


@app.task("greet")
async def greet(payload: dict) -> dict:
    return {"hello": payload["name"]}
"""


async def test_task_code_from_a_config_map(kube: KubeAccess, shoal_operator: OperatorProcess,
                                           pod_dsn: str, namespace: str,
                                           backend: Backend) -> None:
    """No image of its own: the app is a file in a ConfigMap mounted into the workers."""
    create_secret(kube, namespace, pod_dsn)
    result = kube.kubectl("create", "configmap", "code", "-n", namespace,
                          f"--from-literal=greet.py={GREET}")
    assert result.returncode == 0, result.stderr
    manifest = pool("mounted", namespace)
    manifest["spec"]["app"] = "/opt/tasks/greet.py:app"
    manifest["spec"]["template"] |= {
        "volumes": [{"name": "code", "configMap": {"name": "code"}}],
        "volumeMounts": [{"name": "code", "mountPath": "/opt/tasks", "readOnly": True}]}
    apply(kube, manifest)
    await asyncio.to_thread(wait_for, lambda: ready_pods(kube, namespace, "mounted"), 60,
                            "a Ready worker running the mounted app")
    [task_id] = await backend.enqueue([NewTask("greet", {"name": "shoal"},
                                               namespace=namespace)])

    async def succeeded() -> Any:
        task = await backend.get_task(task_id)
        return task if task.state == "succeeded" else None

    task = await eventually(succeeded, within=30, what="the mounted app's task to succeed")
    assert task.result == {"hello": "shoal"}


def test_deleted_deployment_is_repaired(kube: KubeAccess, shoal_operator: OperatorProcess,
                                        pod_dsn: str, namespace: str) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("fixme", namespace))
    first = wait_for(lambda: deployment(kube, namespace, "fixme"), 30, "the Deployment")
    assert kube.kubectl("delete", "deployment", "fixme", "-n", namespace,
                        "--wait=false").returncode == 0
    again = wait_for(lambda: (d := deployment(kube, namespace, "fixme"))
                     and d["metadata"]["uid"] != first["metadata"]["uid"] and d, 30,
                     "a new Deployment")
    assert again["spec"]["replicas"] == 1
    # An edit of an owned field is reverted too.
    kube.kubectl("patch", "deployment", "fixme", "-n", namespace, "--type=json", "-p",
                 '[{"op":"replace","path":"/spec/template/spec/containers/0/image",'
                 '"value":"evil:1"}]')
    wait_for(lambda: deployment(kube, namespace, "fixme")["spec"]["template"]["spec"][
        "containers"][0]["image"] == IMAGE, 30, "the image edit reverted")
    # Events are posted in the background, after the repair they report.
    wait_for(lambda: [e["reason"] for e in events_for(kube, namespace, "fixme")].count(
        "DeploymentRepaired") >= 2, 10, "two DeploymentRepaired Events")
    wait_for(lambda: len(ready_pods(kube, namespace, "fixme")) == 1, 60, "a Ready pod again")


def test_bad_secret_gives_condition_and_event(kube: KubeAccess,
                                              shoal_operator: OperatorProcess,
                                              namespace: str) -> None:
    apply(kube, pool("nosecret", namespace, secret="pg", minReplicas=1))

    def backend_condition(reason: str) -> dict[str, Any] | None:
        c = condition(wp(kube, namespace, "nosecret"), "BackendReachable")
        return c if c and c["status"] == "False" and c["reason"] == reason else None

    c = wait_for(lambda: backend_condition("SecretInvalid"), 30, "SecretInvalid")
    assert f"Secret {namespace}/pg does not exist" in c["message"]
    create_secret(kube, namespace, "not a dsn")
    wait_for(lambda: (c := backend_condition("SecretInvalid")) and "is not a DSN" in c[
        "message"], 30, "the malformed-DSN message")
    create_secret(kube, namespace, "postgresql://app:hunter2@127.0.0.1:1/nowhere")
    c = wait_for(lambda: backend_condition("Unreachable"), 30, "Unreachable")
    assert "cannot reach" in c["message"] and "hunter2" not in c["message"]
    warnings = wait_for(lambda: (w := [e for e in events_for(kube, namespace, "nosecret")
                                       if e["type"] == "Warning"])
                        and {"SecretInvalid", "Unreachable"} <= {e["reason"] for e in w} and w,
                        10, "the SecretInvalid and Unreachable Events")
    assert not any("hunter2" in e["message"] for e in warnings)
    # No scaling from garbage: the Deployment keeps minReplicas, the operator keeps running.
    assert deployment(kube, namespace, "nosecret")["spec"]["replicas"] == 1
    assert "desiredReplicas" not in wp(kube, namespace, "nosecret").get("status", {})
    assert shoal_operator.proc is not None and shoal_operator.proc.poll() is None


def test_spec_the_api_server_rejects_gets_a_condition(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str,
        namespace: str) -> None:
    create_secret(kube, namespace, pod_dsn)
    bad = pool("quota", namespace)
    bad["spec"]["template"]["tolerations"] = [{"key": "gpu", "operator": "Sometimes"}]
    apply(kube, bad)
    c = wait_for(lambda: (c := condition(wp(kube, namespace, "quota"), "Ready"))
                 and c["reason"] == "DeploymentRejected" and c, 30, "DeploymentRejected")
    assert c["status"] == "False" and "Sometimes" in c["message"]
    wait_for(lambda: "DeploymentRejected" in [e["reason"] for e in events_for(
        kube, namespace, "quota")], 10, "the DeploymentRejected Event")
    assert deployment(kube, namespace, "quota") is None
    # Stalled: it cannot be served until the spec changes (kstatus: Failed, not InProgress).
    waited = kube.kubectl("wait", "--for=condition=Stalled", "--timeout=30s",
                          "workerpools.shoal.dev/quota", "-n", namespace)
    assert waited.returncode == 0, waited.stderr
    stalled = wp(kube, namespace, "quota")
    assert condition(stalled, "Stalled")["reason"] == "DeploymentRejected"
    assert condition(stalled, "Reconciling")["status"] == "False"
    assert stalled["status"]["observedGeneration"] == stalled["metadata"]["generation"]
    [read] = kstatus([stalled])
    assert read["status"] == "Failed" and "Sometimes" in read["message"], read
    # A malformed quantity is refused by the CRD's schema before it gets that far.
    bad["spec"]["template"]["resources"] = {"limits": {"cpu": "lots"}}
    assert kube.kubectl("apply", "-f", "-", input=json.dumps(bad)).returncode != 0
    # Fixing the spec recovers without a restart.
    bad["spec"]["template"]["resources"] = {"limits": {"cpu": "500m", "memory": 1048576}}
    bad["spec"]["template"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    apply(kube, bad)
    wait_for(lambda: deployment(kube, namespace, "quota"), 30, "the Deployment")
    wait_for(lambda: (condition(wp(kube, namespace, "quota"), "Stalled") or {}).get(
        "status") == "False", 30, "Stalled=False once the spec is fixed")
    assert kstatus([wp(kube, namespace, "quota")])[0]["status"] != "Failed"


def test_manual_mode_follows_kubectl_scale(kube: KubeAccess, shoal_operator: OperatorProcess,
                                           pod_dsn: str, namespace: str) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("manual", namespace, replicas=1, mode="manual"))
    wait_for(lambda: len(ready_pods(kube, namespace, "manual")) == 1, 60, "one Ready pod")
    result = kube.kubectl("scale", "wp", "manual", "-n", namespace, "--replicas=3")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: deployment(kube, namespace, "manual")["spec"]["replicas"] == 3, 15,
             "3 replicas on the Deployment")
    wait_for(lambda: len(ready_pods(kube, namespace, "manual")) == 3, 60, "3 Ready pods")
    obj = wait_for(lambda: (o := wp(kube, namespace, "manual"))
                   and o["status"].get("readyReplicas") == 3 and o, 30, "status 3 ready")
    assert (condition(obj, "ScalingActive") or {}).get("reason") == "ManualMode"
    scale = json.loads(kube.kubectl("get", "--raw", f"/apis/shoal.dev/v1alpha1/namespaces/"
                                    f"{namespace}/workerpools/manual/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["selector"] == \
        "shoal.dev/pool=manual"
    assert get_scale(kube, namespace, "manual") == {
        "spec": {"replicas": 3}, "status": {"replicas": 3, "selector": "shoal.dev/pool=manual"}}


def get_scale(kube: KubeAccess, namespace: str, name: str) -> dict[str, Any]:
    """`kubectl get --subresource=scale`: spec and status of the pool's Scale."""
    result = kube.kubectl("get", "--subresource=scale", "workerpools.shoal.dev", name,
                          "-n", namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    scale = json.loads(result.stdout)
    assert scale["kind"] == "Scale", scale
    return {"spec": scale["spec"], "status": scale["status"]}


def test_scale_subresource_in_auto_mode_reads_the_scalers_count(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str) -> None:
    """Auto mode: spec.replicas mirrors the scaler's count, so /scale reads what runs;
    `kubectl scale` is overridden at the evaluation it wakes (as under an HPA)."""
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("auto", namespace, minReplicas=2, maxReplicas=4))
    wait_for(lambda: (d := deployment(kube, namespace, "auto")) and d["spec"]["replicas"] == 2,
             30, "the Deployment at minReplicas")
    scale = wait_for(lambda: (s := get_scale(kube, namespace, "auto"))
                     and s["spec"]["replicas"] == 2 and s, 30, "spec.replicas mirrored")
    assert scale["status"]["selector"] == "shoal.dev/pool=auto"
    result = kube.kubectl("scale", "wp", "auto", "-n", namespace, "--replicas=4")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: get_scale(kube, namespace, "auto")["spec"]["replicas"] == 2, 15,
             "the scaler's count back in spec.replicas")
    assert deployment(kube, namespace, "auto")["spec"]["replicas"] == 2
    obj = wp(kube, namespace, "auto")
    assert (condition(obj, "ScalingActive") or {}).get("status") == "True"


async def test_pause_annotation_holds_replicas(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str,
        namespace: str, backend: Backend) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("hold", namespace))
    await asyncio.to_thread(wait_for, lambda: deployment(kube, namespace, "hold"), 30,
                            "the Deployment")
    kube.kubectl("annotate", "wp", "hold", "-n", namespace, "pause=true")
    await asyncio.to_thread(wait_for, lambda: wp(kube, namespace, "hold").get(
        "status", {}).get("paused") is True, 15, "status.paused")
    # 8 x 10 s on one pod of concurrency 2: still backlogged when the pause ends.
    await backend.enqueue([NewTask("sleep", {"seconds": 10}, namespace=namespace)
                           for _ in range(8)])
    await asyncio.to_thread(wait_for, lambda: wp(kube, namespace, "hold")["status"][
        "backlog"]["ready"] + wp(kube, namespace, "hold")["status"]["backlog"]["running"] > 2,
        15, "the backlog in status")
    await asyncio.sleep(2)
    assert deployment(kube, namespace, "hold")["spec"]["replicas"] == 1
    assert (condition(wp(kube, namespace, "hold"), "ScalingActive") or {}).get(
        "reason") == "Paused"
    # A typo is answered, and still holds.
    kube.kubectl("annotate", "wp", "hold", "-n", namespace, "pause=maybe", "--overwrite")
    await asyncio.to_thread(wait_for, lambda: any(
        e["reason"] == "InvalidAnnotation" and "'maybe' is not true or false" in e["message"]
        for e in events_for(kube, namespace, "hold")), 15, "an InvalidAnnotation Event")
    assert deployment(kube, namespace, "hold")["spec"]["replicas"] == 1
    kube.kubectl("annotate", "wp", "hold", "-n", namespace, "pause-")
    await asyncio.to_thread(
        wait_for, lambda: deployment(kube, namespace, "hold")["spec"]["replicas"] > 1, 15,
        "scaling to resume")


def test_fallback_replicas_after_failed_reads(kube: KubeAccess,
                                              shoal_operator: OperatorProcess,
                                              namespace: str) -> None:
    create_secret(kube, namespace, "postgresql://app:pw@127.0.0.1:1/nowhere")
    apply(kube, pool("fb", namespace, fallback={"replicas": 3, "afterFailures": 2}))
    wait_for(lambda: (d := deployment(kube, namespace, "fb")) and d["spec"]["replicas"] == 3,
             30, "the fallback of 3 replicas")
    # The Deployment is scaled first; the Event (posted in the background) and the
    # status write follow it.
    fallback = wait_for(lambda: [e for e in events_for(kube, namespace, "fb")
                                 if e["reason"] == "Fallback"], 10, "the Fallback Event")
    assert fallback[0]["type"] == "Warning"
    assert "running the fallback of 3 replicas" in fallback[0]["message"]
    wait_for(lambda: (wp(kube, namespace, "fb").get("status") or {}).get("desiredReplicas") == 3,
             10, "the status to record the fallback")


def test_operator_restart_resumes_and_repairs(kube: KubeAccess, shoal_operator: OperatorProcess,
                                              pod_dsn: str, namespace: str) -> None:
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("resume", namespace, replicas=2, mode="manual"))
    first = wait_for(lambda: deployment(kube, namespace, "resume"), 30, "the Deployment")
    assert shoal_operator.proc is not None
    shoal_operator.proc.kill()  # SIGKILL: no cleanup
    shoal_operator.proc.wait()
    kube.kubectl("delete", "deployment", "resume", "-n", namespace, "--wait=false")
    kube.kubectl("scale", "wp", "resume", "-n", namespace, "--replicas=3")
    shoal_operator.start()
    again = wait_for(lambda: (d := deployment(kube, namespace, "resume"))
                     and d["metadata"]["uid"] != first["metadata"]["uid"]
                     and d["spec"]["replicas"] == 3 and d, 30,
                     "the Deployment re-created with the scale made while the operator was down")
    assert again["metadata"]["ownerReferences"][0]["name"] == "resume"


async def test_a_scaler_that_keeps_failing_shows_on_the_pool_and_in_readiness(
        kube: KubeAccess, shoal_operator: OperatorProcess, pod_dsn: str, namespace: str,
        backend: Backend) -> None:
    """The API server refuses every replica change of the pool's Deployment (a
    ValidatingAdmissionPolicy): once the scaler's rounds keep failing, the pool says
    ScalingActive=False ScalerFailing, the operator's metric counts them and /readyz
    answers 503 naming the scaler. Lifting the policy recovers all three."""
    create_secret(kube, namespace, pod_dsn)
    apply(kube, pool("frozen", namespace, maxReplicas=4))
    await asyncio.to_thread(
        wait_for, lambda: (condition(wp(kube, namespace, "frozen"), "ScalingActive") or {}).get(
            "status") == "True", 30, "ScalingActive=True")
    service = f"scaler/{namespace}/frozen"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1",
              "kind": "ValidatingAdmissionPolicy", "metadata": {"name": namespace},
              "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
                  "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                  "resources": ["deployments"]}]},
                  "validations": [{"expression": "object.spec.replicas == oldObject.spec.replicas",
                                   "message": "replicas are frozen here"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": namespace},
               "spec": {"policyName": namespace, "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {
                            "kubernetes.io/metadata.name": namespace}}}}}
    for obj in (policy, binding):
        apply(kube, obj)
    try:
        # Until the API server enforces it, a probe edit is let through.
        def enforced() -> bool:
            probe = kube.kubectl("label", "deployment", "frozen", "-n", namespace,
                                 "--overwrite", "probe=1", "--dry-run=server")
            scaled = kube.kubectl("patch", "deployment", "frozen", "-n", namespace,
                                  "-p", '{"spec": {"replicas": 2}}', "--dry-run=server")
            return probe.returncode == 0 and "replicas are frozen here" in scaled.stderr
        await asyncio.to_thread(wait_for, enforced, 30, "the policy enforced")
        await backend.enqueue([NewTask("sleep", {"seconds": 20}, namespace=namespace)
                               for _ in range(8)])
        failing = await asyncio.to_thread(
            wait_for, lambda: (c := condition(wp(kube, namespace, "frozen"), "ScalingActive"))
            and c["reason"] == "ScalerFailing" and c, 30, "ScalingActive=False, ScalerFailing")
        assert failing["status"] == "False" and "replicas are frozen here" in failing["message"]
        status, text = shoal_operator.probe("/readyz")
        assert status == 503 and f"{service}: failed " in text, (status, text)
        assert f'shoal_operator_service_failing{{service="{service}"}} 1.0' in \
            shoal_operator.metrics()
        assert shoal_operator.probe("/healthz")[0] == 200  # alive: not restarted for this
        assert deployment(kube, namespace, "frozen")["spec"]["replicas"] == 1
    finally:
        for obj in (binding, policy):
            kube.kubectl("delete", obj["kind"].lower(), namespace, "--ignore-not-found")
    await asyncio.to_thread(
        wait_for, lambda: deployment(kube, namespace, "frozen")["spec"]["replicas"] == 4, 30,
        "the scale-up once the policy is gone")
    await asyncio.to_thread(wait_for, shoal_operator.ready, 15, "/readyz 200 again")
    assert f'shoal_operator_service_failing{{service="{service}"}} 0.0' in \
        shoal_operator.metrics()
    await asyncio.to_thread(
        wait_for, lambda: (condition(wp(kube, namespace, "frozen"), "ScalingActive") or {}).get(
            "status") == "True", 15, "ScalingActive=True again")
