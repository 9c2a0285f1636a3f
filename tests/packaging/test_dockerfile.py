"""The Dockerfile's commands, run for real: no container engine exists here, so
`dockerfile.replay` builds the image's file system under a temporary root (pip
fetches the dependencies; its cache makes reruns fast) and the tests run the
final stage's entry point the way a Pod would.

A file the package needs but the Dockerfile does not COPY fails the build or
one of these commands; so does an entry point that imports from the source tree.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from shoal.backend import Backend
from tests.packaging.dockerfile import Image, replay
from tests.support import eventually

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return replay(REPO / "Dockerfile", REPO, tmp_path_factory.mktemp("image") / "root")


def run(image: Image, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*image.entrypoint, *args], cwd=cwd, env=image.env, text=True,
                          capture_output=True, timeout=60)


def test_entry_point_is_the_venv_script(image: Image) -> None:
    """`shoal` resolves inside the image's venv, never to the developer's checkout."""
    found = subprocess.run(["sh", "-c", f'command -v "{image.entrypoint[0]}"'], env=image.env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).is_relative_to(image.root / "opt/shoal/bin"), found
    assert not (image.root / "src").exists()


def test_user_is_numeric_and_not_root(image: Image) -> None:
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0, image.user


@pytest.mark.parametrize("command", [[], ["operator", "--help"], ["worker", "--help"]],
                         ids=["default", "operator", "worker"])
def test_help_from_an_unrelated_directory(image: Image, command: list[str],
                                          tmp_path: Path) -> None:
    result = run(image, *(command or image.cmd), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    prog = " ".join(["shoal", *command[:1]])
    assert result.stdout.startswith(f"usage: {prog} "), result.stdout


async def test_example_pool_app_runs_a_task(image: Image, dsn: str, tmp_path: Path) -> None:
    """What examples/workerpool.yaml runs: `shoal worker --app <its spec.app>` in the
    image's working directory, after `shoal migrate`; a task enqueued with the image's
    `shoal enqueue` is run by it, and SIGTERM drains it with exit status 0."""
    pool = next(d for d in yaml.safe_load_all((REPO / "examples/workerpool.yaml").read_text())
                if d["kind"] == "WorkerPool")
    env = {**image.env, "SHOAL_DSN": dsn}
    migrated = await asyncio.to_thread(
        subprocess.run, [*image.entrypoint, "migrate"], cwd=image.workdir, env=env,
        capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        worker = await asyncio.create_subprocess_exec(
            *image.entrypoint, "worker", "--app", pool["spec"]["app"], "--metrics-port", "0",
            "--drain-timeout", "5s", cwd=image.workdir, env=env, stdout=sink,
            stderr=asyncio.subprocess.STDOUT)
    backend = await Backend.connect(dsn, max_size=2)
    try:
        # `shoal enqueue` takes a name a worker has served (or --app/--force)
        await eventually(lambda: backend.pool.fetchval("SELECT count(*) FROM shoal.workers"),
                         within=60, what="the worker to register")
        enqueued = await asyncio.to_thread(
            subprocess.run, [*image.entrypoint, "enqueue", "add", "--payload",
                             json.dumps({"a": 2, "b": 3})],
            cwd=image.workdir, env=env, capture_output=True, text=True, timeout=60)
        assert enqueued.returncode == 0, enqueued.stderr
        task_id = int(enqueued.stdout)

        async def finished() -> object:
            assert worker.returncode is None, f"the worker exited: {log.read_text()}"
            task = await backend.get_task(task_id)
            return task if task.state not in ("ready", "running") else None

        try:
            task = await eventually(finished, within=60, what=f"task {task_id} to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker log:\n{log.read_text()}") from None
        assert (task.state, task.result) == ("succeeded", {"sum": 5}), log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0, log.read_text()
    finally:
        await backend.close()
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

