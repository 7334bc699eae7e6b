"""Upstream ownership at the poller (gateway/pop3/ownership.py, gateway/pop3/poller.py):
several nodes' pollers of one upstream, on one ``task.Clock`` and one in-memory lease
table with PostgreSQL's rules (gateway/testing/leases.py): only the holder polls, a dead
holder's upstream is taken over within 2 × lease, a lost lease stops the pass in flight,
a clean stop releases. The same with real PostgreSQL leases and a real POP3 fetch is at
the end of the file."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.pop3.errors import HeldElsewhere
from gateway.pop3.fetcher import FetchResult
from gateway.pop3.ownership import CHECK_FRACTION, UpstreamOwnership
from gateway.pop3.poller import UpstreamPoller
from gateway.pop3.upstream import Upstream
from gateway.store.leases import FencedLedger
from gateway.store.postgres import StoreUnavailable
from gateway.testing.leases import ClockLeases
from gateway.testing.pop3fetch import OWNER

LEASE = 30.0
POLL = 300.0


class Fetches:
    """A fetch function whose passes the test finishes by hand; remembers the ledger
    each pass was given."""

    def __init__(self) -> None:
        self.calls: list[defer.Deferred[FetchResult]] = []
        self.stores: list[Any] = []
        self.cancelled: list[defer.Deferred[FetchResult]] = []

    def __call__(self, upstream, store, *, reactor, progress=None) -> defer.Deferred[FetchResult]:
        d: defer.Deferred[FetchResult] = defer.Deferred(lambda _d: self.cancelled.append(d))
        self.calls.append(d)
        self.stores.append(store)
        return d

    def finish(self) -> None:
        if not self.calls[-1].called:
            self.calls[-1].callback(FetchResult("isp"))

    @property
    def in_flight(self) -> bool:
        return bool(self.calls) and not self.calls[-1].called


class NoLedger:
    """The poller's store, never written here (the scripted fetch does nothing)."""

    runs_inline = True

    def ledger_entries(self, upstream: str) -> list[Any]:
        return []


LEDGER = NoLedger()


def upstream() -> Upstream:
    return Upstream(
        name="isp",
        owner=OWNER,
        host="127.0.0.1",
        port=110,
        tls="none",
        username="u",
        password="p",
        poll_interval=POLL,
    )


class Node:
    """One node's poller of the upstream, with its own fetch recorder."""

    def __init__(self, name: str, clock: Clock, leases: ClockLeases, ledger: Any = LEDGER):
        self.name = name
        self.fetch = Fetches()
        self.ownership = UpstreamOwnership("isp", leases, node=name, lease=LEASE, reactor=clock)
        self.poller = UpstreamPoller(
            upstream(),
            ledger,
            reactor=clock,
            fetch=self.fetch,
            jitter=0.0,
            ownership=self.ownership,
        )

    def start(self) -> Node:
        self.poller.startService()
        return self

    def kill(self) -> None:
        """The process dies: no more renewals, nothing released."""
        self.ownership.release = lambda: None  # type: ignore[method-assign]
        self.poller.stopService()


def run_passes(clock: Clock, nodes: list[Node], seconds: float, step: float = 1.0) -> None:
    """Advance time, finishing every pass that starts at once."""
    elapsed = 0.0
    while elapsed < seconds:
        clock.advance(step)
        elapsed += step
        for n in nodes:
            if n.fetch.in_flight:
                n.fetch.finish()


def test_only_the_lease_holder_polls() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    b = Node("node-b", clock, leases).start()
    c = Node("node-c", clock, leases).start()
    run_passes(clock, [a, b, c], 3 * POLL)
    assert leases.holder("isp") == "node-a"
    assert len(a.fetch.calls) >= 3
    assert b.fetch.calls == [] and c.fetch.calls == []
    assert b.poller.health_dict()["state"] == "standby"
    assert b.poller.health_dict()["ownership"]["holder"] == "node-a"
    assert a.poller.health_dict()["ownership"]["held"]


def test_a_pass_writes_through_a_ledger_fenced_with_the_current_token() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    clock.advance(0)
    ledger = a.fetch.stores[-1]
    assert isinstance(ledger, FencedLedger) and ledger.ledger is LEDGER
    assert (ledger.fence.node, ledger.fence.token) == ("node-a", 1)


