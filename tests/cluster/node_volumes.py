"""Pod volumes for the node agent: files on the host, bind-mounted per container.

`write_volumes` materialises a Pod's volumes once, under the pod's own folder:
emptyDir (an empty folder), secret and configMap (one file per key, or per
`items`), downwardAPI (fieldRef/resourceFieldRef files), projected (any of
those plus serviceAccountToken, requested from the TokenRequest API and bound
to the Pod) and hostPath (the host's own path). A missing Secret or ConfigMap
that is not optional raises `ConfigError`; other volume kinds (persistent
volumes, CSI, ...) are not supported and raise it too.

`mount_command` wraps a container's argv so that it runs in a private mount
namespace (`unshare --mount`) where each volumeMount is bind-mounted at its
mountPath (read-only if asked, subPath honoured), then execs the original
command, which keeps the pid and process group. Mount points are created on
the host as empty folders or files (the mount itself is only seen inside).
With this, the ServiceAccount token the API server injects into every Pod
(`/var/run/secrets/kubernetes.io/serviceaccount`) is real, so in-cluster
clients authenticate as their ServiceAccount.
"""

from __future__ import annotations

import base64
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.cluster.node_api import Json
from tests.cluster.node_env import ConfigError, Fetch, field_value, resource_value

__all__ = ["RequestToken", "mount_command", "write_volumes"]

# Takes a serviceAccountToken projection, returns a token for the Pod.
RequestToken = Callable[[Json], Awaitable[str]]


def _write(folder: Path, files: dict[str, bytes], mode: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)


async def _key_files(fetch: Fetch, resource: str, source: Json) -> dict[str, bytes]:
    name = source.get("secretName") or source.get("name") or ""
    obj = await fetch(resource, name)
    kind = "secret" if resource == "secrets" else "configmap"
    if obj is None:
        if source.get("optional"):
            return {}
        raise ConfigError(f'{kind} "{name}" not found')
    data: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if resource == "secrets" else str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    items = source.get("items")
    if not items:
        return data
    files: dict[str, bytes] = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ConfigError(f"configmap/secret {name!r} has no key {item['key']!r}")
        files[item["path"]] = data[item["key"]]
    return files


def _downward_files(pod: Json, source: Json) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for item in source.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            value = resource_value(containers[ref["containerName"]], ref, {})
        files[item["path"]] = value.encode()
    return files


async def _projected_files(pod: Json, fetch: Fetch, token: RequestToken,
                           volume: Json) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for source in volume.get("sources") or []:
        if "serviceAccountToken" in source:
            projection = source["serviceAccountToken"]
            files[projection["path"]] = (await token(projection)).encode()
        elif "secret" in source:
            files.update(await _key_files(fetch, "secrets", source["secret"]))
        elif "configMap" in source:
            files.update(await _key_files(fetch, "configmaps", source["configMap"]))
        elif "downwardAPI" in source:
            files.update(_downward_files(pod, source["downwardAPI"]))
    return files


async def write_volumes(pod: Json, root: Path, fetch: Fetch,
                        token: RequestToken) -> dict[str, Path]:
    """Create every volume of `pod` under `root`; return each volume's host path."""
    paths: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name, folder = volume["name"], root / volume["name"]
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            folder = Path(volume["hostPath"]["path"])
        elif "secret" in volume:
            source = volume["secret"]
            _write(folder, await _key_files(fetch, "secrets", source),
                   source.get("defaultMode", 0o644))
        elif "configMap" in volume:
            source = volume["configMap"]
            _write(folder, await _key_files(fetch, "configmaps", source),
                   source.get("defaultMode", 0o644))
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            _write(folder, _downward_files(pod, source), source.get("defaultMode", 0o644))
        elif "projected" in volume:
            source = volume["projected"]
            _write(folder, await _projected_files(pod, fetch, token, source),
                   source.get("defaultMode", 0o644))
        else:
            kinds = sorted(set(volume) - {"name"})
            raise ConfigError(f"volume {name!r}: unsupported volume type {kinds}")
        paths[name] = folder
    return paths


# The project's own environment stands in for the image: no volume may hide it
# (an emptyDir at /tmp would, when the checkout or its venv lives under /tmp).
ENVIRONMENT = sorted({Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()})


def mount_command(argv: list[str], container: Json, volumes: dict[str, Path],
                  unshare: str) -> list[str]:
    """`argv` run in a private mount namespace with the container's volumeMounts.

    Every source is opened before anything is mounted and bound from its file
    descriptor, so a mount over an ancestor of the sources (an emptyDir at
    /tmp, say) cannot hide the sources of the mounts after it. Parents are
    mounted before children, as the kubelet does. A mount that covers the
    project's environment gets that environment bound back on top of it.
    """
    mounts = sorted(container.get("volumeMounts") or [],
                    key=lambda m: Path(m["mountPath"]).parts)
    if not mounts:
        return argv
    targets = [Path(m["mountPath"]) for m in mounts]
    hidden = [env for env in ENVIRONMENT
              if any(env == t or t in env.parents for t in targets)]
    hidden = [env for env in hidden if not any(other in env.parents for other in hidden)]
    sources = [volumes[m["name"]] / m.get("subPath", "") for m in mounts]
    if len(sources) + len(hidden) > 7:
        raise ConfigError("the node agent supports at most 7 volumeMounts per container")
    lines = ["set -e"]
    for fd, path in enumerate([*sources, *hidden], start=3):
        lines.append(f"exec {fd}< {shlex.quote(str(path))}")
    for fd, (mount, source) in enumerate(zip(mounts, sources, strict=True), start=3):
        target = shlex.quote(mount["mountPath"])
        if source.is_dir():
            lines.append(f"mkdir -p {target}")
        else:
            lines.append(f"mkdir -p \"$(dirname {target})\"; [ -e {target} ] || : > {target}")
        lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} {target}")
        if mount.get("readOnly"):
            lines.append(f"mount -o remount,bind,ro {target}")
    for fd, env in enumerate(hidden, start=3 + len(sources)):
        lines.append(f"mkdir -p {shlex.quote(str(env))}")
        lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{fd} "
                     f"{shlex.quote(str(env))}")
    for fd in range(3, 3 + len(sources) + len(hidden)):
        lines.append(f"exec {fd}<&-")
    lines.append('exec "$@"')
    return [unshare, "--mount", "--propagation", "private",
            "sh", "-c", "\n".join(lines), "sh", *argv]
