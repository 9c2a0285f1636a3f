"""A backend `WorkflowStatus` → the Workflow CR's status, as a pure function.

`cr_status` guarantees a status that depends only on its inputs (so an
unchanged backend yields an identical status and no patch), that is bounded
in size whatever the tasks return (messages, errors and output are cut to a
fixed length; the command history keeps the last few entries), and whose
conditions keep their `lastTransitionTime` until their status changes. A
workflow the backend failed for a named reason (`UnreadableStoredSpec: ...`,
see `shoal.dag.failure_reason`) has that reason on its lifecycle conditions,
and `failure_event` says when it deserves a Warning Event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shoal import dag
from shoal.backend import CommandRecord, WorkflowStatus
from shoal_operator.conditions import (
    Condition,
    Status,
    make_condition,
    now_rfc3339,
    set_conditions,
)

PHASE_LABEL = "shoal.dev/phase"
# The label is the operator's own output, so kopf must not see its change as
# a change of the CR (one more last-handled-configuration patch per phase).
PHASE_LABEL_FIELD = ("metadata", "labels", PHASE_LABEL)
PHASES = {
    "running": "Running",
    "paused": "Paused",
    "cancelling": "Cancelling",
    "cancelled": "Cancelled",
    "succeeded": "Succeeded",
    "failed": "Failed",
}
FINAL_PHASES = frozenset({"Cancelled", "Succeeded", "Failed"})
MAX_MESSAGE = 1024
MAX_STEP_ERROR = 256
MAX_OUTPUT = 4096
MAX_COMMANDS = 5

# Conditions: Accepted (submitted, or refused with InvalidSpec/PoolNotFound/...) and Paused
# come from the backend once an instance exists, and so do the lifecycle ones (Ready,
# Reconciling, Stalled, Complete, Failed); before that, and for AnnotationsValid, the
# handlers' notes decide.


def bounded(text: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters, saying how much was cut."""
    if text is None or len(text) <= limit:
        return text
    cut = len(text) - limit
    suffix = f"... ({cut} more characters)"
    return text[: max(0, limit - len(suffix))] + suffix


def _time(value: datetime | None) -> str | None:
    return now_rfc3339(value) if value is not None else None


def _output(status: WorkflowStatus, sinks: Sequence[str]) -> str | None:
    """JSON of the final steps' outputs: one sink's output as is, several as {step: output}."""
    outputs = {s.name: s.output for s in status.steps if s.name in sinks and s.state == "succeeded"}
    if not outputs:
        return None
    value = next(iter(outputs.values())) if len(sinks) == 1 else outputs
    return bounded(json.dumps(value, separators=(",", ":"), sort_keys=True), MAX_OUTPUT)


def _commands(records: Sequence[CommandRecord]) -> list[dict[str, Any]]:
    return [{"command": r.command, "by": r.actor, "at": _time(r.created_at),
             "applied": r.applied, **({"requestId": r.request_id} if r.request_id else {})}
            for r in records[-MAX_COMMANDS:]]


def lifecycle(phase: str, reason: str, message: str, *,
              generation: int | None) -> list[Condition]:
    """The conditions tools read, from the phase (Pending while not yet submitted).

    Complete is True only on success and Failed on failure, cancellation or
    refusal, so `kubectl wait --for=condition=Complete` waits for success and
    `--for=condition=Failed` returns as soon as it cannot come. For kstatus:
    Reconciling while the workflow is pending, running, paused or cancelling
    (InProgress), Stalled once it failed (Failed), neither once it succeeded
    (Current). Ready is Unknown while in progress, then True or False.
    """
    done = phase == "Succeeded"
    failed = phase in FINAL_PHASES and not done
    going = not done and not failed

    def condition(type_: str, status: bool | Status, says: bool) -> Condition:
        return make_condition(type_, status, reason, message if says else "",
                              generation=generation)

    return [
        condition("Ready", "Unknown" if going else done, True),
        condition("Reconciling", going, going),
        condition("Stalled", failed, failed),
        condition("Complete", done, done),
        condition("Failed", failed, failed),
    ]


