"""Log records as one line each, in text and JSON: the attempt's fields on every record
logged inside it (also from a thread the attempt's context was copied to), the
traceback as a field, bad settings refused."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from shoal import logs
from shoal.errors import InvalidInput

WORKFLOW = uuid.UUID("6a1e9c52-3f59-4a43-9d6c-2f3b0d6c8e11")


def record(message: str, *, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("shoal.test", logging.WARNING, __file__, 1, message, (), exc_info)


def in_attempt(formatter: logging.Formatter, rec: logging.LogRecord) -> str:
    context = logs.attempt_context(7, "resize", 2, WORKFLOW, "pool-abc-1")
    return context.run(formatter.format, rec)


def test_json_lines_carry_the_attempt_and_the_traceback() -> None:
    line = in_attempt(logs.JsonFormatter(), record("failed\nbadly", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed\nbadly" and entry["level"] == "WARNING"
    assert entry["logger"] == "shoal.test" and entry["time"].endswith("Z")
    assert (entry["task_id"], entry["task"], entry["attempt"], entry["workflow"],
            entry["pod"]) == (7, "resize", 2, str(WORKFLOW), "pool-abc-1")
    assert entry["traceback"].startswith("Traceback (most recent call last):")
    assert entry["traceback"].endswith("RuntimeError: boom\nsecond line")


def test_text_lines_are_one_line_with_fields() -> None:
    line = in_attempt(logs.TextFormatter(), record("failed\nbadly", exc=True))
    assert "\n" not in line
    assert " WARNING shoal.test: failed\\nbadly task_id=7 task=resize attempt=2 " in line
    assert f"workflow={WORKFLOW} pod=pool-abc-1 traceback=\"Traceback " in line
    assert line.endswith('RuntimeError: boom\\nsecond line"')


def test_outside_an_attempt_there_are_no_task_fields() -> None:
    entry = json.loads(logs.JsonFormatter().format(record("idle")))
    assert set(entry) == {"time", "level", "logger", "message"}
    text = logs.TextFormatter().format(record("idle"))
    assert text.endswith(" WARNING shoal.test: idle")


def test_kopf_object_references_become_a_field() -> None:
    rec = record("scaled")
    rec.k8s_ref = {"kind": "WorkerPool", "namespace": "team-a", "name": "etl"}
    assert json.loads(logs.JsonFormatter().format(rec))["object"] == "WorkerPool/team-a/etl"


async def test_the_context_follows_tasks_and_executor_threads() -> None:
    """As the worker runs attempts: a task created with the context, a thread given a copy."""
    seen: list[object] = []

    def in_thread() -> None:
        seen.append((logs.TASK_FIELDS.get() or {}).get("task_id"))

    async def attempt() -> None:
        seen.append((logs.TASK_FIELDS.get() or {}).get("task_id"))
        with ThreadPoolExecutor(1) as pool:
            await asyncio.get_running_loop().run_in_executor(
                pool, contextvars.copy_context().run, in_thread)

    await asyncio.create_task(attempt(), context=logs.attempt_context(9, "t", 1, None, "p"))
    assert seen == [9, 9]
    assert logs.TASK_FIELDS.get() is None  # the caller's context is untouched


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidInput, match="log format 'xml': use one of text, json"):
        logs.configure("xml", "info")
    with pytest.raises(InvalidInput, match="log level 'loud'"):
        logs.configure("text", "loud")