def test_a_dead_holders_upstream_is_taken_over_within_two_leases() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    b = Node("node-b", clock, leases).start()
    run_passes(clock, [a, b], 100)
    assert leases.holder("isp") == "node-a" and b.fetch.calls == []
    clock.advance(1)
    assert a.fetch.in_flight is False
    a.poller.trigger()
    clock.advance(a.poller.min_spacing)
    assert a.fetch.in_flight  # it dies in the middle of a pass
    killed_at = clock.seconds()
    a.kill()
    while not b.fetch.calls:
        clock.advance(0.5)
        assert clock.seconds() - killed_at <= 2 * LEASE
    assert leases.holder("isp") == "node-b"
    assert b.fetch.stores[-1].fence.token == 2


def test_the_takeover_check_runs_more_often_than_a_long_poll_interval() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    b = Node("node-b", clock, leases).start()
    run_passes(clock, [a, b], 10)
    checks = len([c for c in leases.calls if c[2] == "node-b"])
    run_passes(clock, [a, b], LEASE)
    assert len([c for c in leases.calls if c[2] == "node-b"]) - checks >= 2
    assert b.ownership.check_interval == LEASE * CHECK_FRACTION <= LEASE / 2


def test_a_lease_taken_by_another_node_stops_the_pass_in_flight() -> None:
    """A node paused past its expiry wakes to find another node holding the lease: its
    next renewal is refused and its pass is cancelled (dropping the POP3 connection
    without QUIT)."""
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    clock.advance(0)
    assert a.fetch.in_flight
    leases.rows["isp"].expires_at = clock.seconds() - 1  # paused: it ran out
    assert leases.try_acquire("isp", "node-z", LEASE) == 2
    clock.advance(LEASE * CHECK_FRACTION)
    assert a.fetch.calls[-1].called  # cancelled
    assert not a.ownership.held
    assert a.poller.health.consecutive_failures == 0
    assert a.fetch.cancelled == [a.fetch.calls[-1]] and not a.poller.health.in_flight


def test_renewals_failing_stop_the_pass_before_the_lease_can_expire() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    clock.advance(0)
    renewed_at = clock.seconds()
    leases.fail_with = StoreUnavailable("PostgreSQL: 57P01")
    while a.fetch.in_flight:
        clock.advance(0.5)
    assert clock.seconds() < renewed_at + LEASE  # before it can have expired
    assert a.fetch.cancelled == [a.fetch.calls[-1]]
    assert not a.ownership.held


def test_fetch_now_on_a_node_without_the_lease_says_who_holds_it() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    b = Node("node-b", clock, leases).start()
    clock.advance(0)
    asked = b.poller.fetch_now()
    failures: list[Any] = []
    asked.addErrback(failures.append)
    assert failures and failures[0].check(HeldElsewhere)
    assert "node-a" in str(failures[0].value) and failures[0].value.kind == "held_elsewhere"
    assert b.fetch.calls == [] and b.poller.health.passes == 0
    assert a.fetch.in_flight


def test_fetch_now_on_a_free_upstream_acquires_it() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    b = Node("node-b", clock, leases)
    b.poller.running = True  # started without its check loop having run yet
    d = b.poller.fetch_now()
    assert b.fetch.in_flight and leases.holder("isp") == "node-b"
    b.fetch.finish()
    assert d.called


def test_a_clean_stop_releases_the_lease_and_another_node_takes_over_at_its_next_check() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    b = Node("node-b", clock, leases).start()
    run_passes(clock, [a, b], 5)
    stopped_at = clock.seconds()
    a.poller.stopService()
    assert leases.holder("isp") is None
    while not b.fetch.calls:
        clock.advance(0.5)
    assert clock.seconds() - stopped_at <= LEASE * CHECK_FRACTION + 1


def test_stopping_waits_for_the_pass_then_releases() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    clock.advance(0)
    stopped = a.poller.stopService()
    assert leases.holder("isp") == "node-a"
    a.fetch.finish()
    assert stopped.called and leases.holder("isp") is None


def test_a_single_node_store_owns_every_upstream_without_timers() -> None:
    clock = Clock()
    fetch = Fetches()
    p = UpstreamPoller(upstream(), LEDGER, reactor=clock, fetch=fetch, jitter=0.0)
    p.startService()
    assert len(clock.getDelayedCalls()) == 1  # the first poll, no lease loop
    clock.advance(1)
    assert fetch.stores == [LEDGER]  # not wrapped: nothing to fence out
    assert p.health_dict()["ownership"]["held"]
    fetch.finish()
    assert p.stopService() is None


