"""Upstream leases and fencing in the PostgreSQL store (gateway/store/postgres/leases.py):
two store objects stand for two nodes on one database. Expiry is forced with SQL (the
database's clock decides, so the tests move ``expires_at`` rather than sleep), and a
stale holder's fenced commit must write nothing at all. The single-node leases of SQLite
and memory stores always grant."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from gateway.store.interfaces import Delivery, LeaseLost, Routed, Target
from gateway.store.leases import (
    Fence,
    FencedLedger,
    SingleNodeLeases,
    fencing,
    leases_of,
)
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from gateway.testing.postgres import Postgres, new_schema, shared_server

pytestmark = pytest.mark.postgres

UP = "isp"


@pytest.fixture
def pg() -> Postgres:
    return shared_server()


@pytest.fixture
def schema(pg: Postgres) -> str:
    return new_schema(pg)


def _open(pg: Postgres, schema: str) -> PostgresStore:
    return PostgresStore(pg.dsn, password=pg.password, schema=schema, pool_size=4)


@pytest.fixture
def nodes(pg: Postgres, schema: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two nodes' stores on one database."""
    a, b = _open(pg, schema), _open(pg, schema)
    yield a, b
    a.close()
    b.close()


def _sql(pg: Postgres, schema: str, statement: str, *args: object) -> list[tuple]:
    with psycopg.connect(
        pg.dsn, password=pg.password, options=f"-c search_path={schema}", autocommit=True
    ) as conn:
        cur = conn.execute(statement, args)
        return cur.fetchall() if cur.description else []


def _expire(pg: Postgres, schema: str, upstream: str = UP) -> None:
    """The lease ran out (on the database's clock), without waiting for it."""
    _sql(
        pg,
        schema,
        "UPDATE upstream_lease SET expires_at = clock_timestamp() - interval '1 second'"
        " WHERE upstream = %s",
        upstream,
    )


def _delivery(uidl: str) -> Delivery:
    raw = f"Subject: {uidl}\r\nMessage-ID: <{uidl}@x>\r\n\r\nbody {uidl}\r\n".encode()
    return Delivery(
        upstream=UP,
        uidl=uidl,
        raw=raw,
        internaldate=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
    )


def _inbox_count(store: PostgresStore) -> int:
    store.ensure_user("alice")
    return store.counts(store.get_mailbox("alice", "INBOX").id).messages


def test_one_node_gets_the_lease_the_other_is_refused(nodes) -> None:
    a, b = nodes
    assert a.try_acquire(UP, "node-a", 30) == 1
    assert b.try_acquire(UP, "node-b", 30) is None
    (lease,) = b.holders()
    assert (lease.upstream, lease.node, lease.token, lease.held) == (UP, "node-a", 1, True)
    assert 25 < lease.expires_in <= 30
    assert a.try_acquire("other", "node-b", 30) == 1  # leases are per upstream


def test_renewal_keeps_the_token_and_extends_the_expiry(nodes, pg, schema) -> None:
    a, _b = nodes
    token = a.try_acquire(UP, "node-a", 5)
    assert a.renew(UP, "node-a", token, 60)
    (lease,) = a.holders()
    assert lease.token == token and lease.expires_in > 50
    assert not a.renew(UP, "node-b", token, 60)  # not node-b's
    assert not a.renew(UP, "node-a", token + 1, 60)  # not that token


def test_an_expired_lease_is_taken_over_with_a_greater_token(nodes, pg, schema) -> None:
    a, b = nodes
    first = a.try_acquire(UP, "node-a", 30)
    _expire(pg, schema)
    assert not a.holders()[0].held
    second = b.try_acquire(UP, "node-b", 30)
    assert second is not None and second > first
    assert not a.renew(UP, "node-a", first, 30)  # the old holder learns it lost
    assert a.try_acquire(UP, "node-a", 30) is None
    _expire(pg, schema)
    third = a.try_acquire(UP, "node-a", 30)
    assert third is not None and third > second


