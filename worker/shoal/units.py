"""Parsing of the units users type: durations like `30s`, `5m`, `1h30m`, `250ms`."""

from __future__ import annotations

import re

from shoal.errors import InvalidInput

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float:
    """Return seconds for `30s`, `5m`, `1h30m`, `250ms` or a bare number of seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise InvalidInput(
                    f"invalid duration {value!r}: use a number with a unit, "
                    "e.g. 30s, 5m, 1h30m, 250ms"
                ) from None
            seconds = sum(float(n) * _SECONDS[u] for n, u in parts)
    if seconds < 0:
        raise InvalidInput(f"invalid duration {value!r}: must not be negative")
    return seconds
