"""The OutboundQueue contract (gateway/store/queue.py), written once and run against
every backend; adding one is one line in BACKENDS (a name and a function building an
empty queue in a temp dir). SQLite runs on real files, reopened where durability is
the point.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.store.interfaces import StoreError
from gateway.store.memory_queue import MemoryOutboundQueue
from gateway.store.postgres.queue import PGOutboundQueue
from gateway.store.queue import (
    EXPIRED,
    FAILED,
    QUEUED,
    SENT,
    NewOutbound,
    OutboundQueue,
    QueueError,
    QueueItemNotFound,
    QueueStateError,
    RouteStatus,
)
from gateway.store.sqlite_queue import QUEUE_DDL, SQLiteOutboundQueue
from gateway.testing.postgres import close_test_store, open_test_store

_PG_STORES: list = []


def open_postgresql(tmp: Path) -> OutboundQueue:
    """On a PostgreSQL store of its own (closed when the test ends)."""
    store = open_test_store()
    _PG_STORES.append(store)
    return PGOutboundQueue(store)


BACKENDS: dict[str, Callable[[Path], OutboundQueue]] = {
    "memory": lambda tmp: MemoryOutboundQueue(),
    "sqlite": lambda tmp: SQLiteOutboundQueue(tmp / "queue.db"),
    "postgresql": open_postgresql,
}

DAY = 86400.0
T0 = 1_700_000_000.0


@pytest.fixture(params=sorted(BACKENDS))
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutboundQueue]:
    yield BACKENDS[request.param](tmp_path)
    while _PG_STORES:
        close_test_store(_PG_STORES.pop())


def new(
    route: str = "isp", recipients: tuple[str, ...] = ("bob@example.org",), **kw: object
) -> NewOutbound:
    fields: dict[str, object] = {
        "user": "alice",
        "route": route,
        "mail_from": "alice@isp.example",
        "recipients": recipients,
        "content": b"From: alice@isp.example\r\nSubject: hi\r\n\r\nbody\r\n",
        "message_id": "<m1@isp.example>",
    }
    fields.update(kw)
    return NewOutbound(**fields)  # type: ignore[arg-type]


def test_errors_are_store_errors() -> None:
    for error in (QueueError, QueueItemNotFound, QueueStateError):
        assert issubclass(error, StoreError)


def test_enqueue_returns_a_due_row_and_keeps_the_octets(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(recipients=("a@x.example", "b@y.example")), now=T0, lifetime=2 * DAY)
    assert item.state == QUEUED
    assert item.recipients == ("a@x.example", "b@y.example")
    assert item.queued_at == T0 and item.next_attempt == T0 and item.expires_at == T0 + 2 * DAY
    assert item.attempts == 0 and item.last_error is None and not item.bounced
    assert item.size == len(new().content)
    assert queue.content(item.id) == new().content
    assert queue.get(item.id) == item
    assert queue.due(T0) == [item]


def test_ids_are_distinct_and_due_is_ordered_by_next_attempt(queue: OutboundQueue) -> None:
    a = queue.enqueue(new(), now=T0, lifetime=DAY)
    b = queue.enqueue(new(), now=T0 + 1, lifetime=DAY)
    c = queue.enqueue(new(), now=T0 + 2, lifetime=DAY)
    assert len({a.id, b.id, c.id}) == 3
    queue.mark_deferred(a.id, error="421 busy", next_attempt=T0 + 100, now=T0 + 3)
    assert [i.id for i in queue.due(T0 + 10)] == [b.id, c.id]
    assert [i.id for i in queue.due(T0 + 100)] == [b.id, c.id, a.id]
    assert [i.id for i in queue.due(T0 + 100, limit=1)] == [b.id]
    assert queue.due(T0 - 1) == []


def test_deferred_counts_attempts_and_records_the_error(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(), now=T0, lifetime=DAY)
    after = queue.mark_deferred(item.id, error="connection refused", next_attempt=T0 + 60, now=T0)
    assert after.state == QUEUED and after.attempts == 1
    assert after.last_error == "connection refused" and after.next_attempt == T0 + 60
    again = queue.mark_deferred(item.id, error="timeout", next_attempt=T0 + 360, now=T0 + 60)
    assert again.attempts == 2 and again.last_error == "timeout"


def test_deferred_may_narrow_the_recipients(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(recipients=("a@x.example", "b@y.example")), now=T0, lifetime=DAY)
    after = queue.mark_deferred(
        item.id, error="450 busy", next_attempt=T0 + 60, now=T0, remaining=("b@y.example",)
    )
    assert after.recipients == ("b@y.example",) and after.state == QUEUED


def test_sent_records_the_reply_and_leaves_the_due_list(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(), now=T0, lifetime=DAY)
    sent = queue.mark_sent(item.id, reply="250 2.0.0 Ok: queued as X", now=T0 + 5)
    assert sent.state == SENT and sent.last_reply == "250 2.0.0 Ok: queued as X"
    assert sent.finished_at == T0 + 5 and sent.attempts == 1
    assert queue.due(T0 + DAY / 2) == [] and queue.pending() == []
    with pytest.raises(QueueStateError):
        queue.mark_sent(item.id, reply="250 again", now=T0 + 6)
    with pytest.raises(QueueStateError):
        queue.mark_deferred(item.id, error="x", next_attempt=T0 + 7, now=T0 + 6)
    assert queue.unbounced() == []


def test_partly_sent_stays_queued_for_the_remaining_recipients(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(recipients=("a@x.example", "b@y.example")), now=T0, lifetime=DAY)
    after = queue.mark_sent(
        item.id,
        reply="250 ok",
        now=T0,
        remaining=("b@y.example",),
        next_attempt=T0 + 60,
        error="450 4.2.0 b@y.example mailbox busy",
    )
    assert after.state == QUEUED and after.recipients == ("b@y.example",)
    assert after.last_reply == "250 ok" and after.next_attempt == T0 + 60
    assert after.last_error == "450 4.2.0 b@y.example mailbox busy"
    assert queue.due(T0 + 60) == [after]


def test_failed_waits_for_its_bounce_once(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(), now=T0, lifetime=DAY)
    failed = queue.mark_failed(item.id, error="550 5.1.1 no such user", now=T0 + 1)
    assert failed.state == FAILED and failed.last_error == "550 5.1.1 no such user"
    assert queue.due(T0 + 2) == []
    assert [i.id for i in queue.unbounced()] == [item.id]
    queue.mark_bounced(item.id)
    assert queue.unbounced() == [] and queue.get(item.id).bounced


def test_expire_takes_only_queued_items_past_their_lifetime(queue: OutboundQueue) -> None:
    old = queue.enqueue(new(), now=T0, lifetime=DAY)
    young = queue.enqueue(new(), now=T0 + DAY / 2, lifetime=DAY)
    done = queue.enqueue(new(), now=T0, lifetime=DAY)
    queue.mark_sent(done.id, reply="250 ok", now=T0)
    assert queue.due(T0 + DAY) == [young]  # an item at its expiry is no longer due
    expired = queue.expire(T0 + DAY)
    assert [i.id for i in expired] == [old.id] and expired[0].state == EXPIRED
    assert queue.get(young.id).state == QUEUED and queue.get(done.id).state == SENT
    assert queue.expire(T0 + DAY) == []
    assert [i.id for i in queue.unbounced()] == [old.id]


def test_mark_bounced_refuses_items_that_did_not_fail(queue: OutboundQueue) -> None:
    item = queue.enqueue(new(), now=T0, lifetime=DAY)
    with pytest.raises(QueueStateError):
        queue.mark_bounced(item.id)


def test_unknown_ids_raise_not_found(queue: OutboundQueue) -> None:
    for call in (
        lambda: queue.get(999),
        lambda: queue.content(999),
        lambda: queue.mark_sent(999, reply="250", now=T0),
        lambda: queue.mark_failed(999, error="x", now=T0),
        lambda: queue.mark_deferred(999, error="x", next_attempt=T0, now=T0),
        lambda: queue.mark_bounced(999),
    ):
        with pytest.raises(QueueItemNotFound):
            call()


def test_status_per_route_shows_length_oldest_and_last_error(queue: OutboundQueue) -> None:
    a = queue.enqueue(new(route="isp"), now=T0, lifetime=DAY)
    queue.enqueue(new(route="isp"), now=T0 + 10, lifetime=DAY)
    b = queue.enqueue(new(route="work"), now=T0 + 5, lifetime=DAY)
    queue.mark_deferred(a.id, error="421 try later", next_attempt=T0 + 60, now=T0 + 1)
    queue.mark_sent(b.id, reply="250 ok", now=T0 + 6)
    assert queue.status() == [RouteStatus("isp", 2, T0, "421 try later")]
    assert [i.route for i in queue.pending("isp")] == ["isp", "isp"]
    assert queue.pending("work") == []
    c = queue.enqueue(new(route="work"), now=T0 + 7, lifetime=DAY)
    queue.mark_failed(c.id, error="550 refused", now=T0 + 8)
    assert queue.status() == [
        RouteStatus("isp", 2, T0, "421 try later"),
        RouteStatus("work", 0, None, "550 refused"),
    ]
    d = queue.enqueue(new(route="work"), now=T0 + 9, lifetime=DAY)
    queue.mark_sent(d.id, reply="250 ok", now=T0 + 10)  # success clears the route's error
    assert [s.route for s in queue.status()] == ["isp"]


def test_purge_deletes_only_finished_and_bounced_items(queue: OutboundQueue) -> None:
    sent = queue.enqueue(new(), now=T0, lifetime=DAY)
    queue.mark_sent(sent.id, reply="250", now=T0 + 1)
    failed = queue.enqueue(new(), now=T0, lifetime=DAY)
    queue.mark_failed(failed.id, error="550", now=T0 + 1)
    waiting = queue.enqueue(new(), now=T0, lifetime=DAY)
    assert queue.purge(T0 + 1) == 0  # finished_at must be before the cut
    assert queue.purge(T0 + 2) == 1  # the failed one still owes its bounce
    queue.mark_bounced(failed.id)
    assert queue.purge(T0 + 2) == 1
    assert [i.id for i in queue.pending()] == [waiting.id]
    with pytest.raises(QueueItemNotFound):
        queue.get(sent.id)


def test_sqlite_queue_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    first = SQLiteOutboundQueue(path)
    item = first.enqueue(new(), now=T0, lifetime=DAY)
    first.mark_deferred(item.id, error="down", next_attempt=T0 + 60, now=T0)
    first.close()
    second = SQLiteOutboundQueue(path)  # CREATE TABLE IF NOT EXISTS: idempotent
    assert second.get(item.id).last_error == "down"
    assert second.content(item.id) == new().content
    second.close()


def test_sqlite_queue_shares_a_connection_and_its_ddl_is_idempotent(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "store.db"), isolation_level=None)
    conn.executescript(QUEUE_DDL)
    queue = SQLiteOutboundQueue(conn)
    queue.enqueue(new(), now=T0, lifetime=DAY)
    assert conn.execute("SELECT COUNT(*) FROM outbound_queue").fetchone()[0] == 1
    queue.close()  # the caller's connection stays open
    conn.execute("SELECT 1")
    conn.close()


def test_sqlite_queue_refuses_a_connection_with_implicit_transactions(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    with pytest.raises(QueueError):
        SQLiteOutboundQueue(conn)
    conn.close()


def test_bad_envelopes_are_refused_and_nothing_is_stored(queue: OutboundQueue) -> None:
    with pytest.raises(QueueError):
        queue.enqueue(new(recipients=("a@x.example\nb@y.example",)), now=T0, lifetime=DAY)
    with pytest.raises(QueueError):
        queue.enqueue(new(recipients=()), now=T0, lifetime=DAY)
    with pytest.raises(QueueError):
        queue.enqueue(new(mail_from="a@x.example\r\nRCPT TO:<x@y>"), now=T0, lifetime=DAY)
    assert queue.pending() == []
