"""Writes the CRDs from the pydantic models; nobody keeps them by hand.

Each kind's `Resource` (operator/shoal_operator/*/spec.py `RESOURCE`) and its
spec and status models give the whole CRD: the schema with its defaults,
bounds and patterns (pydantic's `Field`), CEL rules (`shoal.validation.Rule`,
Go-syntax durations with `Duration`), descriptions, printer columns and
subresources. Fields marked `KubeField` take the Kubernetes API's own
OpenAPI schema of that PodSpec or Container field, read from
hack/kubernetes-openapi.json: the definitions those fields need, trimmed from
k8s.io/kubernetes' api/openapi-spec/v3 (the release the test cluster runs)
and committed, so generating needs neither Go nor the network, and a
Kubernetes upgrade shows as a reviewable diff of exactly what the CRDs embed.

    .venv/bin/python hack/gen_crds.py                   # write crds/ and charts/shoal/crds/
    .venv/bin/python hack/gen_crds.py --check           # exit 1 when either is stale
    .venv/bin/python hack/gen_crds.py --refresh-openapi # re-trim the definitions (needs Go)

`make crds` runs it and hack/gen_docs.py; tests/unit/test_crds.py fails when
a committed CRD differs from what the models give.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support import load_script  # noqa: E402

GEN_DOCS = load_script(REPO / "hack/gen_docs.py")  # its stale check and writer serve both
OPENAPI = REPO / "hack/kubernetes-openapi.json"
TARGETS = (REPO / "crds", REPO / "charts/shoal/crds")
REGENERATE = ".venv/bin/python hack/gen_crds.py"
GENERATED = f"Generated from the models by {REGENERATE} (make crds): do not edit."

Schema = dict[str, Any]

# The structural form a CRD needs for the two apimachinery types whose OpenAPI
# schema is a oneOf: both are an integer or a string (as controller-gen writes them).
QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                       r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
            "x-kubernetes-int-or-string": True}
SPECIAL = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
    # Only inside an ephemeral volume's claim template; a CRD may constrain no
    # metadata below its root, so it is kept as given.
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True},
}
# What a CRD schema may carry of an OpenAPI definition (descriptions are left
# out: `kubectl explain pod.spec...` has them, and the CRD stays small enough
# for a client-side `kubectl apply`).
KEPT = ("type", "format", "required", "properties", "items", "additionalProperties",
        "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type")


# -- the Kubernetes definitions ------------------------------------------------------

def _ref(node: Mapping[str, Any]) -> str | None:
    """The definition a node stands for: `$ref`, or `allOf: [{$ref}]`."""
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[1]
    parts = node.get("allOf") or ()
    if len(parts) == 1 and "$ref" in parts[0]:
        return str(parts[0]["$ref"]).rsplit("/", 1)[1]
    return None


def structural(node: Mapping[str, Any], definitions: Mapping[str, Any]) -> Schema:
    """An OpenAPI v3 node of the Kubernetes API as a CRD's structural schema:
    references inlined, no defaults (the Deployment's own defaulting applies them),
    no descriptions, no patch-strategy extensions, list-map keys required."""
    name = _ref(node)
    if name is not None:
        if name in SPECIAL:
            return dict(SPECIAL[name])
        return structural(definitions[name], definitions)
    out: Schema = {k: node[k] for k in KEPT if k in node}
    if "properties" in out:
        out["properties"] = {k: structural(v, definitions) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = structural(out["items"], definitions)
        # A CRD's list-map keys must be required (Kubernetes defaults them to "").
        keys = out.get("x-kubernetes-list-map-keys") or ()
        missing = [k for k in keys if k not in out["items"].get("required", ())]
        if missing:
            out["items"]["required"] = [*out["items"].get("required", ()), *missing]
    if isinstance(out.get("additionalProperties"), Mapping):
        out["additionalProperties"] = structural(out["additionalProperties"], definitions)
    return out


def load_definitions() -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads(OPENAPI.read_text())["definitions"]
    return definitions


def kube_field_schema(definition: str, field: str, definitions: Mapping[str, Any]) -> Schema:
    return structural(definitions[definition]["properties"][field], definitions)


# -- the models --------------------------------------------------------------------

def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(bare type, Annotated metadata, optional) of a field's annotation."""
    metadata: list[Any] = []
    optional = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata += extra
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(get_args(annotation))
            if len(args) != 1:
                raise TypeError(f"unsupported union {annotation!r}")
            annotation = args[0]
        else:
            return annotation, metadata, optional


def _constraints(metadata: list[Any]) -> list[Any]:
    """The constraint objects in `metadata`, those of nested FieldInfos included."""
    found: list[Any] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            found += _constraints(item.metadata)
            if isinstance(item.json_schema_extra, dict):
                found.append(item.json_schema_extra)
        else:
            found.append(item)
    return found


def _apply(node: Schema, constraints: list[Any], definitions: Mapping[str, Any]) -> Schema:
    """Bounds, patterns, rules and extra schema keys of one node."""
    from shoal.validation import DURATION_MAX_LENGTH, GO_DURATION, Duration, KubeField, Rule

    rules: list[dict[str, str]] = []
    for c in constraints:  # first: the Kubernetes schema replaces the model's plain JSON
        if isinstance(c, KubeField):
            node = kube_field_schema(c.definition, c.field, definitions)
    sized = "Items" if node.get("type") == "array" else "Length"
    for c in constraints:
        if isinstance(c, KubeField):
            continue
        if isinstance(c, annotated_types.Ge):
            node["minimum"] = c.ge
        elif isinstance(c, annotated_types.Gt):
            node["minimum"] = c.gt + 1  # integers only: a float bound is a Duration
        elif isinstance(c, annotated_types.Le):
            node["maximum"] = c.le
        elif isinstance(c, annotated_types.MinLen):
            node[f"min{sized}"] = c.min_length
        elif isinstance(c, annotated_types.MaxLen):
            node[f"max{sized}"] = c.max_length
        elif isinstance(c, Duration):
            node.update(maxLength=DURATION_MAX_LENGTH, pattern=GO_DURATION)
            rules += [r.cel() for r in c.rules()]
        elif isinstance(c, Rule):
            rules.append(c.cel())
        elif isinstance(c, dict):
            node.update(c)
        elif getattr(c, "pattern", None):
            node["pattern"] = c.pattern
        else:
            raise TypeError(f"unsupported constraint {c!r}")
    if rules:
        node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", ()), *rules]
    return node


def type_schema(annotation: Any, definitions: Mapping[str, Any]) -> Schema:
    """The schema of a type (with its Annotated constraints)."""
    bare, metadata, _ = _unwrap(annotation)
    origin = get_origin(bare)
    node: Schema
    if bare is Any:
        node = {"x-kubernetes-preserve-unknown-fields": True}
    elif isinstance(bare, type) and issubclass(bare, BaseModel):
        node = model_schema(bare, definitions)
    elif origin is Literal:
        node = {"type": "string", "enum": list(get_args(bare))}
    elif origin in (tuple, list):
        node = {"type": "array", "items": type_schema(get_args(bare)[0], definitions)}
    elif origin is dict:
        value = get_args(bare)[1]
        node = ({"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                if value is Any else
                {"type": "object", "additionalProperties": type_schema(value, definitions)})
    elif bare is datetime:
        node = {"type": "string", "format": "date-time"}
    else:
        node = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[bare]}
    return _apply(node, _constraints(metadata), definitions)


def _default(info: FieldInfo) -> Any:
    """The field's default as the CRD writes it; PydanticUndefined when it writes none.

    A nested model's default is written out whole (the API server checks a
    default against the schema's rules before applying the nested defaults);
    None and empty collections are left out: absent means the same to the models.
    """
    value = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    value = _json(value)
    return PydanticUndefined if value is None else value


def _json(value: Any) -> Any:
    """`value` as JSON for a CRD: None and empty collections dropped, tuples as lists."""
    if isinstance(value, dict):
        kept = {k: _json(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None} or None
    if isinstance(value, list | tuple):
        return list(value) or None
    return value


def model_schema(model: type[BaseModel], definitions: Mapping[str, Any]) -> Schema:
    """The object schema of a model: one property per field, by its alias."""
    from shoal.validation import Checked

    properties: Schema = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if not info.description:
            raise ValueError(f"{model.__name__}.{name} has no description")
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else (
            info.annotation)
        node = type_schema(annotation, definitions)
        if isinstance(info.json_schema_extra, dict):
            node.update(info.json_schema_extra)
        default = _default(info)
        if default is not PydanticUndefined:
            node["default"] = default
        if info.is_required():
            required.append(key)
        properties[key] = {**node, "description": " ".join(info.description.split())}
    schema: Schema = {"type": "object"}
    if required:
        schema["required"] = required
    schema["properties"] = properties
    rules = model.cel_rules if issubclass(model, Checked) else ()
    if rules:
        schema["x-kubernetes-validations"] = [r.cel() for r in rules]
    return schema


# -- the CRDs ----------------------------------------------------------------------

def _at(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The schema node a printer column's JSONPath points at (`[?(...)]` selects items)."""
    node: Mapping[str, Any] = schema
    for name, selector in re.findall(r"\.([A-Za-z]+)(\[[^]]*\])?", path):
        node = node["properties"][name]
        if selector:
            node = node["items"]
    return node


def _column(schema: Mapping[str, Any], column: Any) -> Schema:
    if column.path == ".metadata.creationTimestamp":
        kind = "date"
    else:
        node = _at(schema, column.path)
        kind = "date" if node.get("format") == "date-time" else node["type"]
    entry: Schema = {"name": column.name, "type": kind, "jsonPath": column.path}
    if column.description:
        entry["description"] = column.description
    if column.wide:
        entry["priority"] = 1
    return entry


def _doc(model: type[BaseModel]) -> str:
    """A model's docstring on one line."""
    return " ".join((model.__doc__ or "").split())


def crd(resource: Any, definitions: Mapping[str, Any]) -> Schema:
    """The CustomResourceDefinition of `resource` (a shoal_operator.resource.Resource)."""
    from shoal_operator.resource import GROUP, VERSION

    spec = {**model_schema(resource.spec, definitions), "description": _doc(resource.spec)}
    status = {**model_schema(resource.status, definitions),
              "description": _doc(resource.status)}
    root: Schema = {"type": "object", "required": ["spec"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object"}, "spec": spec, "status": status}}
    if resource.rules:
        root["x-kubernetes-validations"] = [r.cel() for r in resource.rules]
    subresources: Schema = {"status": {}}
    if resource.scale:
        subresources["scale"] = {"specReplicasPath": resource.scale.spec_replicas,
                                 "statusReplicasPath": resource.scale.status_replicas,
                                 "labelSelectorPath": resource.scale.selector}
    version = {"name": VERSION, "served": True, "storage": True,
               "subresources": subresources,
               "additionalPrinterColumns": [_column(root, c) for c in resource.columns],
               "schema": {"openAPIV3Schema": root}}
    names = {"kind": resource.kind, "listKind": f"{resource.kind}List",
             "plural": resource.plural, "singular": resource.singular,
             "shortNames": list(resource.short_names), "categories": list(resource.categories)}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": resource.name, "labels": {"app.kubernetes.io/part-of": "shoal"}},
            "spec": {"group": GROUP, "scope": "Namespaced", "names": names,
                     "versions": [version]}}


class _Dumper(yaml.SafeDumper):
    """Writes shared nodes out in full: a CRD file reads without YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(resource: Any, definitions: Mapping[str, Any]) -> str:
    """The CRD file: the kind's introduction as comments, then the YAML."""
    intro = [f"# {line}".rstrip() for line in resource.about.splitlines()]
    body = yaml.dump(crd(resource, definitions), Dumper=_Dumper, sort_keys=False, width=100,
                     allow_unicode=True)
    return "\n".join([*intro, "#", f"# {GENERATED}", body])


def resources() -> tuple[Any, ...]:
    from shoal_operator.pools.spec import RESOURCE as WORKERPOOL
    from shoal_operator.workflows.spec import RESOURCE as WORKFLOW

    return (WORKERPOOL, WORKFLOW)


def generated() -> dict[Path, str]:
    """Every CRD file, in crds/ and in the chart, and the text it must have."""
    definitions = load_definitions()
    texts = {f"{r.name}.yaml": render(r, definitions) for r in resources()}
    return {target / name: text for target in TARGETS for name, text in texts.items()}


# -- refreshing the trimmed OpenAPI definitions -------------------------------------

def models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every model its fields hold, each once."""
    found: list[type[BaseModel]] = []

    def walk(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for info in model.model_fields.values():
            bare = _unwrap(info.annotation)[0]
            for arg in (bare, *get_args(bare)):
                inner = _unwrap(arg)[0]
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    walk(inner)

    walk(root)
    return found


def field_markers(model: type[BaseModel]) -> Iterator[Any]:
    """The validation markers on `model`'s fields (their Annotated metadata included)."""
    for info in model.model_fields.values():
        yield from _constraints([*info.metadata, *_unwrap(info.annotation)[1]])


def _kube_fields() -> Iterator[tuple[str, str]]:
    """(definition, field) of every KubeField in the resources' models."""
    from shoal.validation import KubeField

    for resource in resources():
        for model in models(resource.spec):
            for marker in field_markers(model):
                if isinstance(marker, KubeField):
                    yield marker.definition, marker.field


def refresh_openapi() -> None:
    """Re-trim hack/kubernetes-openapi.json from the k8s.io/kubernetes module of the
    release the offline test cluster runs (tests/cluster/tools.py K8S_VERSION)."""
    from tests.cluster.tools import K8S_VERSION

    module = json.loads(subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{K8S_VERSION}"],
        check=True, capture_output=True, text=True).stdout)
    source = "api/openapi-spec/v3/api__v1_openapi.json"
    everything = json.loads((Path(module["Dir"]) / source).read_text())["components"]["schemas"]
    picked: dict[str, Any] = {}
    for definition, field in sorted(set(_kube_fields())):
        owner = picked.setdefault(definition, {"properties": {}})
        owner["properties"][field] = everything[definition]["properties"][field]

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            name = _ref(node)
            if name is not None and name not in picked:
                picked[name] = None  # placeholder: filled below
                picked[name] = strip(everything[name])
            return {k: strip(v) for k, v in node.items() if k != "description"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    for definition in list(picked):
        picked[definition] = strip(picked[definition])
    OPENAPI.write_text(json.dumps({
        "source": f"k8s.io/kubernetes@{K8S_VERSION} {source}, the definitions the CRDs "
                  f"embed, descriptions left out; rewritten by {REGENERATE} --refresh-openapi",
        "definitions": dict(sorted(picked.items()))}, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a CRD file is stale")
    parser.add_argument("--refresh-openapi", action="store_true",
                        help="re-trim hack/kubernetes-openapi.json first (needs Go)")
    args = parser.parse_args(argv)
    if args.refresh_openapi:
        refresh_openapi()
    return int(GEN_DOCS.write_or_check(generated(), check=args.check, regenerate=REGENERATE))


if __name__ == "__main__":
    sys.exit(main())
