"""Cross-node push on PostgreSQL (issue 13): two stores on one database, as two nodes.

A change committed through store A (a delivery, a flag change, an expunge, a rename, a
delete) reaches the listeners of store B through LISTEN/NOTIFY; a store never hears its
own change twice; a LISTEN connection terminated by the server comes back, and a change
committed while it was down is still told (the catch-up by modseq); a notice of a
transaction that rolled back is never delivered; stopping leaves no thread and no
connection behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from gateway.store.errors import MailboxExists
from gateway.store.interfaces import INBOX, Delivery
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.changes import (
    CHANNEL,
    MAX_CHANNEL,
    MAX_PAYLOAD,
    BadNotice,
    channel_for,
    decode,
    encode,
)
from gateway.store.postgres.push import ChangeBridge
from gateway.testing.messages import message
from gateway.testing.postgres import Postgres, new_schema, shared_server, two_nodes

pytestmark = pytest.mark.postgres

WAIT = 10.0
"""Seconds a test waits for a notice: a safety net, they arrive in milliseconds."""


class Heard:
    """A listener that records mailbox ids, thread-safely, and can wait for one."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, mailbox_id: int) -> None:
        with self._cond:
            self.ids.append(mailbox_id)
            self._cond.notify_all()

    def wait_for(self, mailbox_id: int, *, count: int = 1, timeout: float = WAIT) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.ids.count(mailbox_id) >= count, timeout)
        assert ok, f"mailbox {mailbox_id} heard {self.ids.count(mailbox_id)}x, not {count}x"

    def clear(self) -> None:
        with self._cond:
            self.ids.clear()


@pytest.fixture
def pg() -> Postgres:
    return shared_server()


