"""What a custom resource is, beyond its models: names, columns, subresources.

A `Resource` is everything `hack/gen_crds.py` needs to write the kind's CRD
besides the schema, which comes from its `spec` and `status` models. The
operator's handlers and paths use the same names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from shoal.validation import Rule

GROUP = "shoal.dev"
VERSION = "v1alpha1"


@dataclass(frozen=True)
class Column:
    """A `kubectl get` column; its type comes from the field `path` points at.

    `wide` columns show only with `-o wide`.
    """

    name: str
    path: str
    description: str = ""
    wide: bool = False


@dataclass(frozen=True)
class Scale:
    """The scale subresource: where `kubectl scale` and an HPA read and write replicas."""

    spec_replicas: str
    status_replicas: str
    selector: str


@dataclass(frozen=True)
class Resource:
    """One kind of Shoal's API (`GROUP/VERSION`)."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    about: str  # the CRD file's leading comment
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[Column, ...]
    scale: Scale | None = None
    rules: tuple[Rule, ...] = ()  # on the whole object, e.g. transition rules
    categories: tuple[str, ...] = ("shoal",)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def name(self) -> str:
        """The CRD's name: `workerpools.shoal.dev`, the form that is never ambiguous."""
        return f"{self.plural}.{GROUP}"
