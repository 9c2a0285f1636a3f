"""What every set-up step shares: the cache folder, commands, progress lines.

Every expensive artefact lives under ``$SHOAL_CACHE_DIR`` (default
``~/.cache/shoal``) in a folder named by what it is and its version, written
atomically, so a step that finds it there does nothing, and a step interrupted
half-way leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """``$SHOAL_CACHE_DIR``, else ``~/.cache/shoal``."""
    env = os.environ.get("SHOAL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "shoal"


def say(text: str) -> None:
    """One progress line on stderr (stdout stays free for what a command prints)."""
    print(f"[shoal-cluster] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a long step, then say how long it took."""
    say(f"{what} ...")
    started = time.monotonic()
    yield
    say(f"{what}: done in {time.monotonic() - started:.0f}s")


_lock_depth = 0


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Hold the cache for the block: set-up steps of two processes never interleave.

    Re-entrant within a process; the lock is released when the process dies.
    """
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    cache_root().mkdir(parents=True, exist_ok=True)
    with (cache_root() / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another set-up that holds {handle.name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


class CommandFailed(subprocess.CalledProcessError):
    """A command that failed; its message has what it printed on stderr."""

    def __str__(self) -> str:
        tail = "\n".join((self.stderr or "").splitlines()[-40:])
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}:\n{tail}"


def run(argv: Sequence[str | Path], *, cwd: Path | None = None, input: str | None = None,
        stdin: IO[bytes] | None = None, env: Mapping[str, str] | None = None,
        check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with its output captured as text; raise CommandFailed
    on failure. `env` adds to the inherited environment."""
    result = subprocess.run([str(a) for a in argv], cwd=cwd, input=input, stdin=stdin,
                            text=True, env=None if env is None else {**os.environ, **env},
                            capture_output=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, result.args, result.stdout, result.stderr)
    return result


def which(name: str) -> Path | None:
    """The executable `name` on PATH (sbin folders included), or None."""
    found = shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
    return Path(found) if found else None


def apt_install(*packages: str) -> None:
    """Install Debian packages that are missing (needs root and apt)."""
    with step(f"apt-get install {' '.join(packages)}"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env, timeout=600)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env, timeout=1800)


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """A scratch path beside `final` that becomes `final` only if the block succeeds."""
    scratch = final.with_name(f".{final.name}.partial")
    remove(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield scratch
    except BaseException:
        remove(scratch)
        raise
    remove(final)
    scratch.rename(final)


def remove(path: Path) -> None:
    """Remove a file or a folder tree, if it exists (read-only Go module files too)."""
    if path.is_dir() and not path.is_symlink():
        run(["chmod", "-R", "u+w", path], check=False)
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
