"""Annotations → commands: what users type, what is refused, and restart-safe request ids."""

from __future__ import annotations

from datetime import UTC, datetime

from shoal.backend import CommandRecord
from shoal_operator.workflows.annotations import (
    annotation_manager,
    plan,
    read_intent,
)

UID = "0f0e-uid"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record(command: str, request_id: str | None, n: int = 1) -> CommandRecord:
    return CommandRecord(id=n, command=command, actor="a", reason="", request_id=request_id,
                         applied=True, created_at=T0)


def plan_for(annotations: dict[str, str], state: str = "running",
             log: list[CommandRecord] | None = None):
    return plan(read_intent(annotations), uid=UID, state=state, log=log or [])


def test_bare_and_prefixed_keys_pause():
    for key in ("pause", "shoal.dev/pause"):
        p = plan_for({key: "true"})
        assert [(c.command, c.request_id) for c in p.commands] == [("pause", f"{UID}/pause/1")]
        assert p.commands[0].annotation == f"{key}=true"
        assert p.rejections == ()


def test_values_are_case_insensitive_but_strict():
    assert plan_for({"pause": "True"}).commands[0].command == "pause"
    p = plan_for({"pause": "maybe"})
    assert p.commands == ()
    assert p.rejections == ("annotation pause='maybe' is not true or false: use pause=true or "
                            "pause=false",)


def test_nothing_to_do_without_annotations_or_when_already_done():
    assert plan_for({}) == plan_for({"pause": "false"})
    assert plan_for({}).commands == ()
    done = [record("pause", f"{UID}/pause/1")]
    assert plan_for({"pause": "true"}, state="paused", log=done).commands == ()


def test_same_request_id_until_the_backend_records_it():
    """A restart before the backend recorded the pause re-plans the very same request id."""
    first = plan_for({"pause": "true"})
    again = plan_for({"pause": "true"})
    assert first == again
    # Derived from the CR and the log, never random or time-based:
    assert [c.request_id for c in first.commands] == [f"{UID}/pause/1"]


def test_resume_after_pause_then_pause_again_get_fresh_ids():
    log = [record("pause", f"{UID}/pause/1")]
    resume = plan_for({"pause": "false"}, state="paused", log=log)
    assert [(c.command, c.request_id) for c in resume.commands] == [("resume", f"{UID}/resume/2")]
    removed = plan_for({}, state="paused", log=log)
    assert removed.commands[0].command == "resume"
    assert removed.commands[0].key is None
    log.append(record("resume", f"{UID}/resume/2", 2))
    again = plan_for({"pause": "true"}, log=log)
    assert [(c.command, c.request_id) for c in again.commands] == [("pause", f"{UID}/pause/3")]


def test_commands_from_elsewhere_are_not_undone():
    """A pause from the CLI (no request id of this CR) is left alone without an annotation."""
    assert plan_for({}, state="paused", log=[record("pause", None)]).commands == ()


def test_cancel_once_and_irreversible():
    p = plan_for({"cancel": "true", "pause": "true"})
    assert [(c.command, c.request_id) for c in p.commands] == [("cancel", f"{UID}/cancel")]
    log = [record("cancel", f"{UID}/cancel")]
    assert plan_for({"cancel": "true"}, state="cancelled", log=log).commands == ()
    undo = plan_for({"shoal.dev/cancel": "false"}, state="cancelling", log=log)
    assert undo.commands == ()
    assert undo.rejections == ("shoal.dev/cancel=false cannot undo a cancel: a cancelled "
                               "workflow stays cancelled",)
    assert plan_for({"cancel": "false"}).rejections == ()


def test_pause_after_finish_is_rejected_and_resume_is_moot():
    p = plan_for({"pause": "true"}, state="succeeded")
    assert p.commands == ()
    assert p.rejections == ("pause=true has no effect: the workflow is succeeded",)
    log = [record("pause", f"{UID}/pause/1"), record("cancel", f"{UID}/cancel", 2)]
    # After a cancel, a removed pause and pause=false are the same: nothing to do.
    assert plan_for({}, state="cancelled", log=log) == plan_for({"pause": "false"},
                                                                state="cancelled", log=log)
    assert plan_for({}, state="cancelled", log=log).commands == ()
    assert plan_for({}, state="cancelled", log=log).rejections == ()


def test_disagreeing_spellings_are_rejected():
    p = plan_for({"pause": "true", "shoal.dev/pause": "false"})
    assert p.commands == ()
    assert p.rejections == ("pause=true and shoal.dev/pause=false disagree: set one of them",)
    assert plan_for({"pause": "true", "shoal.dev/pause": "TRUE"}).commands[0].command == "pause"


def test_a_bad_pause_does_not_block_a_cancel():
    p = plan_for({"pause": "maybe", "cancel": "true"})
    assert [c.command for c in p.commands] == ["cancel"]
    assert len(p.rejections) == 1


def test_annotation_manager_from_managed_fields():
    fields = [
        {"manager": "kubectl-create", "time": "2026-01-01T00:00:00Z",
         "fieldsV1": {"f:spec": {}}},
        {"manager": "kubectl-annotate", "time": "2026-01-01T00:01:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:pause": {}, ".": {}}}}},
    ]
    assert annotation_manager(fields, "pause") == ("kubectl-annotate", "2026-01-01T00:01:00Z")
    assert annotation_manager(fields, "cancel") is None
    assert annotation_manager(None, "pause") is None