@pytest.fixture
def nodes(pg: Postgres) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Store A (node-a) and store B (node-b) on one schema; both closed at the end."""
    with two_nodes(pg) as pair:
        yield pair


@pytest.fixture
def listening(nodes) -> tuple[PostgresStore, PostgresStore, Heard]:
    """Stores A and B, B's bridge up, and what B's listeners hear."""
    a, b = nodes
    heard = Heard()
    b.add_listener(heard)
    _bridge(b)
    return a, b, heard


def _sessions(pg: Postgres, pid: int | None) -> list[str]:
    """The application names of the server sessions with this backend pid."""
    out = pg.psql(f"SELECT application_name FROM pg_stat_activity WHERE pid = {int(pid or 0)}")
    return out.split("\n")[:-1]


def _bridge(store: PostgresStore, **kwargs: float) -> ChangeBridge:
    bridge = ChangeBridge(store, **kwargs)
    bridge.start()
    assert bridge.connected.wait(WAIT), "the LISTEN connection never came up"
    return bridge


# ---- the payload -------------------------------------------------------------------------


def test_a_payload_names_its_writer_and_round_trips() -> None:
    [payload] = encode("node-a/12/ab", {3, 1, 2})
    assert decode(payload).origin == "node-a/12/ab"
    assert decode(payload).mailbox_ids == (1, 2, 3)


def test_many_ids_are_split_into_notices_postgresql_accepts() -> None:
    """NOTIFY payloads must stay under 8000 bytes: no id is dropped, none sent twice."""
    ids = set(range(10**9, 10**9 + 3000))
    payloads = encode("n" * 63 + "/4194304/deadbeef", ids)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD < 8000 for p in payloads)
    told = [i for p in payloads for i in decode(p).mailbox_ids]
    assert sorted(told) == sorted(ids)


@pytest.mark.parametrize("payload", ["", "hello", "[1,2]", '{"o":1,"m":[]}', '{"o":"x","m":["1"]}'])
def test_a_payload_popgate_did_not_write_is_refused(payload: str) -> None:
    with pytest.raises(BadNotice):
        decode(payload)


def test_each_schema_has_its_own_channel_within_postgresql_limits() -> None:
    assert channel_for(None) == channel_for("public") == CHANNEL
    assert channel_for("t1") != channel_for("t2")
    assert len(channel_for("s" * 63).encode()) <= MAX_CHANNEL


# ---- two nodes -----------------------------------------------------------------------------


def test_a_delivery_flag_change_and_expunge_on_a_reach_b(listening) -> None:
    """What IDLE on another node relies on: every kind of message change is told."""
    a, _b, heard = listening
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    assert a.deliver("alice", INBOX, Delivery("up", "u1", message(subject="one"))) == 1
    heard.wait_for(box, count=1)
    a.store_flags(box, [1], "+", ["\\Seen"])
    heard.wait_for(box, count=2)
    a.store_flags(box, [1], "+", ["\\Deleted"])
    assert a.expunge(box) == [1]
    heard.wait_for(box, count=4)


def test_a_rename_and_a_delete_on_a_reach_b(listening) -> None:
    """Mailbox list changes: LIST-STATUS and NOTIFY sessions re-read names on these."""
    a, _b, heard = listening
    a.ensure_user("alice")
    folder = a.create_mailbox("alice", "Projects")
    a.rename_mailbox("alice", "Projects", "Work")
    heard.wait_for(folder.id)
    a.delete_mailbox("alice", "Work")
    heard.wait_for(folder.id, count=2)


def test_a_store_hears_its_own_change_once(listening) -> None:
    """B's own write is told by B after its commit; its notice echoed back is skipped.
    A's later write proves B's notices up to then have all been read."""
    a, b, heard = listening
    b.ensure_user("alice")
    mine = b.get_mailbox("alice", INBOX).id
    theirs = b.create_mailbox("alice", "Other").id
    heard.clear()
    b.append(mine, message(subject="by b"))
    a.append(theirs, message(subject="by a"))
    heard.wait_for(theirs)
    assert heard.ids.count(mine) == 1


def test_a_write_that_rolls_back_is_never_told(listening) -> None:
    a, _b, heard = listening
    a.ensure_user("alice")
    inbox = a.get_mailbox("alice", INBOX).id
    other = a.create_mailbox("alice", "Other").id
    heard.clear()
    with pytest.raises(MailboxExists):
        a.rename_mailbox("alice", "Other", INBOX)
    with pytest.raises(RuntimeError), a._write() as (cur, changed):
        changed.add(inbox)  # a write whose transaction fails after marking a change
        raise RuntimeError("rolled back")
    a.append(other, message())
    heard.wait_for(other)
    assert inbox not in heard.ids


def test_a_dropped_listen_connection_comes_back_and_catches_up(nodes, pg: Postgres) -> None:
    """The server ends B's LISTEN session (pg_terminate_backend, as a failover or an
    idle-session killer would); A appends while B is not listening: no notice can reach
    B, yet B tells its listeners once it is back, by comparing modseqs."""
    a, b = nodes
    heard = Heard()
    b.add_listener(heard)
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    untouched = a.create_mailbox("alice", "Quiet").id
    bridge = _bridge(b, backoff_start=2.0)
    pid = bridge.backend_pid
    pg.psql(f"SELECT pg_terminate_backend({pid})")
    deadline = time.monotonic() + WAIT
    while bridge.connected.is_set():
        assert time.monotonic() < deadline, "the bridge never noticed it was cut off"
        time.sleep(0.01)
    a.append(box, message(subject="while b was away"))
    assert bridge.connections == 1  # still down: the reconnect waits backoff_start
    heard.wait_for(box)
    assert bridge.connected.wait(WAIT) and bridge.connections == 2
    assert bridge.backend_pid not in (None, pid)
    assert untouched not in heard.ids  # the catch-up tells what moved, not everything
    a.append(box, message(subject="after"))  # and live notices flow again
    heard.wait_for(box, count=2)


def test_a_bridge_retries_until_the_database_answers(pg: Postgres, nodes) -> None:
    """Connection failures are retried with backoff and logged without the password."""
    from structlog.testing import capture_logs

    _a, b = nodes
    b.connect_kwargs["password"] = "wrong"  # what a rotated password file would look like
    with capture_logs() as logs:
        bridge = ChangeBridge(b, backoff_start=0.05, backoff_max=0.1)
        bridge.start()
        deadline = time.monotonic() + WAIT
        while sum(e["event"] == "store.notify.lost" for e in logs) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        b.connect_kwargs["password"] = pg.password
        assert bridge.connected.wait(WAIT)
        bridge.stop()
    lost = [e for e in logs if e["event"] == "store.notify.lost"]
    assert "password authentication failed" in lost[0]["reason"]
    assert all(pg.password not in str(e) and "wrong" not in str(e) for e in logs)
    assert any(e["event"] == "store.notify.connected" for e in logs)


def test_stopping_leaves_no_thread_and_no_connection(nodes, pg: Postgres) -> None:
    _a, b = nodes
    bridge = _bridge(b)
    pid = bridge.backend_pid
    assert _sessions(pg, pid) == ["popgate-listen node-b"]
    bridge.stop()
    assert not bridge.running
    assert not any(t.name.startswith("popgate-listen") for t in threading.enumerate())
    deadline = time.monotonic() + WAIT
    while _sessions(pg, pid):
        assert time.monotonic() < deadline, "the LISTEN connection outlived its bridge"
        time.sleep(0.05)


def test_closing_the_store_stops_a_forgotten_bridge(pg: Postgres) -> None:
    store = PostgresStore(pg.dsn, password=pg.password, schema=new_schema(pg), pool_size=1)
    bridge = _bridge(store)
    store.close()
    assert not bridge.running


def test_a_store_in_another_schema_is_not_heard(pg: Postgres, listening) -> None:
    """Mailbox ids are per schema: a store elsewhere in the database must not wake B."""
    a, b, heard = listening
    with PostgresStore(pg.dsn, password=pg.password, schema=new_schema(pg)) as other:
        other.ensure_user("alice")
        other.append(other.get_mailbox("alice", INBOX).id, message())
    b.ensure_user("zed")  # B's own write; then one by A that B must hear
    a.append(a.get_mailbox("zed", INBOX).id, message())
    heard.wait_for(a.get_mailbox("zed", INBOX).id)
    assert len(heard.ids) == 1


def test_notices_are_sent_in_the_writers_transaction(nodes, pg: Postgres) -> None:
    """A plain LISTEN session (not popgate) sees one notice per committed write."""
    a, _b = nodes
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    with psycopg.connect(pg.dsn, password=pg.password, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(a.channel)))
        a.append(box, message())
        got = list(conn.notifies(timeout=WAIT, stop_after=1))
    assert [decode(n.payload).mailbox_ids for n in got] == [(box,)]
    assert decode(got[0].payload).origin.startswith("node-a/")


def test_the_service_runs_the_bridge_and_stops_it_off_the_reactor(nodes) -> None:
    """popgate serve's store-push service: started with the gateway, and its stop
    returns a Deferred that fires once the thread has ended (the store closes after)."""
    from gateway.app.storage import ChangePushService

    class Reactor:  # callFromThread, run at once (the test has no reactor)
        def callFromThread(self, fn, *args):
            fn(*args)

    _a, b = nodes
    push = ChangePushService(b, Reactor())
    push.startService()
    assert push.bridge.connected.wait(WAIT)
    stopped = push.stopService()
    deadline = time.monotonic() + WAIT
    while not stopped.called:
        assert time.monotonic() < deadline, "the store-push service never finished stopping"
        time.sleep(0.02)
    assert not push.bridge.running


def test_a_primed_bridge_tells_changes_made_before_it_first_listened(nodes) -> None:
    """The snapshot taken by prime() (the thread's first step) is the baseline of the
    first LISTEN: what other nodes commit in between is told when it comes up."""
    a, b = nodes
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    heard = Heard()
    b.add_listener(heard)
    bridge = ChangeBridge(b)
    bridge.prime()
    a.append(box, message())
    bridge.start()
    heard.wait_for(box)
    bridge.stop()


def test_an_unexpected_error_in_the_bridge_does_not_end_it(nodes) -> None:
    """A failure that is not the database's (here: the dispatcher) is logged and the
    bridge starts over; its catch-up then tells the change that could not be told."""
    from structlog.testing import capture_logs

    a, b = nodes
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    heard = Heard()
    b.add_listener(heard)
    failures = [RuntimeError("dispatcher broke")]

    def dispatcher(fn, *args):
        if failures:
            raise failures.pop()
        fn(*args)

    b.set_dispatcher(dispatcher)
    with capture_logs() as logs:
        bridge = _bridge(b, backoff_start=0.05)
        a.append(box, message())
        heard.wait_for(box)
        bridge.stop()
    assert [e["event"] for e in logs].count("store.notify.failed") == 1
    assert bridge.connections == 2
