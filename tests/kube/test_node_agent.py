"""The node agent plays the kubelet: real Deployments, ReplicaSets, env, probes, deletion.

Every test runs in its own namespace of the session's LocalCluster; the Pods'
containers are local processes started by tests.cluster.node_agent, so the test
can talk to them on their podIP and see the files they write.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.access import KubeAccess
from tests.support import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.node_agent]

Json = dict[str, Any]

NODE = "shoal-local"

# A tiny HTTP server: answers on $(POD_IP):8080 with its T_* environment as JSON.
ENV_SERVER = """
import http.server, json, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        env = {k: v for k, v in os.environ.items() if k.startswith("T_")}
        body = json.dumps(env).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""

# Ignores SIGTERM (but records it) and writes a heartbeat every 0.1 s until killed.
STUBBORN = """
import os, pathlib, signal, time

folder = pathlib.Path(os.environ["MARKERS"]) / os.environ["POD_NAME"]
folder.mkdir(parents=True, exist_ok=True)
(folder / "pid").write_text(str(os.getpid()))

def on_term(signum, frame):
    (folder / "term").write_text(repr(time.time()))

signal.signal(signal.SIGTERM, on_term)
while True:
    tmp = folder / "alive.tmp"
    tmp.write_text(repr(time.time()))
    os.replace(tmp, folder / "alive")
    time.sleep(0.1)
"""


def wait_for_object(kube: KubeAccess, what: str, check: Callable[[Json], bool], *args: str,
                    timeout: float = 60.0) -> Json:
    """Wait until `kubectl get <args>` finds an object for which `check` holds; return it."""

    def probe() -> Json | None:
        found = kube.get_json(*args)
        return found if found is not None and check(found) else None

    return wait_for(probe, timeout, what)


def finished(kube: KubeAccess, namespace: str, name: str) -> Json:
    """Wait until the pod is Succeeded or Failed; return it."""
    return wait_for_object(kube, f"pod {name} to finish",
                           lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
                           "pod", name, "-n", namespace)


def apply(kube: KubeAccess, namespace: str, *objects: Json) -> None:
    """`kubectl apply` the objects in `namespace`."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=True)


def pods(kube: KubeAccess, namespace: str, selector: str) -> list[Json]:
    listing = kube.get_json("pods", "-n", namespace, "-l", selector)
    assert listing is not None
    items: list[Json] = listing["items"]
    return items


def condition(obj: Json, kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def container_status(pod: Json | None) -> Json:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    first: Json = statuses[0]
    return first


def ready_pods(kube: KubeAccess, namespace: str, selector: str, count: int) -> list[Json]:
    """Wait until exactly `count` pods match, all Ready and none terminating."""

    def probe() -> list[Json] | None:
        found = pods(kube, namespace, selector)
        live = [p for p in found if not p["metadata"].get("deletionTimestamp")]
        if len(found) == count and all(condition(p, "Ready") == "True" for p in live):
            return live
        return None

    return wait_for(probe, 90, f"{count} Ready pods with {selector}")


def env_var(name: str, **source: Any) -> Json:
    return {"name": name, "valueFrom": source}


def field(path: str) -> Json:
    return {"fieldRef": {"fieldPath": path}}


def deployment(name: str, replicas: int, container: Json, grace: int = 30) -> Json:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"note": "hello"}},
                "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]},
            },
        },
    }


def pod(name: str, container: Json, restart_policy: str = "Always") -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 2,
                 "containers": [container]},
    }


def python(name: str, code: str, *args: str, **extra: Any) -> Json:
    return {"name": name, "image": "shoal-test/python", "command": ["python", "-c", code],
            "args": list(args), **extra}


@pytest.fixture
def namespace(kube: KubeAccess) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted afterwards."""
    name = f"node-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name, check=True)
    wait_for(lambda: kube.get_json("serviceaccount", "default", "-n", name), 60,
             "default ServiceAccount")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


