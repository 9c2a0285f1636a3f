"""Logs as one line per record: `text` for people, `json` for log collectors.

`configure()` sets up the root logger of `shoal worker` and `shoal operator`.
Every record is one line: a traceback is a field of its record (`traceback`
in JSON, an escaped `traceback="..."` in text), never lines of its own.

Inside an attempt, every record carries the attempt's `task_id`, `task`,
`attempt`, `workflow` and `pod`, whoever logs it (the handler, a library it
calls, the runtime): the worker runs each attempt in a context whose
`TASK_FIELDS` holds them (`attempt_context`), and the formatters read it.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from shoal.errors import InvalidInput

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

TASK_FIELDS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "shoal_task_fields", default=None)


def attempt_context(task_id: int, task: str, attempt: int, workflow_id: UUID | None,
                    pod: str) -> contextvars.Context:
    """A copy of the current context in which records carry this attempt's fields."""
    context = contextvars.copy_context()
    fields = {"task_id": task_id, "task": task, "attempt": attempt,
              "workflow": str(workflow_id) if workflow_id else None, "pod": pod}
    context.run(TASK_FIELDS.set, fields)
    return context


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a record says beyond its message: the attempt's fields, the Kubernetes
    object kopf logs about, the traceback."""
    fields = dict(TASK_FIELDS.get() or {})
    ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers set it
    if isinstance(ref, Mapping):
        fields["object"] = "/".join(str(ref[k]) for k in ("kind", "namespace", "name")
                                    if ref.get(k))
    if record.exc_info:
        fields["traceback"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        fields["traceback"] = record.exc_text
    if record.stack_info:
        fields["stack"] = record.stack_info
    return fields


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _time(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), **_fields(record)}
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...` on one line (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name}: {_one_line(record.getMessage())}"
        extras = [f"{key}={_value(value)}" for key, value in _fields(record).items()
                  if value is not None]
        return " ".join([line, *extras])


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "\n\r\\='):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure(fmt: str = "text", level: str = "info") -> None:
    """Send every record to stderr, one line each, in `fmt` (text or json), from `level` up."""
    if fmt not in FORMATS:
        raise InvalidInput(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    if level.lower() not in LEVELS:
        raise InvalidInput(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`--log-format` and `--log-level` (defaults: $SHOAL_LOG_FORMAT, $SHOAL_LOG_LEVEL)."""
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="one line per record: text, or json for log collectors "
                             "(default $SHOAL_LOG_FORMAT or text)")
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="default $SHOAL_LOG_LEVEL or info")
