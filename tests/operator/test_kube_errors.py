"""The operator's API client says why the real API server refused a request."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from shoal_operator import kube as operator_kube
from shoal_operator.kube import KubeError, deployment_path
from tests.cluster.access import KubeAccess
from tests.support import wait_for

pytestmark = pytest.mark.kube


@pytest.fixture
async def admin_client(kube: KubeAccess,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[operator_kube.Kube]:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    client = await operator_kube.connect()
    yield client
    await client.close()


async def test_a_terminating_namespace_is_recognised(kube: KubeAccess,
                                                     admin_client: operator_kube.Kube) -> None:
    namespace = f"term-{uuid.uuid4().hex[:8]}"
    held = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": namespace,
                         "finalizers": ["shoal.dev/test-hold"]}}
    assert kube.kubectl("create", "namespace", namespace).returncode == 0
    assert kube.kubectl("apply", "-f", "-", input=json.dumps(held)).returncode == 0
    try:
        assert kube.kubectl("delete", "namespace", namespace, "--wait=false").returncode == 0
        wait_for(lambda: kube.kubectl("get", "namespace", namespace, "-o",
                                      "jsonpath={.status.phase}").stdout == "Terminating",
                 30, "the namespace to be Terminating")
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "late", "namespace": namespace},
                      "spec": {"selector": {"matchLabels": {"a": "b"}},
                               "template": {"metadata": {"labels": {"a": "b"}},
                                            "spec": {"containers": [{"name": "c",
                                                                     "image": "x"}]}}}}
        client = admin_client
        with pytest.raises(KubeError) as refused:
            await client.apply(deployment_path(namespace, "late"), deployment)
        assert refused.value.status == 403 and refused.value.namespace_terminating
        with pytest.raises(KubeError) as missing:
            await client.get(deployment_path(namespace, "never"))
        assert missing.value.not_found and not missing.value.namespace_terminating
    finally:
        kube.kubectl("patch", "configmap", "held", "-n", namespace, "--type=merge",
                     "-p", '{"metadata":{"finalizers":null}}')
