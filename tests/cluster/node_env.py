"""Container environment as the kubelet builds it, for the node agent.

`build_env` guarantees the kubelet's order and rules: `envFrom` sources first
(later ones win, optional `prefix`, keys that are not valid variable names are
skipped), then `env` entries in order, where a plain value has `$(VAR)`
references expanded against the variables defined so far (`$$` escapes a
dollar, an unknown reference stays as written) and `valueFrom` reads a Secret,
ConfigMap, field of the Pod or resource of the container. A missing Secret,
ConfigMap or key that is not `optional` raises `ConfigError`, whose message
reads like the kubelet's CreateContainerConfigError.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal

from tests.cluster.node_api import Json

__all__ = [
    "ConfigError", "Fetch", "build_env", "expand", "field_value", "parse_quantity",
    "resource_value",
]

# Reads a namespaced object ("secrets" or "configmaps", name); None if it does not exist.
Fetch = Callable[[str, str], Awaitable[Json | None]]

_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SUFFIXES = {
    "": Decimal(1), "m": Decimal("0.001"), **{s: Decimal(10) ** (3 * i) for i, s in
                                             enumerate("kMGTPE", start=1)},
    **{f"{s}i": Decimal(2) ** (10 * i) for i, s in enumerate("KMGTPE", start=1)},
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


class ConfigError(Exception):
    """The container cannot be configured yet (a missing Secret, ConfigMap or key)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` from `env` as Kubernetes does; `$$` is a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse a Kubernetes resource quantity ("250m", "1Gi", "2") into a Decimal."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"invalid quantity {text!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


def field_value(pod: Json, path: str) -> str:
    """The value of a fieldRef's fieldPath (the kubelet's supported set)."""
    metadata, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", [])),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs", [])),
    }
    if path in simple:
        return simple[path] or ""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_value(container: Json, ref: Json, allocatable: Mapping[str, str]) -> str:
    """A resourceFieldRef: the container's limit/request (limits default to allocatable)."""
    kind, _, name = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


def _decode(resource: str, obj: Json, key: str) -> str | None:
    data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
    if key in data and resource == "configmaps":
        return str(data[key])
    encoded = data.get(key) if resource == "secrets" else binary.get(key)
    return None if encoded is None else base64.b64decode(encoded).decode(errors="surrogateescape")


async def _key_ref(fetch: Fetch, resource: str, ref: Json) -> str | None:
    kind = "secret" if resource == "secrets" else "configmap"
    obj = await fetch(resource, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind} "{ref["name"]}" not found')
    value = _decode(resource, obj, ref["key"])
    if value is None and not ref.get("optional"):
        raise ConfigError(f"couldn't find key {ref['key']} in {kind.capitalize()} "
                          f"{obj['metadata']['namespace']}/{ref['name']}")
    return value


async def _from_source(fetch: Fetch, source: Json) -> dict[str, str]:
    for field, resource, kind in (("secretRef", "secrets", "secret"),
                                  ("configMapRef", "configmaps", "configmap")):
        ref = source.get(field)
        if ref is None:
            continue
        obj = await fetch(resource, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'{kind} "{ref["name"]}" not found')
        keys = {**(obj.get("binaryData") or {}), **(obj.get("data") or {})}
        prefix = source.get("prefix", "")
        values = {prefix + key: _decode(resource, obj, key) or "" for key in keys}
        return {key: value for key, value in values.items() if _ENV_NAME.match(key)}
    return {}


async def build_env(pod: Json, container: Json, fetch: Fetch,
                    allocatable: Mapping[str, str]) -> dict[str, str]:
    """Return the variables the container's spec defines, resolved and expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(await _from_source(fetch, source))
    for entry in container.get("env") or []:
        source = entry.get("valueFrom")
        value: str | None
        if source is None:
            value = expand(entry.get("value", ""), env)
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"], allocatable)
        elif "secretKeyRef" in source:
            value = await _key_ref(fetch, "secrets", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = await _key_ref(fetch, "configmaps", source["configMapKeyRef"])
        else:
            raise ConfigError(f"unsupported valueFrom for {entry['name']}")
        if value is not None:
            env[entry["name"]] = value
    return env