def test_the_same_node_acquiring_again_gets_a_new_token(nodes) -> None:
    """A restarted node takes its own lease back at once, and its previous process's
    token (a paused process of the same name) is fenced out."""
    a, b = nodes
    first = a.try_acquire(UP, "node-a", 30)
    again = b.try_acquire(UP, "node-a", 30)
    assert again is not None and again > first
    with pytest.raises(LeaseLost):
        a.check_fence(Fence(UP, "node-a", first))
    b.check_fence(Fence(UP, "node-a", again))


def test_an_expired_lease_renewed_before_anyone_took_it_is_still_held(nodes, pg, schema) -> None:
    """Same token means nobody acquired it in between: the renewal revives it."""
    a, b = nodes
    token = a.try_acquire(UP, "node-a", 30)
    _expire(pg, schema)
    with pytest.raises(LeaseLost):
        a.check_fence(Fence(UP, "node-a", token))
    assert a.renew(UP, "node-a", token, 30)
    a.check_fence(Fence(UP, "node-a", token))
    assert b.try_acquire(UP, "node-b", 30) is None


def test_release_lets_another_node_acquire_at_once(nodes) -> None:
    a, b = nodes
    token = a.try_acquire(UP, "node-a", 30)
    assert not a.release(UP, "node-a", token + 5)  # a stale token releases nothing
    assert b.try_acquire(UP, "node-b", 30) is None
    assert a.release(UP, "node-a", token)
    (lease,) = a.holders()
    assert not lease.held and lease.node == "node-a"  # the row stays: tokens keep growing
    assert not a.release(UP, "node-a", token)  # already released
    taken = b.try_acquire(UP, "node-b", 30)
    assert taken is not None and taken > token


def test_nodes_acquiring_at_once_get_exactly_one_token(pg, schema) -> None:
    stores = [_open(pg, schema) for _ in range(6)]
    results: dict[int, int | None] = {}
    barrier = threading.Barrier(len(stores))

    def go(i: int) -> None:
        barrier.wait()
        results[i] = stores[i].try_acquire(UP, f"node-{i}", 30)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    granted = {i: t for i, t in results.items() if t is not None}
    assert len(granted) == 1 and list(granted.values()) == [1]


def test_a_stale_holders_fenced_commits_raise_lease_lost_and_write_nothing(
    nodes, pg, schema
) -> None:
    """The paused node wakes after another took over: its delivery, routed delivery,
    skips, imports and forgets are all refused; no message, no ledger row."""
    a, b = nodes
    old = a.try_acquire(UP, "node-a", 30)
    _expire(pg, schema)
    new = b.try_acquire(UP, "node-b", 30)
    stale = Fence(UP, "node-a", old)
    with fencing(stale):
        with pytest.raises(LeaseLost, match="node-a"):
            a.deliver_many("alice", "INBOX", [_delivery("u1"), _delivery("u2")])
        with pytest.raises(LeaseLost):
            a.deliver("alice", "INBOX", _delivery("u3"))
        with pytest.raises(LeaseLost):
            a.deliver_routed("alice", "INBOX", [Routed(_delivery("u4"), (Target("INBOX"),))])
        with pytest.raises(LeaseLost):
            a.record_skipped(UP, "u5", "too large")
        with pytest.raises(LeaseLost):
            a.record_imported(UP, ["u6"], "imported")
    assert _inbox_count(b) == 0
    assert b.known_uidls(UP) == set()
    assert _sql(pg, schema, "SELECT count(*) FROM message") == [(0,)]
    # the holder's fence commits
    with fencing(Fence(UP, "node-b", new)):
        assert b.deliver_many("alice", "INBOX", [_delivery("u1")]) == [1]
        b.record_skipped(UP, "u5", "too large")
    with fencing(stale), pytest.raises(LeaseLost):
        a.forget_uidls(UP, ["u1"])
    assert b.known_uidls(UP) == {"u1", "u5"} and _inbox_count(b) == 1


def test_an_expired_holders_fenced_commit_is_refused_even_before_a_takeover(
    nodes, pg, schema
) -> None:
    a, _b = nodes
    token = a.try_acquire(UP, "node-a", 30)
    _expire(pg, schema)
    with fencing(Fence(UP, "node-a", token)), pytest.raises(LeaseLost):
        a.deliver_many("alice", "INBOX", [_delivery("u1")])
    assert a.known_uidls(UP) == set()


