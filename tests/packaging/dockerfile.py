"""Replays the repository's Dockerfile without a container engine.

`parse` reads the Dockerfile into stages. `replay` builds the image's file
system under a temporary root: the build stage's COPY and RUN steps run there
with every absolute path re-rooted, then everything the final stage does not
`COPY --from` is deleted, and the final stage's own COPY steps are applied. What
`replay` returns is the final stage as the container would see it: its files,
its environment, its working directory and its entry point.

Guarantees: an instruction this module cannot replay faithfully raises
`Unsupported` (so a new Dockerfile step cannot be skipped silently), and the
build context holds exactly what the Dockerfile COPYs, minus `.dockerignore`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The final stage may only create its user: anything else would be a step the
# replay skips. (Creating the user needs root, and is checked by reading it.)
FINAL_STAGE_RUN = re.compile(r"^groupadd [^;&|]+ && useradd [^;&|]+$")
# Settings that only make the image smaller: the replay keeps pip's cache for speed.
SIZE_ONLY_ENV = frozenset({"PIP_NO_CACHE_DIR"})
_ABSOLUTE = re.compile(r"(^|[\s=:'\"])/(?=[\w.])")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


class Unsupported(AssertionError):
    """A Dockerfile instruction the replay cannot reproduce; extend this module for it."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[Instruction] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """The replayed final stage: run `command` with `env` in `workdir` to run the image."""

    root: Path
    env: dict[str, str]
    workdir: Path
    entrypoint: list[str]
    cmd: list[str]
    user: str


def parse(text: str) -> list[Stage]:
    """The Dockerfile's stages, with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            words = args.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            stages.append(Stage(words[0], words[2] if named else None))
        elif not stages:
            raise Unsupported(f"{keyword} before the first FROM")
        else:
            stages[-1].steps.append(Instruction(keyword, args))
    return stages


def reroot(text: str, root: Path) -> str:
    """`text` with every absolute path moved under `root` (variables are left alone)."""
    return _ABSOLUTE.sub(lambda m: f"{m.group(1)}{root}/", text)


def expand(text: str, env: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced from `env` (unknown names become empty, as in Docker)."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or
               (p.startswith("**/") and fnmatch.fnmatch(name, p[3:])) for p in patterns)


def _copy(context: Path, args: str, workdir: Path, root: Path, patterns: list[str]) -> None:
    """COPY semantics: a directory's contents go into the destination; a destination
    ending in `/` (or one of several sources) is a directory."""
    *sources, dest_text = shlex.split(args)
    if any(s.startswith("--") for s in sources):
        raise Unsupported(f"COPY {args}: flags other than --from=<build stage>")
    dest = workdir / reroot(dest_text, root)
    into_dir = len(sources) > 1 or dest_text.endswith("/")
    for source in sources:
        if _ignored(source, patterns):
            raise Unsupported(f"COPY {source}: excluded by .dockerignore")
        path = context / source
        if not path.exists():
            raise FileNotFoundError(f"COPY {source}: not in the build context {context}")
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True, ignore=lambda d, names: [
                n for n in names
                if _ignored(os.path.relpath(Path(d, n), context).replace(os.sep, "/"),
                            patterns)])
        else:
            target = dest / path.name if into_dir else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _prune(directory: Path, kept: list[Path]) -> None:
    """Delete everything under `directory` that is neither in `kept` nor leads to it."""
    for entry in directory.iterdir():
        if entry in kept:
            continue
        if any(entry in k.parents for k in kept):
            _prune(entry, kept)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _env(args: str) -> dict[str, str]:
    pairs = shlex.split(args)
    if not all("=" in p for p in pairs):
        raise Unsupported(f"ENV {args}: use the KEY=VALUE form")
    return dict(p.split("=", 1) for p in pairs)


def _json_list(keyword: str, args: str) -> list[str]:
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise Unsupported(f"{keyword} {args}: use the exec form, a JSON list of strings")
    return value


def _python_shim(directory: Path) -> Path:
    """A directory whose `python` is this interpreter: the base image's `python`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "python").symlink_to(sys.executable)
    return directory


def replay(dockerfile: Path, context: Path, root: Path) -> Image:
    """Build the final stage of `dockerfile` under `root`; see the module docstring."""
    stages = parse(dockerfile.read_text())
    if len(stages) != 2 or stages[0].name is None or stages[1].base != stages[0].base:
        raise Unsupported("expected two stages: a named build stage, then a final stage "
                          "FROM the same pinned base")
    build, final = stages
    patterns = _dockerignore(context)
    base_env = {"PATH": f"{_python_shim(root.parent / 'bin')}:/usr/local/bin:/usr/bin:/bin",
                "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
                **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}

    env, workdir = dict(base_env), root
    for step in build.steps:
        if step.keyword == "ENV":
            env.update({k: expand(reroot(v, root), env) for k, v in _env(step.args).items()
                        if k not in SIZE_ONLY_ENV})
        elif step.keyword == "WORKDIR":
            workdir = Path(reroot(step.args, root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            _copy(context, step.args, workdir, root, patterns)
        elif step.keyword == "RUN":
            subprocess.run(["sh", "-ec", reroot(step.args, root)], cwd=workdir, env=env,
                           check=True)
        else:
            raise Unsupported(f"{step.keyword} in the build stage")

    kept: list[Path] = []
    for step in final.steps:
        if step.keyword == "COPY" and step.args.startswith(f"--from={build.name} "):
            source, dest = shlex.split(step.args)[1:]
            if source != dest:
                raise Unsupported(f"COPY {step.args}: a venv only works at the path it was "
                                  "built at; copy it to the same path")
            kept.append(Path(reroot(source, root)))
    _prune(root, kept)  # the final stage starts from the base image, not the build stage

    env, workdir = {k: v for k, v in base_env.items() if k != "PATH"}, root
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    entrypoint: list[str] = []
    cmd: list[str] = []
    user = "root"
    for step in final.steps:
        if step.keyword == "ENV":
            env.update({k: expand(reroot(v, root), env) for k, v in _env(step.args).items()})
        elif step.keyword == "WORKDIR":
            workdir = Path(reroot(step.args, root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            if not step.args.startswith(f"--from={build.name} "):
                _copy(context, step.args, workdir, root, patterns)
        elif step.keyword == "RUN":
            if not FINAL_STAGE_RUN.match(step.args):
                raise Unsupported(f"RUN {step.args}: the final stage may only create its user")
        elif step.keyword == "USER":
            user = step.args
        elif step.keyword == "ENTRYPOINT":
            entrypoint = _json_list(step.keyword, step.args)
        elif step.keyword == "CMD":
            cmd = _json_list(step.keyword, step.args)
        else:
            raise Unsupported(f"{step.keyword} in the final stage")
    return Image(root, env, workdir, entrypoint, cmd, user)