# ---- real PostgreSQL leases, a real fetch --------------------------------------------------


def eventually(predicate: Any, timeout: float) -> bool:
    """Poll ``predicate`` from the test thread (generous: 2 shared cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.mark.postgres
def test_two_nodes_on_postgresql_one_polls_then_the_other_takes_over(
    fake_upstream, rt, tmp_path
) -> None:
    """Two pollers (two nodes) of one fake upstream, each with its own PostgreSQL store
    object on one database and store threads: only the holder's passes reach the
    upstream; stopped without a release (a dead node), the other polls after expiry."""
    from twisted.python.threadpool import ThreadPool

    from gateway.store.postgres import PostgresStore
    from gateway.store.runner import ThreadRunner
    from gateway.testing import samplemail
    from gateway.testing.postgres import new_schema, shared_server

    pg = shared_server()
    schema = new_schema(pg)
    stores = [PostgresStore(pg.dsn, password=pg.password, schema=schema, pool_size=4) for _ in "ab"]
    h = fake_upstream(messages=samplemail.generate(4, seed=3), store=stores[0])
    lease = 5.0
    pools = [ThreadPool(minthreads=0, maxthreads=4, name=f"store-{n}") for n in "ab"]

    def start(i: int) -> UpstreamPoller:
        pools[i].start()
        runner = ThreadRunner(rt.reactor, pools[i])
        own = UpstreamOwnership(
            "isp", stores[i], node=f"node-{i}", lease=lease, reactor=rt.reactor, runner=runner
        )
        from gateway.pop3.fetcher import fetch_once

        up = h.upstream(poll_interval=10.0, keep_on_server=False)
        p = UpstreamPoller(
            up,
            stores[i],
            reactor=rt.reactor,
            fetch=lambda u, s, **kw: fetch_once(u, s, runner=runner, **kw),
            first_delay=0,
            jitter=0.0,
            ownership=own,
        )
        p.startService()
        return p

    try:
        a = rt.call(start, 0)
        b = rt.call(start, 1)
        assert eventually(lambda: a.health.passes + b.health.passes >= 2, timeout=60)
        holder, other = (a, b) if a.ownership.held else (b, a)
        assert other.health.passes == 0 and other.health.fetched_total == 0
        assert holder.health.fetched_total == 4 and holder.health.last_error is None

        def die() -> None:
            holder.ownership.release = lambda: None  # type: ignore[method-assign]
            holder.stopService()

        rt.call(die)
        for raw in samplemail.generate(2, seed=4):
            rt.call(h.server.add_message, raw)
        assert eventually(lambda: other.health.fetched_total == 2, timeout=4 * lease + 60)
        assert other.ownership.held and other.ownership.token == 2
        (row,) = stores[0].holders()
        assert row.node == other.ownership.node and row.held
        rt.call(other.stopService)
    finally:
        for pool in pools:
            pool.stop()
        for s in stores:
            s.close()


@pytest.mark.postgres
def test_a_stale_nodes_pass_commits_nothing_and_deletes_nothing(fake_upstream, tmp_path) -> None:
    """The fetcher under a fence that no longer holds: its batch is refused
    (LeaseLost → kind ``lease_lost``), and the connection is dropped without QUIT, so
    the upstream keeps every message."""
    from gateway.store.leases import Fence
    from gateway.store.postgres import PostgresStore
    from gateway.testing import samplemail
    from gateway.testing.postgres import new_schema, shared_server

    pg = shared_server()
    store = PostgresStore(pg.dsn, password=pg.password, schema=new_schema(pg), pool_size=4)
    try:
        h = fake_upstream(messages=samplemail.generate(3, seed=5), store=store)
        old = store.try_acquire("isp", "node-a", 30)
        store.renew("isp", "node-a", old, -1)  # ran out while node-a was paused
        assert store.try_acquire("isp", "node-b", 30) == old + 1
        stale = FencedLedger(store, Fence("isp", "node-a", old), store)
        error = None
        try:
            h.fetch(ledger=stale, keep_on_server=False)
        except Exception as e:
            error = e
        assert error is not None and getattr(error, "kind", None) == "lease_lost"
        assert "QUIT" not in h.verbs() and "DELE" not in h.verbs()
        assert len(h.server.messages) == 3 and h.inbox() == [] and h.ledger() == {}
    finally:
        store.close()


@pytest.mark.postgres
def test_a_lease_lost_after_the_commit_keeps_the_deletions_from_taking_effect(
    fake_upstream, tmp_path
) -> None:
    """Delivered under the fence, then the lease moves before QUIT: the fetcher confirms
    the lease before QUIT, finds it gone, and drops the connection, so its DELEs never
    take effect (RFC 1939 §6); the new holder's next pass deletes them instead."""
    from gateway.store.leases import Fence
    from gateway.store.postgres import PostgresStore
    from gateway.testing import samplemail
    from gateway.testing.postgres import new_schema, shared_server

    pg = shared_server()
    store = PostgresStore(pg.dsn, password=pg.password, schema=new_schema(pg), pool_size=4)
    try:
        h = fake_upstream(messages=samplemail.generate(3, seed=6), store=store)
        token = store.try_acquire("isp", "node-a", 30)

        class LosesAfterCommit(FencedLedger):
            def deliver_many(self, *args: Any, **kwargs: Any) -> Any:
                result = super().deliver_many(*args, **kwargs)
                store.renew("isp", "node-a", token, -1)
                store.try_acquire("isp", "node-b", 30)
                return result

        ledger = LosesAfterCommit(store, Fence("isp", "node-a", token), store)
        error = None
        try:
            h.fetch(ledger=ledger, keep_on_server=False)
        except Exception as e:
            error = e
        assert getattr(error, "kind", None) == "lease_lost"
        assert "DELE" in h.verbs() and "QUIT" not in h.verbs()
        assert len(h.server.messages) == 3 and len(h.inbox()) == 3
        newer = FencedLedger(store, Fence("isp", "node-b", token + 1), store)
        h.fetch(ledger=newer, keep_on_server=False)
        assert h.server.messages == [] and len(h.inbox()) == 3
    finally:
        store.close()


