"""A task's declared tags and priority hold without the app: a worker registers them
with the task's name, and an enqueue that sets neither (`shoal enqueue` without
`--app`, a client without the app) takes them in its own statement."""

from __future__ import annotations

from shoal import App, Client
from shoal.backend import Backend, NewTask
from tests.support import cli, eventually, running_worker

app = App()


@app.task("render", tags=("gpu",), priority=3)
async def render(payload: object) -> object:
    return payload


@app.task("plain")
async def plain(payload: object) -> object:
    return payload


async def test_enqueue_without_the_app_keeps_the_declared_tags_and_priority(
        dsn: str, backend: Backend) -> None:
    async with running_worker(app, dsn, tags=("gpu",)):
        await eventually(lambda: backend.task_name_known("default", "render"),
                         what="the worker to declare its tasks")
    enqueued = await cli("enqueue", "render", "--dsn", dsn, "--delay", "1h")
    assert enqueued.returncode == 0, enqueued.stderr
    task = await backend.get_task(int(enqueued.stdout))
    assert (task.tags, task.priority) == (["gpu"], 3)

    # What the producer says wins; an explicit empty list is no tags.
    given = await cli("enqueue", "render", "--dsn", dsn, "--tags", "gpu,big",
                      "--priority", "-1", "--delay", "1h")
    task = await backend.get_task(int(given.stdout))
    assert (task.tags, task.priority) == (["gpu", "big"], -1)
    client = Client(backend)
    (none, other, mixed) = await backend.enqueue([
        NewTask("render", tags=()), NewTask("plain"), NewTask("render", priority=9)])
    assert [((t := await client.task(i)).tags, t.priority) for i in (none, other, mixed)] == [
        ([], 3), ([], 0), (["gpu"], 9)]

    # A name no worker declared, or declared by an older version (no tags stored): as before.
    await backend.pool.execute("INSERT INTO shoal.task_names (namespace, name) "
                               "VALUES ('default', 'legacy')")
    (legacy, unknown) = await backend.enqueue([NewTask("legacy"), NewTask("nobody")])
    assert [((t := await client.task(i)).tags, t.priority) for i in (legacy, unknown)] == [
        ([], 0), ([], 0)]


async def test_a_redeclaration_replaces_the_declared_tags(backend: Backend) -> None:
    await backend.register_task_names("default", ["render"], [("gpu",)], [3])
    await backend.register_task_names("default", ["render"], [("gpu", "big")], [0])
    await backend.register_task_names("default", ["render"], [("gpu", "big")], [0])
    (task_id,) = await backend.enqueue([NewTask("render")])
    task = await backend.get_task(task_id)
    assert (task.tags, task.priority) == (["gpu", "big"], 0)
