"""Boolean annotations users set with `kubectl annotate`: `pause=true` or `shoal.dev/pause=true`.

`read_flag` is the one reading of such an annotation for every resource: the
bare and the `shoal.dev/`-prefixed key mean the same; a value other than
true/false, or the two spellings disagreeing, is a problem to report, never a
silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "shoal.dev/"
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True, slots=True)
class Setting:
    """One annotation the user set: the key used, its raw value, and the boolean (None: invalid)."""

    key: str
    value: str
    flag: bool | None


def read_flag(annotations: Mapping[str, str] | None, name: str,
              problems: list[str]) -> Setting | None:
    """The setting of flag `name` (None when absent); what is wrong is appended to `problems`."""
    annotations = annotations or {}
    present = [(k, annotations[k]) for k in (name, PREFIX + name) if k in annotations]
    if not present:
        return None
    settings = [Setting(k, v, _BOOLEANS.get(v.strip().lower())) for k, v in present]
    for s in settings:
        if s.flag is None:
            problems.append(f"annotation {s.key}={s.value!r} is not true or false: "
                            f"use {s.key}=true or {s.key}=false")
    valid = [s for s in settings if s.flag is not None]
    if len({s.flag for s in valid}) > 1:
        problems.append(" and ".join(f"{s.key}={s.value}" for s in valid)
                        + " disagree: set one of them")
        return Setting(valid[0].key, valid[0].value, None)
    if len(valid) < len(settings):
        return Setting(settings[0].key, settings[0].value, None)
    return valid[0]
