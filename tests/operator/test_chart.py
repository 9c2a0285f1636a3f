"""The Helm chart: values checked by its schema, least-privilege RBAC, a restricted
operator pod that becomes Ready on the real cluster, and no orphans after
`helm upgrade` and `helm uninstall`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.access import KubeAccess
from tests.cluster.images import SHOAL_IMAGE
from tests.support import wait_for

pytestmark = pytest.mark.kube

CHART = Path(__file__).resolve().parents[2] / "charts" / "shoal"
SELECTOR = "app.kubernetes.io/name=shoal,app.kubernetes.io/component=operator"
CRDS = ("workerpools.shoal.dev", "workflows.shoal.dev")


def helm_ok(kube: KubeAccess, *args: str) -> str:
    return kube.helm(*args, check=True).stdout


def kubectl_ok(kube: KubeAccess, *args: str, input: str | None = None) -> str:
    return kube.kubectl(*args, input=input, check=True).stdout


def sets(values: tuple[str, ...]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def render(kube: KubeAccess, *values: str, release: str = "shoal",
           namespace: str = "shoal-system") -> list[dict[str, Any]]:
    """`helm template` with `--set` values, as parsed documents."""
    text = helm_ok(kube, "template", release, str(CHART), "-n", namespace, *sets(values))
    return [d for d in yaml.safe_load_all(text) if d]


def rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] == kind for r in d["rules"]]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def local_image() -> tuple[str, ...]:
    """Values that run the operator from the image the harness loaded on the nodes."""
    repository, _, tag = os.environ.get("SHOAL_TEST_IMAGE", SHOAL_IMAGE).rpartition(":")
    return f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=IfNotPresent"


EXPECTED_VALUES = (
    "nameOverride=queue", "fullnameOverride=jobs-operator",
    "priorityClassName=system-cluster-critical",
    "topologySpreadConstraints[0].maxSkew=1",
    "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
    "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    "extraEnv[0].name=TZ", "extraEnv[0].value=UTC",
    "logging.format=json", "logging.level=debug",
)


def test_helm_lint_strict_passes(kube: KubeAccess) -> None:
    for values in ((), ("watchNamespaces={team-a,team-b}", "podDisruptionBudget.enabled=true",
                        "metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true",
                        "metrics.prometheusRule.enabled=true",
                        "metrics.grafanaDashboard.enabled=true"), EXPECTED_VALUES):
        result = kube.helm("lint", "--strict", str(CHART), *sets(values))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize(("value", "message"), [
    ("image.pullPolicy=Sometimes", "'/image/pullPolicy': value must be one of"),
    ("replicas=2", "additional properties 'replicas' not allowed"),
    ("image.tga=1", "at '/image': additional properties 'tga' not allowed"),
    ("watchNamespaces={team-*}", "at '/watchNamespaces/0': 'team-*' does not match"),
    ("livenessPort=0", "at '/livenessPort': minimum"),
    ("recheckInterval=0", "at '/recheckInterval'"),
    ("schema=Shoal", "at '/schema': 'Shoal' does not match"),
    ("rbac.create=yes", "at '/rbac/create'"),
    ("metrics.serviceMonitor.interval=soon", "at '/metrics/serviceMonitor/interval'"),
    ("podDisruptionBudget.minAvailable=half", "at '/podDisruptionBudget/minAvailable'"),
    ("metrics.prometheusRule.queueAgeFor=soon", "at '/metrics/prometheusRule/queueAgeFor'"),
    ("metrics.prometheusRule.leaseLosses=-1", "at '/metrics/prometheusRule/leaseLosses'"),
    ("metrics.podMonitor.scrape=1", "at '/metrics/podMonitor': additional properties"),
    ("logging.level=loud", "at '/logging/level': value must be one of"),
    ("logging.format=xml", "at '/logging/format': value must be one of"),
    ("nameOverride=Shoal", "at '/nameOverride': 'Shoal' does not match"),
    ("extraEnv[0].value=x", "at '/extraEnv/0': missing property 'name'"),
    ("topologySpreadConstraints[0].maxSkew=1", "at '/topologySpreadConstraints/0': missing"),
])
def test_schema_rejects_a_bad_value_naming_it(kube: KubeAccess, value: str, message: str) -> None:
    for command in (["template", "shoal"], ["lint", "--strict"]):
        result = kube.helm(*command, str(CHART), "--set", value)
        assert result.returncode != 0, f"helm {command[0]} accepted {value}"
        assert message in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize(("values", "message"), [
    (("metricsPort=8080",), "livenessPort and metricsPort are both 8080"),
    (("metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"),
     "metrics.serviceMonitor.enabled needs metrics.service.enabled=true"),
    (("podDisruptionBudget.enabled=true", "podDisruptionBudget.minAvailable=1",
      "podDisruptionBudget.maxUnavailable=0"), "set minAvailable or maxUnavailable, not both"),
])
def test_template_rejects_values_that_contradict_each_other(
        kube: KubeAccess, values: tuple[str, ...], message: str) -> None:
    result = kube.helm("template", "shoal", str(CHART), *sets(values))
    assert result.returncode != 0, f"helm template accepted {values}"
    assert message in result.stderr, result.stderr


def test_values_users_of_the_keda_and_cnpg_charts_expect(kube: KubeAccess) -> None:
    """Names, priority, spreading, extra env and log format/level reach the operator."""
    docs = render(kube, *EXPECTED_VALUES)
    named = {d["kind"]: d["metadata"]["name"] for d in docs
             if d["kind"] in ("Deployment", "ServiceAccount", "Service")}
    assert named == {"Deployment": "jobs-operator", "ServiceAccount": "jobs-operator",
                     "Service": "jobs-operator-metrics"}
    deployment = one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/name"] == "queue"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}}]
    [container] = pod["containers"]
    assert container["env"] == [{"name": "TZ", "value": "UTC"}]
    assert container["args"][-2:] == ["--log-format=json", "--log-level=debug"]
    defaults = one(render(kube), "Deployment")["spec"]["template"]["spec"]
    assert not {"priorityClassName", "topologySpreadConstraints"} & set(defaults)
    assert not [a for a in defaults["containers"][0]["args"] if a.startswith("--log-")]
    assert "env" not in defaults["containers"][0]


def test_cluster_wide_rbac_is_least_privilege(kube: KubeAccess) -> None:
    docs = render(kube)
    all_rules = rules(docs, "ClusterRole")
    for rule in all_rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "delete" not in rule["verbs"], rule
    secrets = [r for r in all_rules if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["operator", "--all-namespaces"]


def test_namespaced_install_uses_roles(kube: KubeAccess) -> None:
    docs = render(kube, "watchNamespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster = rules(docs, "ClusterRole")
    assert [(r["resources"], r["verbs"]) for r in cluster] == [
        (["customresourcedefinitions"], ["list", "watch"]), (["namespaces"], ["list", "watch"])]
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_one_release_name_fits_in_two_namespaces(kube: KubeAccess) -> None:
    """Cluster-scoped objects are named after the release's namespace too."""
    def cluster_scoped(namespace: str) -> set[str]:
        return {f"{d['kind']}/{d['metadata']['name']}" for d in render(kube, namespace=namespace)
                if d["kind"] in ("ClusterRole", "ClusterRoleBinding")}

    team_a, team_b = cluster_scoped("team-a"), cluster_scoped("team-b")
    assert len(team_a) == 4 and not team_a & team_b, (team_a, team_b)


