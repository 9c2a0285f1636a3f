"""Plain records the backend returns; no behaviour, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

DEFAULT_LEASE_EXPIRIES = 3


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to enqueue."""

    name: str
    payload: Any = None
    namespace: str = "default"
    # None: what the task's workers declared (`@app.task(priority=, tags=)`), else 0
    # and no tags.
    priority: int | None = None
    tags: tuple[str, ...] | None = None
    delay_seconds: float = 0.0
    max_attempts: int | None = None  # None: the handler's retries decide at claim time
    # Leases that may expire (worker killed, frozen, cut off) without the task
    # becoming a dead letter; such a run does not use up an attempt.
    # None: the handler's definition decides at claim time.
    lease_expiries: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    # How long the key is held: "forever" (until retention prunes the task) or
    # "active" (until the task succeeded, was cancelled or is dead).
    unique: str = "forever"


class ClaimedTask(NamedTuple):
    """A task leased to this worker; `lease_token` fences its result.

    A NamedTuple, like Outcome: one is built per task on the hot path.
    """

    id: int
    name: str
    payload: Any
    attempt: int
    max_attempts: int
    lease_token: int
    timeout_seconds: float | None
    workflow_id: UUID | None
    step: str | None
    due_at: float  # when it became claimable (run_at), in Unix seconds
    # A suspect (its lease expired twice): its worker runs nothing else beside it.
    alone: bool = False
    # When its lease expires, in Unix seconds by the database's clock, where the
    # worker did not take the lease itself (a handoff, a claim found on catching
    # up); None for a claim: its lease lasts the claim TTL from the claim.
    expires_at: float | None = None


class Outcome(NamedTuple):
    """What a worker reports for one task it held."""

    task_id: int
    lease_token: int
    workflow_id: UUID | None = None
    result_json: str = "null"  # the handler's result, already encoded as JSON text
    error: str | None = None
    retry_in_seconds: float | None = None  # with error: None means dead letter
    cancelled: bool = False

    @property
    def is_plain_success(self) -> bool:
        """A success outside any workflow: what a claim may carry."""
        return self.error is None and not self.cancelled and self.workflow_id is None


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who a worker is, as its liveness row shows it."""

    id: str
    namespace: str
    tags: tuple[str, ...]
    task_names: tuple[str, ...]
    concurrency: int
    max_attempts: tuple[int, ...] = ()  # per task name: used when the producer set none
    max_expiries: tuple[int, ...] = ()  # the same for lease expiries
    pool: str | None = None
    pod_name: str | None = None
    # The channel this worker listens on for handoffs; None: it takes none.
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """Leases still held after a heartbeat, and those whose work must be cancelled.

    `withdrawn` (a subset of both): attempts `cancel_task` ended; nothing to report.
    """

    held: frozenset[int]
    cancel: frozenset[int]
    withdrawn: frozenset[int] = frozenset()
    election: Election | None = None  # the outcome, when the heartbeat stood (`Candidacy`)


@dataclass(frozen=True, slots=True)
class Candidacy:
    """A follower standing for the maintenance role in its heartbeat: it takes the role
    under a new term if the term lapsed `grace` seconds ago or more, for `seconds`."""

    holder: str
    seconds: float
    grace: float


@dataclass(frozen=True, slots=True)
class Election:
    """The maintenance role after an election: `term` is the term the caller leads
    under (None: `holder` leads), `remaining` the seconds its term had left before."""

    term: int | None
    holder: str
    remaining: float


@dataclass(frozen=True, slots=True)
class PoolTasks:
    """The tasks a pool serves: those in `namespace` whose tags are a subset of `tags`
    and, unless `names` is None, whose name is among `names`."""

    namespace: str
    tags: tuple[str, ...] = ()
    names: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """Tasks a pool can serve: ready now, running, waiting (delayed or paused), dead;
    of the waiting ones, those due within the lead asked for (or overdue); the age of
    the oldest and of the newest ready task (0: none) and the seconds to the run_at of
    the next waiting task not yet due (None: none)."""

    ready: int
    running: int
    waiting: int
    dead: int
    due: int = 0
    oldest_ready_seconds: float = 0.0
    newest_ready_seconds: float = 0.0
    next_due_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class TaskFlow:
    """One task name of a pool over a recent span (see `Backend.flows`): tasks that
    finished and their summed start-to-finish seconds, tasks that became ready, tasks
    ready now, and tasks running for longer than the pool's target."""

    name: str
    finished: int
    busy_seconds: float
    arrivals: int
    ready: int
    long_running: int
    span_seconds: float


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    pool: str | None
    pod_name: str | None
    namespace: str
    tags: list[str]
    task_names: list[str]
    concurrency: int
    in_flight: int
    draining: bool
    started_at: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class KilledWorker:
    """One run of a pool pod's worker that something outside it killed (an OOM kill).

    The run's leases are those its pod's workers (liveness rows with this pool and
    pod name) took from `started_at` to `killed_at`, by the database's clock; a
    lease taken later is a later run's (the restarted container's).
    """

    pool: str
    pod_name: str
    started_at: datetime
    killed_at: datetime
    cause: str  # what the tasks' error says, e.g. "OOMKilled on pod p (container worker)"