def test_node_is_ready_with_server_version_and_renews_its_lease(kube: KubeAccess) -> None:
    node = wait_for_object(kube, "Node without taints", lambda n: not n["spec"].get("taints"),
                           "node", NODE)
    assert condition(node, "Ready") == "True"
    version = json.loads(kube.kubectl("version", "-o", "json", check=True).stdout)
    assert node["status"]["nodeInfo"]["kubeletVersion"] == version["serverVersion"]["gitVersion"]
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    assert int(node["status"]["allocatable"]["pods"]) > 0

    def renew_time() -> str | None:
        lease = kube.get_json("lease", NODE, "-n", "kube-node-lease")
        return lease["spec"]["renewTime"] if lease else None

    first = wait_for(renew_time, 60, "node Lease")
    wait_for(lambda: renew_time() not in (None, first), 30, "Lease renewal")


def test_deployment_pods_serve_on_their_pod_ip_with_env(kube: KubeAccess, namespace: str) -> None:
    secret_value = "s3cret-" + uuid.uuid4().hex[:6]
    apply(
        kube, namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
         "data": {"password": base64.b64encode(secret_value.encode()).decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
         "data": {"mode": "fast", "LEVEL": "3"}},
    )
    container = python(
        "web", ENV_SERVER, "$(POD_IP)", "8080",
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "T_CM_"}],
        env=[
            env_var("POD_IP", **field("status.podIP")),
            env_var("T_SECRET", secretKeyRef={"name": "creds", "key": "password"}),
            env_var("T_MODE", configMapKeyRef={"name": "settings", "key": "mode"}),
            env_var("T_POD_NAME", **field("metadata.name")),
            env_var("T_NAMESPACE", **field("metadata.namespace")),
            env_var("T_UID", **field("metadata.uid")),
            env_var("T_APP", **field("metadata.labels['app']")),
            env_var("T_NOTE", **field("metadata.annotations['note']")),
            env_var("T_NODE", **field("spec.nodeName")),
            env_var("T_HOST_IP", **field("status.hostIP")),
            env_var("T_CPU_MILLIS", resourceFieldRef={"resource": "requests.cpu",
                                                      "divisor": "1m"}),
            {"name": "T_WHERE", "value": "$(T_POD_NAME)@$(T_NODE) $$(T_NODE) $(UNSET)"},
        ],
        resources={"requests": {"cpu": "50m"}},
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    )
    apply(kube, namespace, deployment("web", 2, container))

    running = ready_pods(kube, namespace, "app=web", 2)
    wait_for_object(kube, "Deployment readyReplicas=2",
                    lambda d: d["status"].get("readyReplicas") == 2,
                    "deployment", "web", "-n", namespace)
    replicasets = kube.get_json("replicasets", "-n", namespace, "-l", "app=web")
    assert replicasets is not None and len(replicasets["items"]) == 1
    replicaset = replicasets["items"][0]
    assert replicaset["metadata"]["ownerReferences"][0]["name"] == "web"

    ips = {p["status"]["podIP"] for p in running}
    assert len(ips) == 2 and all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips)
    for item in running:
        meta, status = item["metadata"], item["status"]
        assert meta["ownerReferences"][0]["name"] == replicaset["metadata"]["name"]
        assert status["phase"] == "Running" and status["hostIP"] == "127.0.0.1"
        assert status["podIPs"] == [{"ip": status["podIP"]}]
        web = container_status(item)
        assert web["ready"] and web["started"] and "running" in web["state"]
        assert web["image"] == "shoal-test/python" and web["containerID"]
        url = f"http://{status['podIP']}:8080/"
        with urllib.request.urlopen(url, timeout=5) as response:
            env = json.loads(response.read())
        assert env == {
            "T_CM_mode": "fast", "T_CM_LEVEL": "3",
            "T_SECRET": secret_value, "T_MODE": "fast",
            "T_POD_NAME": meta["name"], "T_NAMESPACE": namespace, "T_UID": meta["uid"],
            "T_APP": "web", "T_NOTE": "hello", "T_NODE": NODE, "T_HOST_IP": "127.0.0.1",
            "T_CPU_MILLIS": "50",
            "T_WHERE": f"{meta['name']}@{NODE} $(T_NODE) $(UNSET)",
        }


