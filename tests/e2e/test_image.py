"""Shoal's image, built from the Dockerfile and run the way a restricted pod runs it:
as uid 10001, with a read-only root filesystem and only /tmp writable."""

from __future__ import annotations

import asyncio
import json

from shoal import Client
from shoal.backend import Backend
from tests.cluster.engine import docker
from tests.cluster.images import SHOAL_IMAGE, image_size
from tests.support import eventually

# The image is Debian's (or upstream's) slim Python plus the venv: a budget, not a target.
MAX_IMAGE_BYTES = 350 * 1024 * 1024
RESTRICTED = ("--read-only", "--user", "10001:10001", "--tmpfs", "/tmp", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges")


def test_image_runs_as_10001_by_default_and_stays_small(images: list[str]) -> None:
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", SHOAL_IMAGE).stdout)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["shoal"]
    size = image_size(SHOAL_IMAGE)
    print(f"{SHOAL_IMAGE}: {size / 2**20:.0f} MiB")
    assert size < MAX_IMAGE_BYTES, f"{size / 2**20:.0f} MiB"


def test_help_runs_read_only_as_10001(images: list[str]) -> None:
    for command in ((), ("worker", "--help"), ("operator", "--help")):
        result = docker("run", "--rm", *RESTRICTED, SHOAL_IMAGE, *command, check=False)
        assert result.returncode == 0, result.stderr
        assert "usage: shoal" in result.stdout, result.stdout


async def test_worker_runs_a_task_and_drains_read_only_as_10001(images: list[str],
                                                                 dsn: str) -> None:
    """`shoal worker` from the image claims, runs and reports a task, and on
    `docker stop` (SIGTERM) drains and exits 0."""
    backend = await Backend.connect(dsn)
    await backend.migrate()
    await backend.close()
    async with await Client.connect(dsn) as client:
        name = f"shoal-image-test-{dsn.rpartition('_')[2]}"
        docker("run", "-d", "--name", name, "--network", "host", *RESTRICTED,
               "-e", f"SHOAL_DSN={dsn}", SHOAL_IMAGE, "worker", "--app", "examples/tasks.py:app",
               "--metrics-port", "0", "--drain-timeout", "5s")
        try:
            task = await client.enqueue("add", {"a": 2, "b": 3})
            done = await eventually(lambda: _finished(client, task), within=60,
                                    what="the task to finish in the container")
            assert done == {"sum": 5}
            stop = await asyncio.to_thread(docker, "stop", "-t", "20", name)
            assert stop.returncode == 0
            state = json.loads(docker("inspect", "-f", "{{json .State}}", name).stdout)
            logs = docker("logs", name).stderr
            assert state["ExitCode"] == 0, logs
            assert "drained" in logs, logs
        finally:
            docker("rm", "-f", name, check=False)


async def _finished(client: Client, task_id: int) -> object:
    task = await client.task(task_id)
    return task.result if task.state == "succeeded" else None