# ---- what status and `popgate fetch` say -------------------------------------------------


class LeaseStore(ClockLeases):
    """A store with leases (as the PostgreSQL store is) and an empty ledger."""

    def ledger_entries(self, upstream: str) -> list[Any]:
        return []


def test_status_shows_which_node_holds_which_upstream(tmp_path) -> None:
    import json
    from types import SimpleNamespace

    from gateway.app.status import StatusSource, render

    clock = Clock()
    clock.advance(1000)
    store = LeaseStore(clock.seconds)
    a = Node("node-a", clock, store, ledger=store).start()
    b = Node("node-b", clock, store, ledger=store).start()
    clock.advance(0)
    store.try_acquire("other", "node-c", LEASE)
    store.rows["other"].expires_at = clock.seconds() - 1  # nobody holds it now
    source = StatusSource(
        reactor=clock,
        version="test",
        config_path="c.toml",
        state_dir=str(tmp_path),
        factory=SimpleNamespace(protocols=()),
        pollers={"isp": b.poller},
        store_path=None,
        store=store,
    )
    facts = source.store_facts(["isp"], [])
    status = json.loads(json.dumps(source.collect(facts)))
    (up,) = status["upstreams"]
    assert up["node"] == "node-a" and up["state"] == "standby"
    assert up["lease"]["token"] == 1 and up["lease"]["held"]
    assert 0 < up["lease"]["expires_in"] <= LEASE
    assert up["ownership"] == {
        "node": "node-b",
        "held": False,
        "token": None,
        "holder": "node-a",
        "lease_seconds": LEASE,
    }
    text = render(status)
    assert "POLLED BY NODE" in text and "node-a" in text
    a.fetch.finish()


def test_popgate_fetch_on_a_node_without_the_lease_names_the_holder() -> None:
    from twisted.python.failure import Failure

    from gateway.app.fetchcmd import _outcome

    outcome = _outcome("isp", Failure(HeldElsewhere("isp", "node-a")))
    assert outcome["ok"] is False and outcome["kind"] == "held_elsewhere"
    assert "node-a" in outcome["error"]


def test_imap_triggers_on_a_node_without_the_lease_ask_nothing() -> None:
    clock = Clock()
    leases = ClockLeases(clock.seconds)
    a = Node("node-a", clock, leases).start()
    b = Node("node-b", clock, leases).start()
    clock.advance(2)  # both checked in, b's first scheduled poll was refused
    asked = len(leases.calls)
    for _ in range(5):
        b.poller.trigger()
        clock.advance(1)
    assert b.fetch.calls == []
    assert [c for c in leases.calls[asked:] if c[2] == "node-b"] == []
    a.fetch.finish()
