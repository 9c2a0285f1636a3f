"""kopf handlers of the Workflow CR: submit, steer with annotations, cancel on delete.

- create / spec change → the DAG is submitted to the pool's backend, keyed by
  the CR's uid, so a retried handler or a restarted operator finds the same
  instance instead of making a second one. A DAG that cannot run (a cycle, a
  missing dependency, a step the pool cannot serve) is refused: condition
  Accepted=False/InvalidSpec and a Warning Event.
- annotation change → `steering.plan` decides the pause/resume/cancel
  commands; each is sent with a request id the backend deduplicates, so no
  command is lost or doubled across restarts. Values it cannot accept get a
  Warning Event and condition AnnotationsValid=False, and no command.
- delete → the finalizer cancels the instance (its history stays until the
  workers' `--retention` prunes it); when the backend stays unreachable, the
  CR is released after a bounded number of retries, with a Warning Event.

The handlers never write status; they leave notes for `sync.StatusSync`, the
one writer, and mark the CR for its next round.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from shoal.backend import TRANSIENT_ERRORS, Backend
from shoal.errors import (
    InvalidCommand,
    InvalidInput,
    InvalidWorkflow,
    NotFound,
    ShoalError,
)
from shoal.policy import retry_delay
from shoal_operator import context
from shoal_operator.conditions import make_condition
from shoal_operator.errors import DatabaseSecretError, PoolNotFound
from shoal_operator.kube import KubeError
from shoal_operator.resource import GROUP, VERSION
from shoal_operator.workflows import annotations as steering
from shoal_operator.workflows.spec import PLURAL, RESOURCE, check_pool_fit, parse_spec
from shoal_operator.workflows.status import PHASE_LABEL
from shoal_operator.workflows.sync import Tracked, WorkflowRuntime

DELETE_RETRIES = 5
# Errors that mean "the database cannot be used right now"; the handlers retry them.
UNREACHABLE = TRANSIENT_ERRORS


def _runtime(memo: kopf.Memo) -> WorkflowRuntime:
    return context.of(memo).workflows


class _QuietTracking(logging.Filter):
    """Drops kopf's "Handler 'track' succeeded." line, logged for every watch event.

    With thousands of Workflows that line would be most of the operator's log;
    `track` only updates memory, and its failures are still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO
                    and record.getMessage() == "Handler 'track' succeeded.")


@kopf.on.startup()
async def quiet_tracking(**_: Any) -> None:
    """Keep kopf's line about every `track` out of the log."""
    logging.getLogger("kopf.objects").addFilter(_QuietTracking())


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the registry in step with the watch stream (no API call, no patch)."""
    runtime = _runtime(memo)
    if event.get("type") == "DELETED":
        runtime.registry.forget(str(body.metadata.uid))
        return
    new = runtime.registry.observe(body)[1]
    if new:  # first sight since start: catch up with whatever changed meanwhile
        runtime.sync.mark([str(body.metadata.uid)])


def qualified(entry: Tracked) -> str:
    """`workflows.shoal.dev/NAME`: what kubectl reaches even beside Argo's Workflow kind."""
    return f"{RESOURCE.name}/{entry.name}"


def _note(runtime: WorkflowRuntime, entry: Tracked, type_: str, status: bool, reason: str,
          message: str = "") -> None:
    entry.notes[type_] = make_condition(type_, status, reason, message,
                                        generation=entry.generation)
    runtime.sync.mark([entry.uid])


async def _submit(runtime: WorkflowRuntime, entry: Tracked, body: kopf.Body,
                  spec: kopf.Spec, retry: int, patch: kopf.Patch) -> bool:
    """Submit the DAG (idempotent by uid); False when it was refused for good."""
    entry.generation = int(body.metadata.get("generation") or 1)
    try:
        parsed = parse_spec(spec)
        pool, backend = await runtime.pools.resolve(entry.namespace, parsed.pool_ref)
        check_pool_fit(parsed, pool.tasks)
        # Created with pause=true: paused from the start, so no step slips through
        # before the pause command (which `_steer` then records as already satisfied).
        intent = steering.read_intent(body.metadata.annotations)
        paused = intent.pause is not None and intent.pause.flag is True
        workflow_id = await backend.submit_workflow(
            parsed.dag(), name=f"{entry.namespace}/{entry.name}",
            namespace=pool.tasks.namespace, key=entry.uid, paused=paused)
    except InvalidWorkflow as exc:
        _note(runtime, entry, "Accepted", False, "InvalidSpec", str(exc))
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return False
    except (PoolNotFound, DatabaseSecretError, InvalidInput) as exc:
        reason = "PoolNotFound" if isinstance(exc, PoolNotFound) else "PoolUnusable"
        _note(runtime, entry, "Accepted", False, reason, f"{exc}; retrying")
        if retry == 0:
            kopf.warn(body, reason=reason, message=str(exc))
        raise kopf.TemporaryError(str(exc), delay=30) from None
    except (*UNREACHABLE, KubeError) as exc:
        _note(runtime, entry, "Accepted", False, "BackendUnavailable", f"{exc}; retrying")
        if retry == 0:
            kopf.warn(body, reason="BackendUnavailable", message=str(exc))
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry + 1, base=1, cap=30)) from None
    runtime.registry.attach(entry, workflow_id, backend)
    runtime.sync.watch(backend)
    entry.notes.pop("Accepted", None)  # the instance itself now says Accepted
    runtime.sync.mark([entry.uid])
    # The first phase label rides on kopf's own patch of this handler: one write less.
    entry.phase_label = patch.metadata.labels[PHASE_LABEL] = "Paused" if paused else "Running"
    return True