def test_scale_down_removes_cheapest_pod_after_its_grace_period(
    kube: KubeAccess, namespace: str, tmp_path: Path
) -> None:
    grace = 4
    container = python(
        "stubborn", STUBBORN,
        env=[{"name": "MARKERS", "value": str(tmp_path)},
             env_var("POD_NAME", **field("metadata.name"))],
    )
    apply(kube, namespace, deployment("stubborn", 3, container, grace=grace))
    running = ready_pods(kube, namespace, "app=stubborn", 3)
    names = sorted(p["metadata"]["name"] for p in running)
    for name in names:
        wait_for((tmp_path / name / "alive").exists, 60, f"{name} heartbeat")
    victim, survivors = names[0], names[1:]
    for name in names:
        cost = "-100" if name == victim else "100"
        kube.kubectl("annotate", "pod", name, "-n", namespace,
                     f"controller.kubernetes.io/pod-deletion-cost={cost}", check=True)

    kube.kubectl("scale", "deployment", "stubborn", "-n", namespace, "--replicas=2", check=True)
    wait_for(lambda: kube.get_json("pod", victim, "-n", namespace) is None, grace + 30,
             f"{victim} to vanish")

    folder = tmp_path / victim
    termed, last_alive = float((folder / "term").read_text()), float((folder / "alive").read_text())
    assert grace - 1 <= last_alive - termed <= grace + 3, (termed, last_alive)
    with pytest.raises(ProcessLookupError):
        os.kill(int((folder / "pid").read_text()), 0)
    for name in survivors:
        assert not (tmp_path / name / "term").exists()
        survivor = kube.get_json("pod", name, "-n", namespace)
        assert survivor is not None and condition(survivor, "Ready") == "True"


def test_failing_container_shows_exit_code_and_restarts(kube: KubeAccess, namespace: str) -> None:
    crash = python("crash", "import sys; print('boom'); sys.exit(3)")
    apply(kube, namespace, pod("crashy", crash))

    def crash_looping() -> Json | None:
        status = container_status(kube.get_json("pod", "crashy", "-n", namespace))
        waiting = status.get("state", {}).get("waiting", {})
        return status if waiting.get("reason") == "CrashLoopBackOff" else None

    status = wait_for(crash_looping, 60, "CrashLoopBackOff")
    assert status["restartCount"] >= 1 and not status["ready"]
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    crashy = kube.get_json("pod", "crashy", "-n", namespace)
    assert crashy is not None and crashy["status"]["phase"] == "Running"
    for run in ([], ["--previous"]):
        logs = kube.kubectl("logs", "crashy", "-n", namespace, *run, check=True)
        assert logs.stdout == "boom\n"
    events = kube.get_json("events", "-n", namespace, "--field-selector",
                 "involvedObject.name=crashy")
    assert events is not None
    assert {"Started", "BackOff"} <= {e["reason"] for e in events["items"]}


def test_run_once_pods_end_succeeded_or_failed(kube: KubeAccess, namespace: str) -> None:
    for name, code in (("ok", 0), ("bad", 7)):
        spec = pod(name, python("main", f"raise SystemExit({code})"), restart_policy="Never")
        apply(kube, namespace, spec)
    for name, phase, code, reason in (("ok", "Succeeded", 0, "Completed"),
                                      ("bad", "Failed", 7, "Error")):
        done = finished(kube, namespace, name)
        assert done["status"]["phase"] == phase
        terminated = container_status(done)["state"]["terminated"]
        assert terminated["exitCode"] == code and terminated["reason"] == reason
        assert container_status(done)["restartCount"] == 0
        assert condition(done, "Ready") == "False"


def test_missing_secret_waits_then_starts(kube: KubeAccess, namespace: str) -> None:
    sleeper = python("main", "import time; time.sleep(3600)",
                     env=[env_var("TOKEN", secretKeyRef={"name": "late", "key": "token"})])
    apply(kube, namespace, pod("patient", sleeper))

    def waiting_reason() -> str | None:
        state = container_status(kube.get_json("pod", "patient", "-n", namespace)).get("state", {})
        reason = state.get("waiting", {}).get("reason")
        return None if reason is None else str(reason)

    wait_for(lambda: waiting_reason() == "CreateContainerConfigError", 60,
             "CreateContainerConfigError")
    kube.kubectl("create", "secret", "generic", "late", "-n", namespace,
                 "--from-literal=token=abc", check=True)
    ready_pods(kube, namespace, "app=patient", 1)


