"""What a worker holds, and the rules over it, without I/O.

The `Ledger` is the one record of a worker's leases: the attempts running, the
results waiting for their report, the leases to hand back, and when each lease
lapses by this worker's own clock. The services read and write it; every rule
that decides what happens to a lease is here and is a plain function of the
ledger and the time passed in (monotonic seconds), so it is tested without a
database:

- `admit`: a task leased to this worker runs at most once at a time, never
  after its lease lapsed, and only while there is room (`Admission`);
- `renewed`: a heartbeat's answer extends the leases still held to its send
  time plus the claim TTL, and says which running attempts must stop;
- `lapsed`: self-fencing — an attempt whose lease was not renewed by its
  deadline must stop, whatever the database may think;
- `Contact`: whether this worker has heard the database answer its heartbeats
  on time for long enough to judge other workers' leases (the maintenance
  leader reaps only then).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.backend import ClaimedTask, HeartbeatReply, Outcome
from shoal.worker.app import TaskContext

# Results per report statement: bounds each statement's cost whatever plan the
# database picks, and lets other statements run between two chunks.
REPORT_CHUNK = 500


class Stop(enum.Enum):
    """Why a running attempt was stopped, which decides what becomes of its lease."""

    CANCELLED = "cancelled"  # its workflow was cancelled: reported as cancelled
    WITHDRAWN = "withdrawn"  # cancel_task ended it: nothing to report
    LEASE_LOST = "lease_lost"  # the heartbeat found its lease gone: nothing to report
    LAPSED = "lapsed"  # not renewed in time (self-fencing): given up as an expiry
    DRAIN = "drain"  # the worker drains: the lease is released, the attempt not counted
    ABANDON = "abandon"  # the worker failed: given up as an expiry (see Backend.abandon)


# Stopped attempts whose lease the worker hands back itself: released (DRAIN), or
# given up as an expiry (ABANDON; LAPSED, once the database answers again, so the
# task need not wait for the leader to reap it).
HAND_BACK = (Stop.DRAIN, Stop.ABANDON, Stop.LAPSED)


class Admission(enum.Enum):
    """What to do with a task leased to this worker."""

    START = "start"
    HELD = "held"  # already held (heard of twice): nothing
    LAPSED = "lapsed"  # its lease has passed its deadline: hand it back, never start it
    FULL = "full"  # no room now: hand it back


@dataclass(eq=False)
class Lease:
    """A task this worker holds, from its claim until its report or release.

    `deadline` (monotonic seconds): when the lease lapses by this worker's clock
    unless a heartbeat renews it; never later than the database's expiry.
    """

    task: ClaimedTask
    deadline: float
    stop: Stop | None = None
    running: bool = True
    context: TaskContext = field(init=False)

    def __post_init__(self) -> None:
        t = self.task
        self.context = TaskContext(t.id, t.name, t.attempt, t.max_attempts, t.workflow_id,
                                   t.step, lapsed=self.lapsed)

    def lapsed(self) -> bool:
        """Whether the lease passed its deadline by this worker's clock now."""
        return self.deadline <= time.monotonic()


@dataclass
class Contact:
    """Whether the database has been answering this worker's heartbeats on time.

    A heartbeat answered more than `max_gap` after the previous one, or after a
    failed one, starts a new stretch of contact at its send time. A worker in
    contact for a whole claim TTL knows the database was reachable all that time:
    a lease that expired meanwhile belongs to a worker that could not renew it,
    not to an outage that cut everyone off.
    """

    max_gap: float
    since: float | None = None
    last_answer: float | None = None
    broken: bool = True

    def answered(self, sent_at: float, answered_at: float) -> None:
        if (self.broken or self.last_answer is None
                or answered_at - self.last_answer > self.max_gap):
            self.since = sent_at
        self.last_answer = answered_at
        self.broken = False

    def failed(self) -> None:
        self.broken = True

    def length(self, now: float) -> float:
        """Seconds of unbroken contact up to `now` (0 without contact)."""
        if self.broken or self.since is None:
            return 0.0
        return max(0.0, now - self.since)


