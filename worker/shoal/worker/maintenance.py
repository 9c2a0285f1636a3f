"""The maintenance service: one leader per schema keeps the tables in shape."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from shoal.backend import Backend, Candidacy, Election
from shoal.worker import metrics
from shoal.worker.ledger import Contact
from shoal.worker.signals import Signals
from shoal.worker.supervisor import repeat

log = logging.getLogger(__name__)

REAP_BATCH = 1000  # expired leases per statement
PRUNE_BATCH = 5000  # finished tasks (and workflows) per statement


def pass_interval(claim_ttl: float) -> float:
    """Seconds between two passes: a quarter of the claim TTL, within [0.25, 5]."""
    return min(5.0, max(0.25, claim_ttl / 4))


def term_seconds(claim_ttl: float) -> float:
    """How long a term lasts unless renewed: half the claim TTL, and at least three
    pass intervals (the leader renews it every pass)."""
    return max(claim_ttl / 2, 3 * pass_interval(claim_ttl))


def follower_pause(remaining: float, claim_ttl: float, jitter: float) -> float:
    """A follower's wait before its next election: until the leader's term would
    lapse (it tries again then, in case the leader did not renew it), or a pass
    interval when it saw no term left (another worker took the role as it tried),
    plus `jitter` (0..1) of a quarter pass so followers spread out.

    Never a whole interval when a little of the term is left: a follower that
    looked just before the leader's last renewal wakes with less than an interval
    to go, and waiting an interval (plus a second jitter) then took the role up to
    half a pass after the lapse instead of a quarter."""
    interval = pass_interval(claim_ttl)
    return (remaining if remaining > 0 else interval) + jitter * interval / 4


class Maintenance:
    """Reaps expired leases, forgets dead workers and prunes finished work, on
    one worker per schema.

    Guarantees: the leader holds the maintenance role's lease (`Backend.elect`,
    `term_seconds` long) and renews it every pass; every action it takes names
    its term, and the database refuses one from a term that is not current and
    unexpired. So a leader that is frozen or cut off loses the role when its term
    lapses and does nothing when it comes back until it wins a term again;
    another worker takes over within a quarter pass interval of the lapse.
    The leader reaps expired leases and forgets dead workers only once it has
    been in contact with the database (`Contact`) for a whole claim TTL: after
    an outage that cut every worker off (a restart, a failover, a partition)
    the others have that long to renew their leases. A worker not yet in
    contact that long stands for election a pass interval after the term
    lapsed, so that after a leader that alone froze or was cut off, a follower
    in contact wins and reaps at once; the leader's other duties (pruning, the
    scheduler's promotions) need no contact and start with its term.
    A follower stands in its own heartbeat (`candidacy`, `counted`): one
    statement a beat does both, and a follower asks for a beat only when the
    term would lapse and no beat has told it of the term since its last turn.
    Every pass of the leader runs to exhaustion in bounded batches (REAP_BATCH,
    PRUNE_BATCH), so other statements get between them and nothing is left for
    the next pass: an expired lease is reclaimed (or dead-lettered) within one
    interval of expiring, a worker unseen for three of its claim TTLs is
    forgotten, and finished plain tasks and finished workflows older than
    `retention` are deleted, however fast they come, and so are the waits
    crashed clients left (`Backend.prune_waits`). Transient database errors
    are retried with backoff. On a drain the leader resigns and says so on the control channel,
    and the followers stand for election at once.
    """

    name = "maintenance"

    def __init__(self, backend: Backend, holder: str, claim_ttl: float, retention: float,
                 contact: Contact, signals: Signals,
                 jitter: Callable[[], float] = random.random) -> None:
        self.backend = backend
        self.holder = holder
        self.claim_ttl = claim_ttl
        self.retention = retention
        self.contact = contact
        self.signals = signals
        self.jitter = jitter
        self.term = 0  # the term led, 0 while following
        self._news: tuple[Election, float] | None = None  # a heartbeat's outcome, and when
        self._heard = asyncio.Event()

    def candidacy(self) -> Candidacy | None:
        """What this worker's heartbeat stands for: the role, while it follows."""
        if self.term:
            return None
        return Candidacy(self.holder, term_seconds(self.claim_ttl),
                         self._grace(self._in_contact()))

    def counted(self, election: Election) -> None:
        """The outcome of a heartbeat that stood; the next turn reads it, at once when
        the heartbeat won the role."""
        self._news = (election, time.monotonic())
        self._heard.set()
        if election.term is not None:
            self.signals.elect_due.set()

    async def run(self) -> None:
        await self.signals.registered.wait()
        await repeat("maintenance", self._turn, wake=self.signals.elect_due)

    async def resign(self) -> None:
        """Give the role up now (a drain): another worker may lead at once."""
        if self.term:
            if await self.backend.resign(self.holder, self.term):
                log.info("resigned maintenance of schema %s (term %d)", self.backend.schema,
                         self.term)
            else:  # e.g. frozen past its term, and stopped before its next turn
                log.warning("no longer leading maintenance of schema %s: term %d lapsed",
                            self.backend.schema, self.term)
            self.term = 0

    def _in_contact(self) -> bool:
        return self.contact.length(time.monotonic()) >= self.claim_ttl

    def _grace(self, in_contact: bool) -> float:
        """How long after a lapse this worker may take the role (see the class docstring)."""
        return 0.0 if in_contact else pass_interval(self.claim_ttl)

    async def _turn(self) -> float:
        """Renew or win the role; run a pass if leading; the seconds to the next turn."""
        in_contact = self._in_contact()
        if self.term:
            election = await self.backend.elect(self.holder, self.term,
                                                term_seconds(self.claim_ttl),
                                                self._grace(in_contact))
            waited = 0.0
        else:
            election, waited = await self._stood()
        if election.term is None:
            if self.term:
                log.warning("no longer leading maintenance of schema %s: term %d lapsed, "
                            "%s leads", self.backend.schema, self.term, election.holder)
                self.term = 0
            left = election.remaining - waited
            if waited and left <= 0:
                return 0.0  # the term heard of may have lapsed since: stand now
            return follower_pause(left, self.claim_ttl, self.jitter())
        if election.term != self.term:
            log.info("leading maintenance of schema %s (term %d)", self.backend.schema,
                     election.term)
            self.term = election.term
        await self._pass(self.term, judge=in_contact)
        return pass_interval(self.claim_ttl)

    async def _stood(self) -> tuple[Election, float]:
        """A follower's election, held by its heartbeat (one statement for both): the
        outcome heard since the last turn, else that of a heartbeat asked for now;
        and the seconds since it was heard."""
        if self._news is None:
            self._heard.clear()
            self.signals.beat_due.set()
            await self._heard.wait()
        assert self._news is not None
        (election, heard_at), self._news = self._news, None
        return election, time.monotonic() - heard_at

    async def _pass(self, term: int, judge: bool) -> None:
        """One pass; with `judge` (in contact for a TTL), other workers' leases and
        liveness rows are judged too."""
        backend = self.backend
        if judge:
            await self._reap(term)
            await backend.reap_workers(term=term)
        while True:
            tasks, workflows = await backend.prune(self.retention, PRUNE_BATCH, term=term)
            waits = await backend.prune_waits(PRUNE_BATCH, term=term)
            if tasks < PRUNE_BATCH and workflows < PRUNE_BATCH and waits < PRUNE_BATCH:
                break

    async def _reap(self, term: int) -> None:
        while True:
            reclaimed = await self.backend.reap_expired(REAP_BATCH, term=term)
            if reclaimed:
                metrics.RECLAIMED.inc(reclaimed)
                log.info("reclaimed %d tasks with expired leases", reclaimed)
            if reclaimed < REAP_BATCH:
                break