def test_failing_liveness_probe_restarts_the_container(kube: KubeAccess, namespace: str) -> None:
    sleeper = python(
        "main", "import time; time.sleep(3600)",
        livenessProbe={"exec": {"command": ["python", "-c", "raise SystemExit(1)"]},
                       "periodSeconds": 1, "failureThreshold": 2},
    )
    apply(kube, namespace, pod("unwell", sleeper))
    unwell = wait_for_object(kube, "a restart after liveness failures",
                             lambda p: container_status(p).get("restartCount", 0) >= 1,
                             "pod", "unwell", "-n", namespace)
    status = container_status(unwell)
    # SIGTERM ends the sleeping python process: 128 + 15
    assert status["lastState"]["terminated"]["exitCode"] == 143


def test_init_containers_run_first_and_in_order(kube: KubeAccess, namespace: str,
                                                tmp_path: Path) -> None:
    log = tmp_path / "order"
    step = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    spec = pod("ordered", python("main", step, str(log), "main"), restart_policy="Never")
    spec["spec"]["initContainers"] = [python(f"init-{i}", step, str(log), f"init-{i}")
                                      for i in (1, 2)]
    apply(kube, namespace, spec)
    done = finished(kube, namespace, "ordered")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert log.read_text().split() == ["init-1", "init-2", "main"]
    assert condition(done, "Initialized") == "True"
    for status in done["status"]["initContainerStatuses"]:
        assert status["state"]["terminated"]["reason"] == "Completed"


# Reads its volumes and asks the API server who it is, with the mounted token.
VOLUME_READER = """
import json, os, pathlib, ssl, sys, urllib.request

out, mnt = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
found = {
    "secret": (mnt / "secret" / "password").read_text(),
    "config": (mnt / "config" / "renamed.txt").read_text(),
    "from_init": (mnt / "scratch" / "note").read_text(),
    "pod_name": (mnt / "info" / "name").read_text(),
    "namespace": (sa / "namespace").read_text(),
}
try:
    (mnt / "secret" / "new").write_text("x")
    found["secret_writable"] = True
except OSError:
    found["secret_writable"] = False
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
request = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1",
                     "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": "Bearer " + (sa / "token").read_text(),
             "Content-Type": "application/json"})
context = ssl.create_default_context(cafile=str(sa / "ca.crt"))
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    found["user"] = json.loads(response.read())["status"]["userInfo"]["username"]
out.write_text(json.dumps(found))
"""


def test_volumes_are_mounted_and_the_service_account_token_works(
    kube: KubeAccess, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("create", "secret", "generic", "vol-secret", "-n", namespace,
                 "--from-literal=password=hunter2", check=True)
    kube.kubectl("create", "configmap", "vol-config", "-n", namespace,
                 "--from-literal=settings=verbose", check=True)
    mnt, out = tmp_path / "mnt", tmp_path / "found.json"
    mounts = [{"name": "secret", "mountPath": str(mnt / "secret"), "readOnly": True},
              {"name": "config", "mountPath": str(mnt / "config")},
              {"name": "scratch", "mountPath": str(mnt / "scratch")},
              {"name": "info", "mountPath": str(mnt / "info")}]
    main = python("main", VOLUME_READER, str(out), str(mnt), volumeMounts=mounts)
    spec = pod("volumes", main, restart_policy="Never")
    spec["spec"]["initContainers"] = [
        python("init", "import sys; open(sys.argv[1], 'w').write('hello')",
               str(mnt / "scratch" / "note"), volumeMounts=[mounts[2]])]
    spec["spec"]["volumes"] = [
        {"name": "secret", "secret": {"secretName": "vol-secret"}},
        {"name": "config", "configMap": {"name": "vol-config",
                                         "items": [{"key": "settings", "path": "renamed.txt"}]}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
    ]
    apply(kube, namespace, spec)
    done = finished(kube, namespace, "volumes")
    assert done["status"]["phase"] == "Succeeded", container_status(done)
    assert json.loads(out.read_text()) == {
        "secret": "hunter2", "config": "verbose", "from_init": "hello", "pod_name": "volumes",
        "namespace": namespace, "secret_writable": False,
        "user": f"system:serviceaccount:{namespace}:default",
    }
    assert not (mnt / "secret" / "password").exists()  # mounted only inside the container
