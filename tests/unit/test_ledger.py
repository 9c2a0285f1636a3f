"""The ledger's rules, without a database: which leased tasks start, when a lease lapses
by the worker's own clock, what a heartbeat's answer extends and stops, and when the
worker counts as in contact with the database."""

from __future__ import annotations

import pytest

from shoal.backend import ClaimedTask, HeartbeatReply, Outcome
from shoal.worker.ledger import Admission, Contact, Ledger, Stop, local_deadline

TTL = 10.0


def task(task_id: int, token: int = 1, *, alone: bool = False) -> ClaimedTask:
    return ClaimedTask(id=task_id, name="t", payload=None, attempt=1, max_attempts=1,
                       lease_token=token, timeout_seconds=None, workflow_id=None, step=None,
                       due_at=0.0, alone=alone)


def reply(held: set[int], cancel: set[int] = frozenset(),  # type: ignore[assignment]
          withdrawn: set[int] = frozenset()) -> HeartbeatReply:  # type: ignore[assignment]
    return HeartbeatReply(held=frozenset(held), cancel=frozenset(cancel),
                          withdrawn=frozenset(withdrawn))


def test_a_task_held_already_never_starts_twice() -> None:
    """The partition-heal finding: the catch-up started a task, then the claim's reply
    started it again 1 ms later and the worker died of a KeyError."""
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    assert ledger.admit(task(1), 110.0, 100.0, claimed=False, stopping=False) is Admission.START
    ledger.start(task(1), 110.0)
    for claimed in (True, False):
        assert ledger.admit(task(1), 110.0, 100.0, claimed=claimed,
                            stopping=False) is Admission.HELD


def test_a_lease_past_its_deadline_is_never_started() -> None:
    """The frozen-handoff finding: a handoff read after its lease lapsed ran beside the
    re-run the leader had already given the task to."""
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    for claimed in (True, False):
        assert ledger.admit(task(1), 100.0, 100.0, claimed=claimed,
                            stopping=False) is Admission.LAPSED
        assert ledger.admit(task(1), 99.0, 100.0, claimed=claimed,
                            stopping=False) is Admission.LAPSED


def test_unasked_leases_start_only_with_room() -> None:
    ledger = Ledger(concurrency=1, claim_ttl=TTL)
    assert ledger.admit(task(1), 110, 100, claimed=False, stopping=True) is Admission.FULL
    ledger.start(task(1), 110)
    assert ledger.admit(task(2), 110, 100, claimed=False, stopping=False) is Admission.FULL
    # a claim asked for room: its tasks start (free_slots bounded what it asked for)
    assert ledger.admit(task(2), 110, 100, claimed=True, stopping=False) is Admission.START


def test_nothing_unasked_starts_beside_a_suspect() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    ledger.start(task(1, alone=True), 110)
    assert ledger.free_slots() == 0
    assert ledger.admit(task(2), 110, 100, claimed=False, stopping=False) is Admission.FULL


def test_free_slots_bound_running_and_unreported() -> None:
    ledger = Ledger(concurrency=2, claim_ttl=TTL)
    assert ledger.free_slots() == 2
    a, b = ledger.start(task(1), 110), ledger.start(task(2), 110)
    assert ledger.free_slots() == 0
    ledger.ended(a, Outcome(1, 1))
    ledger.ended(b, Outcome(2, 1))
    assert ledger.free_slots() == 2  # two results wait: two more may run
    ledger.start(task(3), 110)
    ledger.start(task(4), 110)
    assert ledger.free_slots() == 0  # two running, two unreported: 2 x concurrency held


def test_a_heartbeat_extends_what_it_renewed_from_its_send_time() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    ledger.start(task(1), 105.0)
    ledger.start(task(2), 105.0)
    sent = ledger.renewal()
    assert sorted(sent) == [(1, 1), (2, 1)]
    stops = ledger.renewed(sent, sent_at=100.0, answered_at=100.2, reply=reply({1}))
    assert ledger.leases[1].deadline == 110.0  # the send time, not the answer's
    assert ledger.leases[2].deadline == 105.0  # not renewed: its deadline stands
    assert [(lease.task.id, stop) for lease, stop in stops] == [(2, Stop.LEASE_LOST)]


