"""The timing rules gray failures are bounded by, without a database: every wait on a
worker's connection sized from the claim TTL, the maintenance role's term and when a
follower stands again, and `Fenced`, which never resumes an async handler past its
lease's deadline."""

from __future__ import annotations

import asyncio

import pytest

from shoal.backend import ClaimedTask, LinkTimeouts, describe
from shoal.worker.ledger import Lease, Stop
from shoal.worker.maintenance import follower_pause, pass_interval, term_seconds
from shoal.worker.runtime import Fenced
from shoal.worker.scheduler import TICK, next_look


@pytest.mark.parametrize("ttl", [2.0, 10.0, 30.0, 300.0, 3600.0])
def test_a_silent_link_is_noticed_before_the_leases_on_it_lapse(ttl: float) -> None:
    t = LinkTimeouts.for_claim_ttl(ttl)
    # not ready within TTL/2 of a silent link, idle or busy (the kernel's keepalive
    # counts whole seconds: under a 4 s TTL, within its second and a quarter TTL)
    assert t.keepalive_idle + t.stall + t.probe / 2 <= max(ttl / 2, 1 + ttl / 4)
    assert t.keepalive_idle <= max(1, t.probe + 0.5)
    assert t.statement <= max(1.0, ttl / 2)  # a hung statement ends by TTL/2 (1 s floor)
    assert t.stall < t.statement
    assert t.keepalive_idle + t.keepalive_count * t.keepalive_interval <= max(4, ttl)
    settings = t.server_settings()
    assert settings["statement_timeout"] == str(round(t.statement * 1000))
    assert int(settings["tcp_user_timeout"]) <= max(1000, ttl * 500)


@pytest.mark.parametrize("ttl", [0.5, 2.0, 30.0, 300.0])
def test_a_term_outlasts_several_renewals_and_no_lease(ttl: float) -> None:
    interval = pass_interval(ttl)
    assert term_seconds(ttl) >= 3 * interval  # two missed renewals do not lose it
    # a frozen leader's term lapses by the time the leases it stopped renewing expire
    # (their earliest expiry is TTL/2 after the freeze), or within three passes
    assert term_seconds(ttl) <= max(ttl / 2, 3 * interval)


def test_a_follower_stands_again_when_the_term_would_lapse() -> None:
    ttl = 30.0
    assert follower_pause(12.0, ttl, jitter=0.0) == 12.0
    assert follower_pause(0.0, ttl, jitter=0.0) == pass_interval(ttl)
    # a term a little short of lapsing is tried again at its lapse, not a pass later
    assert follower_pause(0.5, ttl, jitter=0.0) == 0.5
    assert follower_pause(0.5, ttl, jitter=1.0) == 0.5 + pass_interval(ttl) / 4
    assert follower_pause(12.0, ttl, jitter=1.0) == 12.0 + pass_interval(ttl) / 4


def test_describe_always_names_the_cause() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(OSError("no route to host")) == "OSError: no route to host"
    assert describe(RuntimeError("first line\nsecond")) == "RuntimeError: first line"


def lease(deadline: float) -> Lease:
    return Lease(ClaimedTask(id=1, name="t", payload=None, attempt=1, max_attempts=1,
                             lease_token=1, timeout_seconds=None, workflow_id=None,
                             step=None, due_at=0.0), deadline)


async def test_fenced_runs_a_handler_while_its_lease_holds() -> None:
    async def handler() -> str:
        await asyncio.sleep(0)
        return "done"

    held = lease(float("inf"))
    assert await Fenced(handler(), held, lambda _lease: None) == "done"


async def test_fenced_never_resumes_a_handler_past_its_deadline() -> None:
    """A freeze: the handler is suspended when the deadline passes; when it would resume,
    it gets a CancelledError instead, so it runs nothing but its clean-up."""
    events: list[str] = []
    gate = asyncio.Event()

    async def handler() -> None:
        events.append("start")
        try:
            await gate.wait()
            events.append("side effect")  # must never happen
        except asyncio.CancelledError:
            events.append("cleaned up")
            raise

    suspended = lease(float("inf"))
    lapsed: list[Lease] = []

    def on_lapse(it: Lease) -> None:
        it.stop = Stop.LAPSED
        lapsed.append(it)

    running = asyncio.ensure_future(Fenced(handler(), suspended, on_lapse))
    await asyncio.sleep(0)
    assert events == ["start"]
    suspended.deadline = 0.0  # the freeze outlasted the lease
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert events == ["start", "cleaned up"]
    assert lapsed == [suspended]


async def test_fenced_lets_a_stopped_handler_clean_up_in_peace() -> None:
    """Once stopped (for any reason), the handler's clean-up awaits are not refused."""
    events: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # an await in clean-up, past the deadline
            events.append("cleaned up")
            raise

    stopped = lease(float("inf"))
    running = asyncio.ensure_future(Fenced(handler(), stopped, lambda _lease: None))
    await asyncio.sleep(0)
    stopped.stop = Stop.LAPSED
    stopped.deadline = 0.0
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert events == ["cleaned up"]


def test_the_scheduler_looks_when_something_comes_due() -> None:
    now = 100.0
    assert next_look(now, leading=False, next_due=None, expected=[]) == now + TICK
    assert next_look(now, leading=True, next_due=100.3, expected=[]) == 100.3
    assert next_look(now, leading=False, next_due=100.3, expected=[]) == now + TICK
    assert next_look(now, leading=False, next_due=None, expected=[100.2, 100.7]) == 100.2
    assert next_look(now, leading=True, next_due=105.0, expected=[]) == now + TICK