def _failure_reason(status: WorkflowStatus) -> str | None:
    """The reason the backend named for failing the workflow (e.g. UnreadableStoredSpec)."""
    return dag.failure_reason(status.message) if status.state == "failed" else None


def _sync_conditions(status: WorkflowStatus, generation: int | None) -> list[Condition]:
    phase = PHASES.get(status.state, "Running")
    paused = status.state == "paused"
    message = bounded(status.message, MAX_MESSAGE) or ""
    return [
        make_condition("Accepted", True, "Submitted", f"workflow instance {status.id}",
                       generation=generation),
        make_condition("Paused", paused, "Paused" if paused else "NotPaused",
                       message if paused else "", generation=generation),
        *lifecycle(phase, _failure_reason(status) or phase, message, generation=generation),
    ]


def failure_event(backend: WorkflowStatus | None,
                  previous: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The Warning Event (reason, message) due for a workflow the backend failed for a
    named reason, or None.

    Due once: not when `previous` (the CR's status as last written or read)
    already has condition Failed=True with that reason, so neither a repeated
    sync nor an operator restart posts it again. A failed step names no
    reason (its workflow's Failed condition says Failed) and gets no Event.
    """
    if backend is None or (reason := _failure_reason(backend)) is None:
        return None
    failed: Mapping[str, Any] = next((c for c in (previous or {}).get("conditions") or ()
                                      if c.get("type") == "Failed"), {})
    if failed.get("status") == "True" and failed.get("reason") == reason:
        return None
    return reason, bounded(backend.message, MAX_MESSAGE) or ""


def cr_status(backend: WorkflowStatus | None, *, previous: Mapping[str, Any] | None,
              notes: Sequence[Condition] = (), sinks: Sequence[str] = (),
              generation: int | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The CR's status from the backend's view (None: no instance yet) and handler notes.

    `previous` is the CR's current status: its conditions keep their transition
    times, and conditions owned by the handlers survive an operator restart.
    `notes` are conditions the handlers set (Accepted, AnnotationsValid).
    """
    previous = previous or {}
    now = now or datetime.now(UTC)
    conditions = set_conditions(previous.get("conditions"), notes, now=now)
    status: dict[str, Any] = {}
    if generation is not None:
        status["observedGeneration"] = generation
    elif "observedGeneration" in previous:
        status["observedGeneration"] = previous["observedGeneration"]
    if backend is None:
        accepted = next((c for c in conditions if c["type"] == "Accepted"), {})
        refused = accepted.get("status") == "False"
        invalid = refused and accepted.get("reason") == "InvalidSpec"
        status["phase"] = "Failed" if invalid else "Pending"
        message = bounded(accepted.get("message"), MAX_MESSAGE) if refused else None
        if message:
            status["message"] = message
        status["conditions"] = set_conditions(conditions, lifecycle(
            status["phase"], str(accepted.get("reason") or "Pending"), message or "",
            generation=generation), now=now)
        return status
    done, total = backend.progress
    started = [s.started_at for s in backend.steps if s.started_at is not None]
    conditions = set_conditions(conditions, _sync_conditions(backend, generation), now=now)
    status.update({
        "workflowId": str(backend.id),
        "phase": PHASES.get(backend.state, "Running"),
        "progress": f"{done}/{total}",
        "succeededSteps": done,
        "totalSteps": total,
        "paused": backend.state == "paused",
        "submittedAt": _time(backend.created_at),
        "startedAt": _time(min(started)) if started else None,
        "finishedAt": _time(backend.finished_at),
        "message": bounded(backend.message, MAX_MESSAGE),
        "output": _output(backend, sinks),
        "steps": [{k: v for k, v in {
            "name": s.name, "task": s.task, "state": s.state, "attempts": s.attempts,
            "maxAttempts": s.max_attempts, "startedAt": _time(s.started_at),
            "finishedAt": _time(s.finished_at), "error": bounded(s.error, MAX_STEP_ERROR),
        }.items() if v is not None} for s in backend.steps],
        "commands": _commands(backend.commands),
        "conditions": conditions,
    })
    return {k: v for k, v in status.items() if v is not None}


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning status `old` into `new` (top-level keys; lists replace)."""
    old = old or {}
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new and k != "kopf"})
    return patch
