"""Annotations → workflow commands, as pure decisions.

Users steer a Workflow with `kubectl annotate workflow x pause=true` (or
`cancel=true`); the `shoal.dev/`-prefixed keys mean the same. `read_intent`
turns the annotations into what the user wants and says what it cannot accept
(`pause=maybe`, the two spellings of one key disagreeing). `plan` compares that
intent with the commands this CR already recorded in the backend and returns
the commands still to send, each with a request id that is the same however
often the plan is made again — so a retried handler or a restarted operator
re-sends the same request, which the backend applies once.

The backend's command log, not the CR, is the memory: a command is either
recorded there (and never planned again) or not (and planned with the same id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.backend import FINAL_WORKFLOW_STATES, CommandRecord
from shoal_operator.flags import Setting, read_flag


@dataclass(frozen=True, slots=True)
class Intent:
    """What the annotations ask for.

    `pause`/`cancel` are None when absent; `problems` lists each value that
    could not be read (that setting then asks for nothing).
    """

    pause: Setting | None
    cancel: Setting | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    """A command to send: `request_id` makes re-sending it harmless."""

    command: str
    request_id: str
    annotation: str  # e.g. "pause=true", or "pause (removed)"
    key: str | None  # the annotation key that asked for it, None when removed


@dataclass(frozen=True, slots=True)
class Plan:
    commands: tuple[Command, ...]
    rejections: tuple[str, ...]


def read_intent(annotations: Mapping[str, str] | None) -> Intent:
    """The pause/cancel settings in `annotations`, and what is wrong with them."""
    problems: list[str] = []
    pause = read_flag(annotations, "pause", problems)
    cancel = read_flag(annotations, "cancel", problems)
    return Intent(pause=pause, cancel=cancel, problems=tuple(problems))


def plan(intent: Intent, *, uid: str, state: str, log: Iterable[CommandRecord]) -> Plan:
    """The commands still to send for `intent`, given the workflow's state and command log.

    Only this CR's own commands (request ids starting with `uid/`) count: a
    pause requested elsewhere (the CLI) is not undone because the annotation
    is absent. Cancel is irreversible: `cancel=false` after a cancel is
    rejected, and so is `pause=true` on a workflow that is finished or cancelling.
    """
    ours = [r for r in log if r.request_id and r.request_id.startswith(f"{uid}/")]
    rejections = list(intent.problems)
    commands: list[Command] = []
    cancelled = state in ("cancelling", "cancelled") or any(r.command == "cancel" for r in ours)
    if intent.cancel is not None and intent.cancel.flag is True:
        if not any(r.command == "cancel" for r in ours):
            commands.append(Command("cancel", f"{uid}/cancel",
                                    f"{intent.cancel.key}={intent.cancel.value}",
                                    intent.cancel.key))
        return Plan(tuple(commands), tuple(rejections))
    if intent.cancel is not None and intent.cancel.flag is False and cancelled:
        rejections.append(f"{intent.cancel.key}={intent.cancel.value} cannot undo a cancel: "
                          "a cancelled workflow stays cancelled")
    if intent.pause is not None and intent.pause.flag is None:
        return Plan(tuple(commands), tuple(rejections))
    want_paused = intent.pause is not None and bool(intent.pause.flag)
    toggles = [r for r in ours if r.command in ("pause", "resume")]
    paused = bool(toggles) and toggles[-1].command == "pause"
    if want_paused == paused:
        return Plan(tuple(commands), tuple(rejections))
    if state in FINAL_WORKFLOW_STATES or state == "cancelling":
        if want_paused:
            rejections.append(f"{intent.pause.key if intent.pause else 'pause'}=true has no "
                              f"effect: the workflow is {state}")
        return Plan(tuple(commands), tuple(rejections))
    command = "pause" if want_paused else "resume"
    what = (f"{intent.pause.key}={intent.pause.value}" if intent.pause
            else "pause annotation removed")
    commands.append(Command(command, f"{uid}/{command}/{len(toggles) + 1}", what,
                            intent.pause.key if intent.pause else None))
    return Plan(tuple(commands), tuple(rejections))


def annotation_manager(managed_fields: Sequence[Mapping[str, Any]] | None,
                       key: str) -> tuple[str, str | None] | None:
    """(manager, time) of the field manager that last set annotation `key`, from managedFields.

    Kubernetes records which client (`kubectl-annotate`, `kubectl-client-side-apply`,
    a controller's name) owns each field; it does not record the user.
    """
    owners = []
    for entry in managed_fields or ():
        fields = entry.get("fieldsV1") or {}
        annotations = (fields.get("f:metadata") or {}).get("f:annotations") or {}
        if f"f:{key}" in annotations:
            owners.append((str(entry.get("time") or ""), str(entry.get("manager") or "unknown")))
    if not owners:
        return None
    when, manager = max(owners)
    return manager, when or None