async def _steer(runtime: WorkflowRuntime, entry: Tracked, backend: Backend,
                 body: kopf.Body) -> None:
    """Send the commands the annotations ask for; note and report what cannot be done."""
    assert entry.workflow_id is not None
    intent = steering.read_intent(body.metadata.annotations)
    steered = "AnnotationsValid" in entry.notes or any(
        c.get("type") == "AnnotationsValid" for c in entry.status.get("conditions") or ())
    if intent == steering.Intent(None, None) and not steered:
        return  # never steered by annotations: no command log to read
    current = await backend.workflow_status(entry.workflow_id)
    plan = steering.plan(intent, uid=entry.uid, state=current.state, log=current.commands)
    rejections = list(plan.rejections)
    managed = body.metadata.get("managedFields")
    for command in plan.commands:
        owner = steering.annotation_manager(managed, command.key) if command.key else None
        actor = f"{owner[0] if owner else 'kubernetes'} ({command.annotation})"
        try:
            await backend.command(
                entry.workflow_id, command.command, actor=actor, request_id=command.request_id,
                reason=f"annotation on Workflow {entry.namespace}/{entry.name}")
        except InvalidCommand as exc:
            rejections.append(f"{command.annotation}: {exc}")
    if rejections:
        message = "; ".join(rejections)
        _note(runtime, entry, "AnnotationsValid", False, "InvalidAnnotation", message)
        kopf.warn(body, reason="InvalidAnnotation", message=(
            f"{message} (kubectl annotate --overwrite {qualified(entry)} -n {entry.namespace} "
            "pause=true|false or cancel=true)"))
    else:
        _note(runtime, entry, "AnnotationsValid", True, "Accepted")


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.update(GROUP, VERSION, PLURAL, field="metadata.annotations")
async def reconcile(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, retry: int,
                    patch: kopf.Patch, **_: Any) -> None:
    """Make sure the instance exists, then apply the annotations' commands."""
    runtime = _runtime(memo)
    entry = runtime.registry.observe(body)[0]
    if entry.workflow_id is None and not await _submit(runtime, entry, body, spec, retry, patch):
        return
    if entry.generation is not None and body.metadata.get("generation", 1) > entry.generation:
        kopf.warn(body, reason="SpecIgnored", message=(
            "the spec of a submitted Workflow cannot change; create a new one (kubectl delete "
            f"{qualified(entry)} -n {entry.namespace} frees the name)"))
    try:
        if entry.backend is None:
            entry.backend = (await runtime.pools.resolve(entry.namespace, entry.pool))[1]
            runtime.sync.watch(entry.backend)
        await _steer(runtime, entry, entry.backend, body)
    except NotFound:
        kopf.warn(body, reason="InstanceGone",
                  message=f"workflow instance {entry.workflow_id} no longer exists "
                          "(pruned after the retention period)")
    except (*UNREACHABLE, PoolNotFound, DatabaseSecretError, KubeError) as exc:
        raise kopf.TemporaryError(f"cannot send the command yet: {exc}",
                                  delay=retry_delay(retry + 1, base=1, cap=10)) from None


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def cancel_on_delete(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Cancel the instance; release the CR after DELETE_RETRIES failed attempts."""
    runtime = _runtime(memo)
    entry = runtime.registry.observe(body)[0]
    try:
        if entry.backend is None:
            entry.backend = (await runtime.pools.resolve(entry.namespace, entry.pool))[1]
        if entry.workflow_id is None:
            found = await entry.backend.workflow_id_by_key(entry.uid)
            if found is None:
                return  # never submitted: nothing to cancel
            runtime.registry.attach(entry, found)
        assert entry.workflow_id is not None
        await entry.backend.command(
            entry.workflow_id, "cancel", actor=f"Workflow {entry.namespace}/{entry.name} deleted",
            request_id=f"{entry.uid}/delete", reason="the Workflow resource was deleted")
    except NotFound:
        return  # already pruned
    except PoolNotFound as exc:
        kopf.warn(body, reason="CancelSkipped",
                  message=f"{exc}: the workflow instance cannot be reached to cancel it")
    except (*UNREACHABLE, DatabaseSecretError, KubeError, ShoalError) as exc:
        if retry < DELETE_RETRIES:
            raise kopf.TemporaryError(f"cannot cancel the instance yet: {exc}",
                                      delay=retry_delay(retry + 1, base=1, cap=8)) from None
        kopf.warn(body, reason="CancelFailed",
                  message=f"gave up cancelling workflow instance {entry.workflow_id} after "
                          f"{retry + 1} attempts ({exc}); it may run to its end")
    finally:
        runtime.registry.forget(entry.uid)
