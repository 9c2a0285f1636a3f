"""The task registry: decorator options, typed inputs, TaskContext detection, bad names,
and `load_app` references that cannot be loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from shoal import App, TaskContext
from shoal.errors import InvalidInput, UnknownTask
from shoal.worker.app import load_app

REPO = Path(__file__).resolve().parents[2]


class Point(BaseModel):
    x: int
    y: int = 0


class Total(BaseModel):
    total: int


def make_app() -> App:
    app = App("t")

    @app.task("typed", retries=3, timeout="30s", priority=2, tags=["gpu"], backoff="250ms",
              max_backoff="1m")
    async def typed(p: Point, ctx: TaskContext) -> Total:
        return Total(total=p.x + p.y + ctx.attempt)

    @app.task()
    def plain(payload: Any) -> Any:
        return payload

    @app.task("ctx-named")
    async def named(payload: dict[str, Any], context: TaskContext, other: int = 0) -> None:
        return None

    return app


def ctx() -> TaskContext:
    return TaskContext(task_id=1, name="typed", attempt=2, max_attempts=4)


def test_options_and_defaults_are_recorded() -> None:
    app = make_app()
    typed = app.get("typed")
    assert (typed.retries, typed.max_attempts, typed.timeout, typed.priority, typed.tags,
            typed.backoff, typed.max_backoff) == (3, 4, 30.0, 2, ("gpu",), 0.25, 60.0)
    assert typed.is_async and typed.input_model is Point and typed.context_param == "ctx"
    plain = app.get("plain")  # the function's name is the default task name
    assert (plain.retries, plain.max_attempts, plain.timeout, plain.tags) == (0, 1, None, ())
    assert not plain.is_async and plain.input_model is None and plain.context_param is None
    assert app.get("ctx-named").context_param == "context"


def test_typed_payload_is_validated() -> None:
    typed = make_app().get("typed")
    assert asyncio.run(typed.call({"x": 2, "y": 3}, ctx())) == Total(total=7)
    with pytest.raises(InvalidInput, match="payload for task 'typed' is invalid"):
        typed.call({"x": "not a number"}, ctx())
    with pytest.raises(InvalidInput):
        typed.validate_payload(None)


def test_untyped_payload_passes_through() -> None:
    assert make_app().get("plain").call({"any": [1, "thing"]}, ctx()) == {"any": [1, "thing"]}


def test_unknown_task_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownTask, match=r"unknown task 'nope'; registered tasks: "
                                          r"ctx-named, plain, typed"):
        make_app().get("nope")
    with pytest.raises(UnknownTask, match="registered tasks: none"):
        App().get("x")


@pytest.mark.parametrize("name", ["", "has space", "-leading", "a" * 201, "semi;colon",
                                  "slash/name"])
def test_bad_task_names_are_refused(name: str) -> None:
    app = App()
    with pytest.raises(ValueError, match="invalid task name"):
        app.task(name)(lambda payload: None)


def test_registration_errors() -> None:
    app = App()
    app.task("a")(lambda payload: None)
    with pytest.raises(ValueError, match="registered twice"):
        app.task("a")(lambda payload: None)
    with pytest.raises(ValueError, match="retries must be >= 0"):
        app.task("b", retries=-1)(lambda payload: None)
    with pytest.raises(ValueError, match="must take the payload"):
        app.task("c")(lambda: None)
    with pytest.raises(InvalidInput, match="invalid tag"):
        app.task("d", tags=["bad tag"])(lambda payload: None)
    with pytest.raises(InvalidInput, match="invalid duration"):
        app.task("e", timeout="soon")(lambda payload: None)
    assert list(app.tasks) == ["a"]


def test_load_app_by_module_and_by_file() -> None:
    assert load_app("tests.apps.recorder:app").name == "recorder"
    demo = load_app(f"{REPO}/examples/tasks.py:app")
    assert {"noop", "echo", "sleep", "fail", "add", "word-count"} <= set(demo.tasks)


@pytest.mark.parametrize(("reference", "message"), [
    ("no_colon", "use MODULE:APP"),
    (":app", "use MODULE:APP"),
    ("tests.apps.recorder:", "use MODULE:APP"),
    ("no.such.module:app", "cannot import 'no.such.module'"),
    ("/no/such/file.py:app", "no such file"),
    ("tests.apps.recorder:nothing", "'nothing' in 'tests.apps.recorder' is not a shoal.App"),
    ("tests.apps.recorder:Run", "is not a shoal.App"),
])
def test_load_app_errors_are_clear(reference: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_app(reference)