@dataclass(frozen=True, slots=True)
class Reroute:
    """Where the retry of a killed run's task goes: the task's tags become `tags`
    (a worker claims a task whose tags are a subset of its own), for tasks named
    in `names` (None: any name)."""

    tags: tuple[str, ...]
    names: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class KilledLease:
    """A task whose lease a killed run held, after `Backend.end_killed_leases`."""

    task_id: int
    state: str  # 'ready': retried now; 'dead': its lease-expiry budget was used up
    rerouted: bool  # its tags became the Reroute's
    reaped: bool  # the lease reaper had ended the lease first: only the cause was added


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: int
    namespace: str
    name: str
    payload: Any
    state: str
    priority: int
    tags: list[str]
    run_at: datetime
    enqueued_at: datetime
    attempts: int
    max_attempts: int
    expiries: int
    max_expiries: int | None
    lease_token: int
    worker_id: str | None
    workflow_id: UUID | None
    step: str | None
    result: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    namespace: str
    name: str
    payload: Any
    attempts: int
    max_attempts: int
    error: str | None
    workflow_id: UUID | None
    step: str | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Selects dead letters; unset fields match everything."""

    task_name: str | None = None
    namespace: str | None = None
    workflow_id: UUID | None = None
    task_id: int | None = None


@dataclass(frozen=True, slots=True)
class StepStatus:
    name: str
    task: str
    state: str
    attempts: int
    max_attempts: int
    output: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class CommandRecord:
    id: int
    command: str
    actor: str
    reason: str
    request_id: str | None
    applied: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow instance as the backend sees it."""

    id: UUID
    key: str | None
    name: str
    namespace: str
    state: str
    message: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    steps: list[StepStatus] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)

    @property
    def progress(self) -> tuple[int, int]:
        """(succeeded steps, all steps)."""
        return sum(s.state == "succeeded" for s in self.steps), len(self.steps)


# -- day two ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What `cancel_task` did: the state the task was in, and whether it is cancelled now."""

    task_id: int
    previous_state: str
    applied: bool


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Selects tasks to list; unset fields match everything.

    `states` may name `delayed` (ready, not due yet) beside the stored states;
    `tags`: tasks carrying all of them; ages in seconds since enqueue.
    """

    states: tuple[str, ...] | None = None
    name: str | None = None
    namespace: str | None = None
    tags: tuple[str, ...] | None = None
    workflow_id: UUID | None = None
    older_than: float | None = None
    newer_than: float | None = None
    before_id: int | None = None  # paging: only ids below this one


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """One row of a task listing (no payload or result)."""

    id: int
    namespace: str
    name: str
    state: str
    priority: int
    tags: list[str]
    attempts: int
    max_attempts: int | None
    run_at: datetime
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    workflow_id: UUID | None
    step: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Tasks of one name in one namespace by state, and how long the oldest ready one waits."""

    namespace: str
    name: str
    ready: int
    delayed: int
    paused: int
    running: int
    blocked: int
    dead: int
    oldest_ready_seconds: float | None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic schedule as a worker declares it."""

    name: str
    task: str
    cron: str
    timezone: str = "UTC"
    payload: Any = None
    priority: int = 0
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A periodic schedule as stored: its definition, last tick and the task enqueued for it."""

    namespace: str
    name: str
    task: str
    cron: str
    timezone: str
    payload: Any
    priority: int
    tags: list[str]
    last_tick: datetime
    last_task_id: int | None
    last_state: str | None
    declared_at: datetime
