"""How commands print: text for people (`-o text`, the default: a table where there are
rows), or the same data as JSON (`-o json`) or YAML (`-o yaml`) for programs.

One spelling for every command, kubectl's for the data formats; `-o table`, which
some commands took before, is still accepted and means `text`.

Rendering is pure (rows and the time in, text out), so docs/reference.md shows
what the commands print from the same code (hack/gen_docs.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

OUTPUTS = ("text", "json", "yaml")
ALIASES = {"table": "text"}  # the older spelling of some commands


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=lambda v: ALIASES.get(v, v), choices=OUTPUTS,
                        default="text",
                        help="text (for people, the default), json or yaml")


def as_data(items: Any, output: str) -> str:
    """`items` (dataclasses, lists of them, plain data) as JSON or YAML (`output`)."""
    text = as_json(items)
    if output == "yaml":
        return yaml.safe_dump(json.loads(text), sort_keys=False, allow_unicode=True).rstrip("\n")
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned like kubectl's: upper-case headers, two spaces between columns."""
    cells = [[str(h).upper() for h in headers], *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def as_json(items: Any) -> str:
    """Dataclasses (and lists of them) as indented JSON; times in ISO 8601."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return value
    data = [plain(i) for i in items] if isinstance(items, list) else plain(items)
    return json.dumps(data, default=str, indent=2)


def age(seconds: float | None) -> str:
    """A duration as kubectl prints ages: 45s, 12m, 3h, 5d (each unit from two of
    it on); `-` when there is none."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size:
            return f"{s // size}{unit}"
    return f"{s}s"


def since(moment: datetime | None, now: datetime) -> str:
    return age(None if moment is None else (now - moment).total_seconds())


def timestamp(moment: datetime | None) -> str:
    """UTC, to the second: 2025-01-31T08:00:00Z."""
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
