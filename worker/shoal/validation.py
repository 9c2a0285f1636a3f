"""Validation declared once, beside the fields it checks.

The pydantic models of Shoal's custom resources carry everything their CRDs
say: types, defaults and bounds (pydantic's own `Field`), plus the markers
here, which the models enforce and `hack/gen_crds.py` writes into the CRDs:

- `Rule`: a CEL rule (`x-kubernetes-validations`) and the same check in
  Python, on a field or, as `cel_rules`, on a whole model (`Checked`).
- `Duration`: a duration as Kubernetes writes them (`30s`, `5m`, `1h30m`,
  `250ms`: Go's syntax, which CEL's `duration()` reads), within bounds.
- `KubeField`: a field typed by the Kubernetes API's own OpenAPI definition
  of a PodSpec or Container field (env, tolerations, volumes...), so the API
  server checks it when the resource is applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, GetCoreSchemaHandler, ValidationError, model_validator
from pydantic_core import core_schema

from shoal.units import parse_duration

GO_DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DURATION_MAX_LENGTH = 32
GO_MAX_SECONDS = (2**63 - 1) / 1e9  # about 292 years: CEL's `duration()` fails beyond


@dataclass(frozen=True)
class Rule:
    """A CEL rule of the CRD and `check`, the same rule in Python.

    `check` is None only where Python cannot judge the rule alone: a
    transition rule (it needs the stored object), or a rule that a named
    function checks with a more precise message (say which in `enforced_by`).
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: str | None = None
    enforced_by: str | None = None

    def cel(self) -> dict[str, str]:
        """The rule as one entry of `x-kubernetes-validations`."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry

    def validate(self, value: Any) -> Any:
        if self.check is not None and not self.check(value):
            raise ValueError(self.message)
        return value

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.validate, handler(source))


class Checked(BaseModel):
    """A model whose `cel_rules` hold after its fields validated (and are in its CRD)."""

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).cel_rules:
            rule.validate(self)
        return self


@dataclass(frozen=True)
class Duration:
    """A duration string in Go's syntax, strictly greater than `gt` or at least `ge`
    seconds, and at most `le`; the CRD checks the same with a pattern and CEL."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def rules(self) -> list[Rule]:
        """The bounds as CEL rules on the string (CEL's `duration()` reads Go's syntax)."""
        found = []
        if self.gt is not None:
            found.append(Rule(f"duration(self) > duration('{self.gt:g}s')",
                              f"must be longer than {self.gt:g}s"))
        if self.ge is not None:
            found.append(Rule(f"duration(self) >= duration('{self.ge:g}s')",
                              self._at_least()))
        if self.le is not None:
            found.append(Rule(f"duration(self) <= duration('{self.le:g}s')",
                              f"must be at most {_text(self.le)}"))
        return found

    def _at_least(self) -> str:
        return "must not be negative" if self.ge == 0 else f"must be at least {self.ge:g}s"

    def validate(self, value: str) -> str:
        if len(value) > DURATION_MAX_LENGTH or not re.match(GO_DURATION, value):
            raise ValueError(f"invalid duration {value!r}: use a number with a unit "
                             "(ms, s, m, h), e.g. 30s, 5m, 1h30m, 250ms")
        seconds = parse_duration(value)
        if seconds > GO_MAX_SECONDS:
            raise ValueError(f"duration {value!r} is longer than 292 years")
        if self.gt is not None and not seconds > self.gt:
            raise ValueError(f"must be longer than {self.gt:g}s")
        if self.ge is not None and not seconds >= self.ge:
            raise ValueError(self._at_least())
        if self.le is not None and not seconds <= self.le:
            raise ValueError(f"must be at most {_text(self.le)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.validate, handler(source))


def _text(seconds: float) -> str:
    """`3600` → `1h`, `1800` → `30m`: a bound as users write it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class KubeField:
    """The field has the schema of `definition`'s `field` in the Kubernetes API
    (e.g. `KubeField("io.k8s.api.core.v1.PodSpec", "tolerations")`).

    The model keeps such values as plain JSON: the API server checks them
    against that schema when the resource is applied, and the Deployment's
    own validation does the rest.
    """

    definition: str
    field: str


def problems(exc: ValidationError, root: str = "", limit: int | None = None) -> str:
    """A model's validation errors on one line: `root.field.path: message; ...`.

    With `limit`, the first `limit` errors and how many more there are.
    """
    errors = exc.errors()
    shown = "; ".join(
        ".".join(str(p) for p in (*([root] if root else []), *e["loc"])) + f": {e['msg']}"
        for e in errors[:limit])
    hidden = len(errors) - limit if limit is not None else 0
    return f"{shown}; and {hidden} more" if hidden > 0 else shown