def test_operator_pod_is_restricted_and_alone(kube: KubeAccess) -> None:
    deployment = one(render(kube), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_optional_objects_are_off_by_default(kube: KubeAccess) -> None:
    kinds = sorted(d["kind"] for d in render(kube))
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
                     "Deployment", "Service", "ServiceAccount"]


def test_service_monitor_scrapes_the_metrics_service(kube: KubeAccess) -> None:
    docs = render(kube, "metrics.serviceMonitor.enabled=true",
                  "metrics.serviceMonitor.labels.release=prometheus")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shoal-system"]}
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "30s")


def test_pod_monitor_selects_worker_pods_of_the_watched_namespaces(kube: KubeAccess) -> None:
    everywhere = one(render(kube, "metrics.podMonitor.enabled=true"), "PodMonitor")["spec"]
    assert everywhere["namespaceSelector"] == {"any": True}
    assert everywhere["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "shoal-worker"},
        "matchExpressions": [{"key": "shoal.dev/pool", "operator": "Exists"}]}
    [endpoint] = everywhere["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert endpoint["relabelings"] == [{
        "sourceLabels": ["__meta_kubernetes_pod_label_shoal_dev_pool"], "targetLabel": "pool"}]
    listed = one(render(kube, "metrics.podMonitor.enabled=true", "watchNamespaces={a,b}"),
                 "PodMonitor")["spec"]
    assert listed["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_alert_thresholds_come_from_values(kube: KubeAccess) -> None:
    docs = render(kube, "metrics.prometheusRule.enabled=true",
                  "metrics.prometheusRule.queueAgeSeconds=90",
                  "metrics.prometheusRule.atMaxReplicasFor=1h")
    alerts = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"]
              for r in g["rules"]}
    assert sorted(alerts) == ["ShoalBackendUnreachable", "ShoalDeadLettersGrowing",
                              "ShoalLeaseLosses", "ShoalPoolAtMaxReplicas", "ShoalQueueStalled",
                              "ShoalWorkersBackendErrors"]
    assert alerts["ShoalQueueStalled"]["expr"].strip().endswith("> 90")
    assert alerts["ShoalPoolAtMaxReplicas"]["for"] == "1h"
    assert "{{ $labels.pool }}" in alerts["ShoalQueueStalled"]["annotations"]["summary"]