def test_a_late_answer_never_shortens_a_deadline_and_ignores_newer_leases() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    ledger.start(task(1, token=2), 120.0)
    stops = ledger.renewed([(1, 1)], sent_at=100.0, answered_at=101.0, reply=reply(set()))
    assert stops == [] and ledger.leases[1].deadline == 120.0  # token 1 is not the lease held
    ledger.renewed([(1, 2)], sent_at=105.0, answered_at=106.0, reply=reply({1}))
    assert ledger.leases[1].deadline == 120.0


def test_cancels_and_withdrawals_stop_runs_and_withdrawals_are_not_renewed() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    for i in (1, 2, 3):
        ledger.start(task(i), 105.0)
    stops = ledger.renewed(ledger.renewal(), 100.0, 100.1,
                           reply({1, 2, 3}, cancel={2, 3}, withdrawn={3}))
    assert sorted((lease.task.id, stop) for lease, stop in stops) == [
        (2, Stop.CANCELLED), (3, Stop.WITHDRAWN)]
    assert [ledger.leases[i].deadline for i in (1, 2, 3)] == [110.0, 110.0, 105.0]


def test_self_fencing_names_the_runs_past_their_deadline() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    early, late = ledger.start(task(1), 105.0), ledger.start(task(2), 108.0)
    assert ledger.next_deadline() == 105.0
    assert ledger.lapsed(104.9) == []
    assert ledger.lapsed(105.0) == [early]
    early.stop = Stop.LAPSED  # interrupted: not named again
    assert ledger.lapsed(200.0) == [late]
    assert ledger.next_deadline() == 108.0
    ledger.ended(late, Outcome(2, 1))  # a result waits: no handler to stop
    assert ledger.lapsed(200.0) == [] and ledger.next_deadline() is None


def test_a_handler_reads_its_lapse_through_its_context() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    lease = ledger.start(task(1), float("inf"))
    assert not lease.context.cancelled
    lease.deadline = 0.0  # monotonic time 0 has passed
    assert lease.context.cancelled


def test_stopped_attempts_release_give_up_or_forget_their_lease() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    leases = {stop: ledger.start(task(i), 110) for i, stop in enumerate(Stop)}
    for stop, lease in leases.items():
        lease.stop = stop
        ledger.ended(lease, None)
    handed_back = {Stop.DRAIN, Stop.ABANDON, Stop.LAPSED}
    assert {lease.stop for lease in ledger.releases} == handed_back
    assert set(ledger.leases) == {leases[stop].task.id for stop in handed_back}
    ledger.released(list(ledger.releases))
    assert ledger.leases == {} and ledger.releases == []


def test_a_report_settles_what_it_carried() -> None:
    ledger = Ledger(concurrency=4, claim_ttl=TTL)
    for i in (1, 2):
        ledger.ended(ledger.start(task(i), 110), Outcome(i, 1))
    batch = ledger.take_successes()
    assert [o.task_id for o in batch] == [1, 2] and ledger.outbox == []
    ledger.put_back(batch[1:])
    assert [o.task_id for o in ledger.outbox] == [2]
    settled = ledger.settle(batch[:1], accepted={1})
    assert [(t.id, ok) for t, _o, ok in settled] == [(1, True)]
    assert set(ledger.leases) == {2}


def test_contact_needs_answers_on_time() -> None:
    contact = Contact(max_gap=6.0)
    assert contact.length(100.0) == 0.0  # never answered
    contact.answered(sent_at=100.0, answered_at=100.1)
    contact.answered(sent_at=105.0, answered_at=105.1)
    assert contact.length(110.0) == 10.0
    contact.answered(sent_at=120.0, answered_at=120.1)  # 15 s without an answer: a gap
    assert contact.length(121.0) == 1.0
    contact.failed()
    assert contact.length(122.0) == 0.0
    contact.answered(sent_at=123.0, answered_at=123.1)
    assert contact.length(124.0) == 1.0


@pytest.mark.parametrize("offset", [-3.0, 0.0, 2.5])
def test_a_database_expiry_becomes_a_local_deadline(offset: float) -> None:
    # the database's clock reads `offset` seconds ahead of this host's
    wall, mono = 1_000_000.0, 50.0
    expires_at = wall + offset + 7.0  # seven seconds from now, by the database's clock
    assert local_deadline(expires_at, wall_now=wall, mono_now=mono,
                          db_offset=offset) == pytest.approx(57.0)