def test_unfenced_writes_are_not_checked(nodes) -> None:
    """Offline tools (UIDL import, the contract suite) write without a fence."""
    a, b = nodes
    b.try_acquire(UP, "node-b", 30)
    assert a.deliver_many("alice", "INBOX", [_delivery("u1")]) == [1]


def test_fenced_ledger_fences_writes_and_confirms_the_lease(nodes, pg, schema) -> None:
    a, b = nodes
    token = a.try_acquire(UP, "node-a", 30)
    ledger = FencedLedger(a, Fence(UP, "node-a", token), a)
    assert ledger.deliver_many("alice", "INBOX", [_delivery("u1")]) == [1]
    ledger.confirm_lease()
    assert ledger.known_uidls(UP) == {"u1"} and not ledger.runs_inline
    _expire(pg, schema)
    b.try_acquire(UP, "node-b", 30)
    with pytest.raises(LeaseLost):
        ledger.confirm_lease()
    with pytest.raises(LeaseLost):
        ledger.deliver_many("alice", "INBOX", [_delivery("u2")])
    assert a.known_uidls(UP) == {"u1"}


def test_a_commit_whose_lease_ran_out_during_its_transaction_is_refused(nodes, pg, schema) -> None:
    """The fence is checked again as the last statement before COMMIT: a batch whose
    lease expired while it was being written commits nothing."""
    a, _b = nodes
    token = a.try_acquire(UP, "node-a", 1)
    original = a._add_rows  # the message rows are written; their mailbox rows come next

    def slow_add_rows(*args, **kwargs):
        time.sleep(1.5)  # the lease runs out meanwhile
        return original(*args, **kwargs)

    a._add_rows = slow_add_rows  # type: ignore[method-assign]
    with fencing(Fence(UP, "node-a", token)), pytest.raises(LeaseLost):
        a.deliver_many("alice", "INBOX", [_delivery("u1")])
    assert a.known_uidls(UP) == set()
    assert _sql(pg, schema, "SELECT count(*) FROM message") == [(0,)]


def test_a_takeover_waits_for_a_fenced_commit(nodes, pg, schema) -> None:
    """The final fence check locks the lease row FOR SHARE until COMMIT: a takeover
    right after the check waits, so the new holder's pass starts after that commit and
    sees its ledger rows."""
    a, b = nodes
    token = a.try_acquire(UP, "node-a", 1)  # runs out between the check and the COMMIT
    fence = Fence(UP, "node-a", token)
    checked, release = threading.Event(), threading.Event()
    original = a._check_fence

    def check_then_pause(cur, *, lock):
        original(cur, lock=lock)
        if lock:
            checked.set()
            release.wait(10)

    a._check_fence = check_then_pause  # type: ignore[method-assign]
    outcome: list[object] = []

    def deliver() -> None:
        with fencing(fence):
            outcome.append(a.deliver_many("alice", "INBOX", [_delivery("u1")]))

    t = threading.Thread(target=deliver)
    t.start()
    assert checked.wait(10)
    time.sleep(1.5)
    assert not b.holders()[0].held
    took: list[int | None] = []
    taker = threading.Thread(target=lambda: took.append(b.try_acquire(UP, "node-b", 30)))
    taker.start()
    taker.join(0.5)
    assert taker.is_alive()  # waiting on the lease row
    release.set()
    t.join(10)
    taker.join(10)
    assert outcome == [[1]] and took and took[0] is not None and took[0] > token
    assert b.known_uidls(UP) == {"u1"}


def test_single_node_stores_always_grant_and_ignore_fences(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    leases = leases_of(store)
    assert isinstance(leases, SingleNodeLeases) and not leases.expiring
    assert leases.try_acquire(UP, "any", 30) == 1
    assert leases.try_acquire(UP, "other", 30) == 1
    assert leases.renew(UP, "x", 1, 30) and leases.release(UP, "x", 1)
    assert leases.holders() == []
    with fencing(Fence(UP, "nobody", 99)):
        assert store.deliver_many("alice", "INBOX", [_delivery("u1")]) == [1]
    store.close()


def test_postgres_store_is_its_own_leases(nodes) -> None:
    a, _b = nodes
    assert leases_of(a) is a
