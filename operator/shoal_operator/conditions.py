"""Kubernetes-style status conditions, as pure functions over plain dicts.

A condition is `{type, status, reason, message, lastTransitionTime,
observedGeneration}` (the shape of `metav1.Condition`). `set_condition`
guarantees: one entry per type, `lastTransitionTime` changes only when
`status` changes, and the input list is never mutated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Status = Literal["True", "False", "Unknown"]
Condition = dict[str, Any]


class StatusCondition(BaseModel):
    """The schema of one condition in a resource's status (what `make_condition` builds)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="forbid")

    type: str = Field(description="Ready, Reconciling, Stalled, ... (one entry per type).")
    status: Status = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase word a program may compare.")
    message: str = Field("", description="What it means, in words.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(None, json_schema_extra={"format": "int64"},
                                            description="The spec generation it was judged "
                                            "against.")


def now_rfc3339(now: datetime | None = None) -> str:
    """`2026-01-02T03:04:05Z`: the timestamp format of Kubernetes conditions."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_condition(type_: str, status: bool | Status, reason: str, message: str = "", *,
                   generation: int | None = None, now: datetime | None = None) -> Condition:
    """A new condition; `status` may be a bool (True → "True")."""
    text: str = status if isinstance(status, str) else ("True" if status else "False")
    condition: Condition = {"type": type_, "status": text, "reason": reason,
                            "message": message, "lastTransitionTime": now_rfc3339(now)}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def set_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str,
                  status: bool | Status, reason: str, message: str = "", *,
                  generation: int | None = None,
                  now: datetime | None = None) -> list[Condition]:
    """Return `conditions` with `type_` set; its transition time kept if status is unchanged."""
    new = make_condition(type_, status, reason, message, generation=generation, now=now)
    result: list[Condition] = []
    replaced = False
    for old in conditions or ():
        if old.get("type") != type_:
            result.append(dict(old))
            continue
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            new["lastTransitionTime"] = old["lastTransitionTime"]
        result.append(new)
        replaced = True
    if not replaced:
        result.append(new)
    return result


def set_conditions(conditions: Sequence[Mapping[str, Any]] | None,
                   updates: Iterable[Condition], *,
                   now: datetime | None = None) -> list[Condition]:
    """Apply several `make_condition`-shaped updates with `set_condition`."""
    result = [dict(c) for c in conditions or ()]
    for u in updates:
        result = set_condition(result, u["type"], u["status"], u["reason"],
                               u.get("message", ""), generation=u.get("observedGeneration"),
                               now=now)
    return result


# A status's `conditions`: one entry per type (a list-map for server-side apply).
Conditions = Annotated[list[StatusCondition], Field(json_schema_extra={
    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})]