@pytest.mark.parametrize(("values", "budget"), [
    ((), {"maxUnavailable": 1}),
    (("podDisruptionBudget.minAvailable=1",), {"minAvailable": 1}),
    (("podDisruptionBudget.maxUnavailable=50%",), {"maxUnavailable": "50%"}),
])
def test_pod_disruption_budget_selects_the_operator_pod(
        kube: KubeAccess, values: tuple[str, ...], budget: dict[str, Any]) -> None:
    docs = render(kube, "podDisruptionBudget.enabled=true", *values)
    pdb, deployment = one(docs, "PodDisruptionBudget"), one(docs, "Deployment")
    spec = dict(pdb["spec"])
    selected = spec.pop("selector")["matchLabels"]
    assert spec == budget
    assert selected.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.fixture
def namespaces(kube: KubeAccess) -> Iterator[tuple[str, str]]:
    """A release namespace enforcing the `restricted` Pod Security Standard, and a
    namespace for the operator to watch; both deleted afterwards."""
    suffix = uuid.uuid4().hex[:6]
    release_ns, watched = f"shoal-op-{suffix}", f"shoal-watched-{suffix}"
    kubectl_ok(kube, "create", "namespace", release_ns)
    kubectl_ok(kube, "label", "namespace", release_ns,
               "pod-security.kubernetes.io/enforce=restricted")
    kubectl_ok(kube, "create", "namespace", watched)
    yield release_ns, watched
    kube.kubectl("delete", "namespace", release_ns, watched, "--wait=false")


def wait_operator_ready(kube: KubeAccess, namespace: str, deployment: str) -> dict[str, Any]:
    """Wait for the rollout, then return the operator pod, which must be Ready."""
    kubectl_ok(kube, "rollout", "status", f"deployment/{deployment}", "-n", namespace,
               "--timeout=90s")
    pods = kube.get_json("pods", "-n", namespace, "-l", SELECTOR)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    ready = {c["type"]: c["status"] for c in live[0]["status"]["conditions"]}["Ready"]
    assert ready == "True", live[0]["status"]
    return dict(live[0])


