"""The operator's services and its health endpoints: failing rounds, a dead service,
/healthz and /readyz over real HTTP, and a scaler facing an API server that refuses
connections (a real closed port, no mock)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

from shoal_operator import kube
from shoal_operator.backends import Backends
from shoal_operator.health import Health
from shoal_operator.kube import Kube
from shoal_operator.pools.autoscaler import Autoscaler, PoolScaler
from shoal_operator.pools.registry import PoolRegistry
from shoal_operator.pools.status import StatusWriter
from tests.cluster.postgres import free_port
from tests.support import eventually


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(name: str, service: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": service})


@pytest.fixture
async def served() -> AsyncIterator[tuple[Health, int]]:
    health, port = Health(), free_port()
    runner = await health.serve(port, "127.0.0.1")
    yield health, port
    await runner.cleanup()


async def test_ready_only_once_started_and_while_no_service_keeps_failing(
        served: tuple[Health, int]) -> None:
    health, port = served
    assert await asyncio.to_thread(get, port, "/healthz") == (200, "ok\n")
    assert await asyncio.to_thread(get, port, "/readyz") == (503, "not ready:\nstarting\n")
    health.ready.set()
    assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
    for _ in range(2):
        health.failed("scaler/ns/p", OSError("refused"), expected=True)
    assert not health.is_failing("scaler/ns/p")
    assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
    assert health.failed("scaler/ns/p", OSError("refused"), expected=True) == 3
    status, text = await asyncio.to_thread(get, port, "/readyz")
    assert status == 503
    assert "scaler/ns/p: failed 3 rounds in a row: OSError: refused" in text
    assert sample("shoal_operator_service_failing", "scaler/ns/p") == 1
    assert sample("shoal_operator_service_failures_total", "scaler/ns/p") == 3
    health.succeeded("scaler/ns/p")
    assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
    assert sample("shoal_operator_service_failing", "scaler/ns/p") == 0
    health.forget("scaler/ns/p")
    assert sample("shoal_operator_service_failures_total", "scaler/ns/p") is None


async def test_a_service_that_raises_is_dead_and_stops_the_operator(
        served: tuple[Health, int], caplog: pytest.LogCaptureFixture) -> None:
    health, port = served
    health.ready.set()

    async def ends() -> None:
        return None

    async def breaks() -> None:
        raise KeyError("status")

    await health.supervise("quiet", ends)
    assert not health.stop.is_set() and health.dead == {}
    await health.supervise("workflow-sync", breaks)
    assert health.stop.is_set()
    assert health.dead == {"workflow-sync": "KeyError: 'status'"}
    assert "Traceback" in caplog.text and "workflow-sync died" in caplog.text
    status, text = await asyncio.to_thread(get, port, "/readyz")
    assert status == 503 and "workflow-sync: died: KeyError: 'status'" in text


@pytest.fixture
async def unreachable_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                          ) -> AsyncIterator[Kube]:
    """The operator's API client pointed at a port where nothing listens."""
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    client = await kube.connect()
    yield client
    await client.close()


async def test_a_scaler_that_keeps_failing_makes_the_operator_not_ready(
        unreachable_api: Kube, caplog: pytest.LogCaptureFixture) -> None:
    health = Health()
    health.ready.set()
    body = kopf.Body({"metadata": {"namespace": "ns", "name": "p"}, "spec": {
        "app": "tasks.py:app", "template": {"image": "shoal:1"},
        "database": {"secretRef": {"name": "pg"}}}})
    client = unreachable_api
    autoscaler = Autoscaler(client, Backends(client, "shoal"), PoolRegistry(),
                            StatusWriter(client), health, recheck_seconds=0.2)
    scaler = PoolScaler(body, autoscaler)

    class Stopped:  # what the scaler reads of kopf's DaemonStopped flag
        def __init__(self) -> None:
            self.event = asyncio.Event()

        def __bool__(self) -> bool:
            return self.event.is_set()

        async def wait(self) -> None:
            await self.event.wait()

    stopped = Stopped()
    task = asyncio.create_task(scaler.run(stopped))  # type: ignore[arg-type]
    try:
        await eventually(lambda: health.is_failing(scaler.service), within=20,
                         what="the scaler failing")
    finally:
        stopped.event.set()
        await asyncio.wait_for(task, 10)
    [problem] = health.problems()
    assert problem.startswith("scaler/ns/p: failed 3 rounds in a row: ")
    assert "ClientConnectorError: Cannot connect to host 127.0.0.1" in problem, problem
    assert "round failed (3 in a row)" in caplog.text
    assert not health.dead  # retried, never died