@dataclass
class Ledger:
    """Everything a worker holds; see the module docstring."""

    concurrency: int
    claim_ttl: float
    leases: dict[int, Lease] = field(default_factory=dict)  # held: not reported, not released
    outbox: list[Outcome] = field(default_factory=list)  # results waiting for their report
    releases: list[Lease] = field(default_factory=list)  # leases to hand back
    contact: Contact = field(init=False)
    busy: int = 0  # handlers running now (results awaiting their report not counted)
    suspects: int = 0  # of those, tasks whose lease expired twice (see `free_slots`)

    def __post_init__(self) -> None:
        # Heartbeats are answered TTL/2 apart when all is well; an outage of TTL/2 or
        # more is what could expire leases. A quarter TTL of slack absorbs a heartbeat
        # that queued behind other statements on a busy connection.
        self.contact = Contact(max_gap=0.75 * self.claim_ttl)

    # -- room --------------------------------------------------------------------

    @property
    def running(self) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.running]

    def free_slots(self) -> int:
        """Tasks this worker may claim now: at most `concurrency` handlers running,
        at most `concurrency` more results waiting for their report, and none
        while a suspect (a task whose lease expired twice) runs: it runs alone."""
        if self.suspects:
            return 0
        c = self.concurrency
        return min(c - self.busy, 2 * c - len(self.leases))

    # -- taking leases -------------------------------------------------------------

    def admit(self, task: ClaimedTask, deadline: float, now: float, *,
              claimed: bool, stopping: bool) -> Admission:
        """Whether to start `task`, leased to this worker until `deadline`.

        A task already held is never started again (a claim's reply and the
        catch-up after a reconnect may both bring it). A lease past its deadline
        is never started: by now the database may have given the task to someone
        else. A task this worker did not ask for (a handoff, a lost claim's reply)
        starts only while it has room and does not drain; a claim asked for room.
        """
        if task.id in self.leases:
            return Admission.HELD
        if deadline <= now:
            return Admission.LAPSED
        if not claimed and (stopping or self.busy >= self.concurrency or self.suspects):
            return Admission.FULL
        return Admission.START

    def start(self, task: ClaimedTask, deadline: float) -> Lease:
        """Record a running attempt of `task` (admitted with START)."""
        assert task.id not in self.leases, f"task {task.id} is held already"
        lease = Lease(task, deadline)
        self.leases[task.id] = lease
        self.busy += 1
        self.suspects += task.alone
        return lease

    def ended(self, lease: Lease, outcome: Outcome | None) -> None:
        """The attempt's handler ended: its outcome waits for its report; without one
        (a stopped attempt) the lease waits to be handed back (released, or given up
        as an expiry: see `HAND_BACK`), or is forgotten (its lease is gone)."""
        lease.running = False
        self.busy -= 1
        self.suspects -= lease.task.alone
        if outcome is not None:
            self.outbox.append(outcome)
        elif lease.stop in HAND_BACK:
            self.releases.append(lease)
        else:
            self.leases.pop(lease.task.id, None)

    # -- renewing ----------------------------------------------------------------------

    def renewal(self) -> list[tuple[int, int]]:
        """The (task id, lease token) pairs a heartbeat renews: every lease held."""
        return [(lease.task.id, lease.task.lease_token) for lease in self.leases.values()]

    def renewed(self, sent: Iterable[tuple[int, int]], sent_at: float, answered_at: float,
                reply: HeartbeatReply) -> list[tuple[Lease, Stop]]:
        """Apply a heartbeat sent at `sent_at` for `sent`: each lease still held lasts
        a claim TTL from `sent_at` (the database extended it later than that); the
        running attempts to stop are returned, with why."""
        self.contact.answered(sent_at, answered_at)
        stops: list[tuple[Lease, Stop]] = []
        for task_id, token in sent:
            lease = self.leases.get(task_id)
            if lease is None or lease.task.lease_token != token:
                continue
            if task_id in reply.held and task_id not in reply.withdrawn:
                lease.deadline = max(lease.deadline, sent_at + self.claim_ttl)
            if not lease.running or lease.stop is not None:
                continue
            if task_id not in reply.held:
                stops.append((lease, Stop.LEASE_LOST))
            elif task_id in reply.withdrawn:
                stops.append((lease, Stop.WITHDRAWN))
            elif task_id in reply.cancel:
                stops.append((lease, Stop.CANCELLED))
        return stops

    def lapsed(self, now: float) -> list[Lease]:
        """Running attempts not stopped yet whose lease passed its deadline."""
        return [lease for lease in self.leases.values()
                if lease.running and lease.stop is None and lease.deadline <= now]

    def next_deadline(self) -> float | None:
        """The earliest deadline of a running attempt not stopped yet."""
        deadlines = [lease.deadline for lease in self.leases.values()
                     if lease.running and lease.stop is None]
        return min(deadlines, default=None)

    # -- reporting ---------------------------------------------------------------------

    def take_outbox(self, successes: bool) -> list[Outcome]:
        """Up to REPORT_CHUNK outcomes out of the outbox; plain successes only if
        `successes` (else they stay for the next claim to carry)."""
        if successes:
            batch, self.outbox = self.outbox[:REPORT_CHUNK], self.outbox[REPORT_CHUNK:]
            return batch
        return self.take(lambda o: not o.is_plain_success)

    def take_successes(self) -> list[Outcome]:
        """Up to REPORT_CHUNK plain successes, for a claim to carry."""
        return self.take(lambda o: o.is_plain_success)

    def take(self, which: Callable[[Outcome], bool]) -> list[Outcome]:
        batch = [o for o in self.outbox if which(o)][:REPORT_CHUNK]
        taken = {o.task_id for o in batch}
        self.outbox = [o for o in self.outbox if o.task_id not in taken]
        return batch

    def put_back(self, batch: list[Outcome]) -> None:
        """Outcomes whose report failed: first in line for the next one."""
        self.outbox[:0] = batch

    def settle(self, batch: Iterable[Outcome],
               accepted: set[int]) -> list[tuple[ClaimedTask, Outcome, bool]]:
        """Forget the reported attempts of `batch`; each with whether it was accepted."""
        settled = []
        for outcome in batch:
            lease = self.leases.pop(outcome.task_id, None)
            if lease is not None:
                settled.append((lease.task, outcome, outcome.task_id in accepted))
        return settled

    def released(self, leases: Iterable[Lease]) -> None:
        """Forget leases handed back (released or given up)."""
        gone = list(leases)
        for lease in gone:
            self.leases.pop(lease.task.id, None)
        self.releases = [lease for lease in self.releases if lease not in gone]


def local_deadline(expires_at: float, *, wall_now: float, mono_now: float,
                   db_offset: float) -> float:
    """A lease expiry in the database's Unix time as a monotonic deadline of this worker:
    `db_offset` is the database's clock minus this host's (see `runtime.DatabaseClock`)."""
    return mono_now + (expires_at - (wall_now + db_offset))