def objects(manifest: str) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of each object in a rendered manifest."""
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
            for d in yaml.safe_load_all(manifest) if d}


def gone(kube: KubeAccess, objs: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """The objects of `objs` that still exist (or are still being deleted)."""
    left = set()
    for kind, namespace, name in objs:
        where = ["-n", namespace] if namespace else []
        if kube.get_json(kind.lower(), name, *where) is not None:
            left.add((kind, namespace, name))
    return left


def operator_pods_left(kube: KubeAccess, namespace: str) -> list[str]:
    found = kube.get_json("pods,replicasets", "-n", namespace, "-l", SELECTOR)
    return [i["metadata"]["name"] for i in found["items"]]


def test_helm_upgrade_and_uninstall_leave_no_orphans(
        kube: KubeAccess, namespaces: tuple[str, str]) -> None:
    """Install, upgrade and uninstall with Helm; every object any revision rendered is
    deleted with the release, the CRDs stay."""
    release_ns, watched = namespaces
    image = local_image()
    helm_ok(kube, "install", "shoal", str(CHART), "-n", release_ns, "--wait", "--timeout=120s",
            *sets((f"watchNamespaces={{{watched}}}", *image)))
    try:
        for crd in CRDS:  # from the chart's crds/ when the cluster had none
            assert kube.get_json("crd", crd) is not None, f"{crd} is not installed"
        first = objects(helm_ok(kube, "get", "manifest", "shoal", "-n", release_ns))
        assert ("Service", release_ns, "shoal-metrics") in first
        first_pod = wait_operator_ready(kube, release_ns, "shoal")

        # Revision 2 drops the metrics Service, adds a PDB and a second watched namespace.
        helm_ok(kube, "upgrade", "shoal", str(CHART), "-n", release_ns, "--wait",
                "--timeout=120s", *sets((
                    f"watchNamespaces={{{watched},{release_ns}}}", *image,
                    "metrics.service.enabled=false", "podDisruptionBudget.enabled=true",
                    "extraArgs={--verbose}")))
        second = objects(helm_ok(kube, "get", "manifest", "shoal", "-n", release_ns))
        assert ("PodDisruptionBudget", release_ns, "shoal") in second
        assert ("Role", release_ns, "shoal") in second
        assert gone(kube, first - second) == set()
        second_pod = wait_operator_ready(kube, release_ns, "shoal")
        assert second_pod["metadata"]["uid"] != first_pod["metadata"]["uid"]
        assert "--verbose" in second_pod["spec"]["containers"][0]["args"]
    finally:
        helm_ok(kube, "uninstall", "shoal", "-n", release_ns, "--wait", "--timeout=120s")

    assert gone(kube, first | second) == set()
    wait_for(lambda: not operator_pods_left(kube, release_ns), 60,
             "the operator's ReplicaSets and pods to be garbage-collected")
    # Helm never deletes what it installed from crds/ (its documented behaviour):
    # the CRDs outlive the release.
    for crd in CRDS:
        assert kube.get_json("crd", crd) is not None, f"{crd} was deleted"


def test_rendered_chart_applies_and_operator_becomes_ready(
        kube: KubeAccess, namespaces: tuple[str, str]) -> None:
    """`helm template | kubectl apply`: the API server (with Pod Security admission at
    `restricted`) accepts every object and the operator pod becomes Ready."""
    release_ns, watched = namespaces
    kubectl_ok(kube, "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    manifest = helm_ok(kube, "template", "shoal-tpl", str(CHART), "-n", release_ns,
                       *sets((f"watchNamespaces={{{watched}}}", *local_image())))
    try:
        kubectl_ok(kube, "apply", "-f", "-", input=manifest)
        pod = wait_operator_ready(kube, release_ns, "shoal-tpl")
        # Namespaced, kopf lists and watches namespaces: refused, it retries for
        # about a minute (logging each attempt) before serving anything.
        time.sleep(3)
        log = kubectl_ok(kube, "logs", "-n", release_ns, pod["metadata"]["name"])
        assert "Forbidden" not in log and "Not enough permissions" not in log, log
        service_account = f"system:serviceaccount:{release_ns}:shoal-tpl"
        for verb, namespace, answer in (("get", watched, "yes"), ("list", watched, "no"),
                                        ("get", "default", "no")):
            can = kube.kubectl("auth", "can-i", verb, "secrets", "-n", namespace,
                               f"--as={service_account}")
            assert can.stdout.strip() == answer, (verb, namespace, can.stdout, can.stderr)
    finally:
        kubectl_ok(kube, "delete", "--ignore-not-found", "--wait=true", "-f", "-",
                   input=manifest)
    assert gone(kube, objects(manifest)) == set()
    wait_for(lambda: not operator_pods_left(kube, release_ns), 60,
             "the operator's ReplicaSets and pods to be garbage-collected")
