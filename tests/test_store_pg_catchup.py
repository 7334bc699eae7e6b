"""The PostgreSQL store's change logs (gateway/store/postgres/catchup.py): a catch-up
answered without a query only while the node knows the mailbox unchanged.

The logs on their own (a fake clock, no database): what they answer, what outdates them
(a change heard, a lost LISTEN connection, age), how a miss is merged, that \\Recent rows
are never kept and that a log stays bounded. Then on a real PostgreSQL: random appends,
flag changes and expunges with catch-ups from random modseqs answer exactly what a store
that always queries answers; another node's change is seen once its notice is heard; a
dropped LISTEN connection makes every catch-up query until the bridge is back and has
caught up, so a change made meanwhile is never missed; without a bridge nothing is kept.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.core.flags import RECENT
from gateway.store.interfaces import INBOX, Changes, MessageRow
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.catchup import ChangeLogs
from gateway.store.postgres.push import ChangeBridge
from gateway.testing.messages import message
from gateway.testing.postgres import Postgres, shared_server, two_nodes

WAIT = 10.0
"""Seconds a test waits for a notice or a reconnect (they take milliseconds)."""

KEY = (7, "")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(uid: int, modseq: int, *flags: str) -> MessageRow:
    return MessageRow(uid, frozenset(flags), modseq)


def logs(**kwargs: object) -> tuple[ChangeLogs, Clock]:
    clock = Clock()
    found = ChangeLogs(clock=clock, **kwargs)  # type: ignore[arg-type]
    found.trust()
    return found, clock


def query(logs_: ChangeLogs, since: int, head: int, rows, gone=()) -> Changes:
    """A catch-up that missed: what the database would return for the plan's ``ask``."""
    plan = logs_.plan(KEY, since)
    assert plan.answer is None
    ask = plan.ask
    return logs_.record(
        KEY,
        plan,
        since,
        head,
        [r for r in rows if r.modseq > ask],
        [(u, m) for u, m in gone if m > ask],
    )


# ---- the logs alone ----------------------------------------------------------------------


def test_untrusted_logs_never_answer_nor_keep() -> None:
    found = ChangeLogs()
    plan = found.plan(KEY, 5)
    assert plan.answer is None and plan.ask == 5 and plan.token is None
    got = found.record(KEY, plan, 5, 9, [row(3, 9, "\\Seen")], [(2, 8)])
    assert got == Changes(9, [row(3, 9, "\\Seen")], [2])
    assert found.plan(KEY, 5).answer is None


def test_a_log_answers_any_since_from_its_floor_up_to_its_head() -> None:
    found, _clock = logs()
    rows = [row(1, 6, "\\Seen"), row(4, 9, "\\Flagged")]
    first = query(found, 5, 9, rows, gone=[(2, 7)])
    assert first == Changes(9, rows, [2])
    assert found.plan(KEY, 5).answer == first
    assert found.plan(KEY, 6).answer == Changes(9, [rows[1]], [2])
    assert found.plan(KEY, 9).answer == Changes(9, [], [])
    assert found.plan(KEY, 4).answer is None  # below the floor: only a query knows
    assert found.plan(KEY, 10).answer is None  # the session knows more than the log
    assert found.hits == 3


def test_a_heard_change_outdates_the_log_and_the_miss_asks_only_past_its_head() -> None:
    found, _clock = logs()
    query(found, 5, 9, [row(1, 6), row(4, 9, "\\Flagged")])
    found.changed([KEY[0] + 1])  # another mailbox: still valid
    assert found.plan(KEY, 5).answer is not None
    found.changed([KEY[0]])
    plan = found.plan(KEY, 5)
    assert plan.answer is None and plan.ask == 9 and plan.base is not None
    # Message 1 re-flagged, message 4 expunged, message 5 new, after modseq 9.
    got = found.record(KEY, plan, 5, 12, [row(1, 11, "\\Seen"), row(5, 12)], [(4, 10)])
    assert got == Changes(12, [row(1, 11, "\\Seen"), row(5, 12)], [4])
    assert found.plan(KEY, 5).answer == got  # the merged log still reaches back to 5
    assert found.plan(KEY, 11).answer == Changes(12, [row(5, 12)], [])


def test_a_change_heard_while_the_query_ran_outdates_what_it_read() -> None:
    found, _clock = logs()
    plan = found.plan(KEY, 5)
    found.changed([KEY[0]])  # committed after the query's snapshot, maybe
    found.record(KEY, plan, 5, 9, [row(1, 6)], [])
    assert found.plan(KEY, 5).answer is None


def test_a_lost_listen_connection_drops_every_log_until_trusted_again() -> None:
    found, _clock = logs()
    plan = found.plan(KEY, 5)
    query(found, 5, 9, [row(1, 6)])
    found.distrust()
    assert found.plan(KEY, 5).answer is None
    assert found.plan(KEY, 5).token is None
    found.trust()
    assert found.plan(KEY, 5).answer is None  # read before the outage: not used
    found.record(KEY, plan, 5, 9, [row(1, 6)], [])  # a query that began before it
    assert found.plan(KEY, 5).answer is None


def test_a_log_is_not_used_past_its_age() -> None:
    found, clock = logs(max_age=2.0)
    query(found, 5, 9, [row(1, 6)])
    clock.now += 1.9
    assert found.plan(KEY, 5).answer is not None
    clock.now += 0.2
    plan = found.plan(KEY, 5)
    assert plan.answer is None and plan.ask == 9
    found.record(KEY, plan, 5, 9, [], [])  # nothing new: the log is read again
    assert found.plan(KEY, 5).answer == Changes(9, [row(1, 6)], [])


def test_an_answer_with_recent_rows_is_never_kept() -> None:
    """The first session told claims \\Recent without a new modseq (RFC 3501 §2.3.2)."""
    found, _clock = logs()
    got = query(found, 5, 9, [row(6, 9, RECENT)])
    assert got.changed == [row(6, 9, RECENT)]
    assert found.plan(KEY, 5).answer is None


def test_an_answer_with_recent_rows_is_kept_once_this_node_claimed_them_all() -> None:
    """Held aside, it becomes the log (without \\Recent) once every \\Recent row in it is
    claimed here: a claim only ever clears \\Recent, so a query would now say the same."""
    found, _clock = logs()
    query(found, 5, 9, [row(4, 7, "\\Seen"), row(6, 8, RECENT), row(7, 9, RECENT)])
    found.claimed(KEY[0], [6])  # one of the two: still held aside
    assert found.plan(KEY, 5).answer is None
    found.claimed(KEY[0], [6, 7])
    answer = found.plan(KEY, 5).answer
    assert answer == Changes(9, [row(4, 7, "\\Seen"), row(6, 8), row(7, 9)], [])


@pytest.mark.parametrize("between", ["changed", "distrust"])
def test_a_change_heard_before_the_claim_drops_the_answer_held_aside(between: str) -> None:
    found, _clock = logs()
    query(found, 5, 9, [row(6, 9, RECENT)])
    if between == "changed":
        found.changed([KEY[0]])
    else:
        found.distrust()
        found.trust()
    found.claimed(KEY[0], [6])
    assert found.plan(KEY, 5).answer is None


def test_a_log_keeps_its_newest_rows_and_raises_its_floor() -> None:
    found, _clock = logs(max_rows=3)
    rows = [row(uid, 10 + uid) for uid in range(1, 6)]  # modseqs 11..15
    assert query(found, 10, 15, rows).changed == rows  # the answer is whole
    assert found.plan(KEY, 12).answer == Changes(15, rows[2:], [])
    assert found.plan(KEY, 11).answer is None


def test_logs_are_bounded_in_number() -> None:
    found, _clock = logs(max_logs=2)
    for mailbox_id in (1, 2, 3):
        plan = found.plan((mailbox_id, ""), 0)
        found.record((mailbox_id, ""), plan, 0, 1, [], [])
    assert found.plan((1, ""), 0).answer is None
    assert found.plan((3, ""), 0).answer is not None


# ---- on PostgreSQL -------------------------------------------------------------------------


@pytest.fixture
def pg() -> Postgres:
    return shared_server()


@pytest.fixture
def nodes(pg: Postgres) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Store A (node-a) and store B (node-b) on one schema; both closed at the end."""
    with two_nodes(pg) as pair:
        yield pair


def _bridge(store: PostgresStore, **kwargs: float) -> ChangeBridge:
    bridge = ChangeBridge(store, **kwargs)
    bridge.start()
    assert bridge.connected.wait(WAIT), "the LISTEN connection never came up"
    return bridge


class Heard:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, mailbox_id: int) -> None:
        with self._cond:
            self.ids.append(mailbox_id)
            self._cond.notify_all()

    def wait_for(self, mailbox_id: int, count: int = 1) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.ids.count(mailbox_id) >= count, WAIT)


@pytest.mark.postgres
def test_answers_match_a_store_that_always_queries(nodes) -> None:
    """One node (its own commits are all it must hear): random writes and catch-ups from
    random modseqs, each answer equal to the database's."""
    logged, reference = nodes
    logged.change_logs.trust()
    logged.ensure_user("alice")
    box = logged.get_mailbox("alice", INBOX).id
    rng = random.Random(13)
    uids: list[int] = []
    head = 0
    for step in range(160):
        choice = rng.random()
        if choice < 0.25 or not uids:
            uids.append(logged.append(box, message(subject=f"m{step}"), flags=()))
        elif choice < 0.6:
            picked = rng.sample(uids, min(len(uids), rng.randint(1, 3)))
            flag = rng.choice(["\\Seen", "\\Flagged", "$Label"])
            logged.store_flags(box, picked, rng.choice("+-"), [flag])
        elif choice < 0.7:
            gone = rng.choice(uids)
            logged.store_flags(box, [gone], "+", ["\\Deleted"])
            logged.expunge(box, [gone])
            uids.remove(gone)
        for _ in range(3):
            since = rng.randint(max(0, head - 12), head + 1)
            got = logged.changes_since(box, since)
            want = reference.changes_since(box, since)
            assert got == want, (step, since)
            head = got.highestmodseq
            if rng.random() < 0.5:
                # A session claims \Recent, as the first one told does.
                recent = [r.uid for r in got.changed if RECENT in r.flags]
                if recent:
                    logged.clear_recent(box, recent)
    assert logged.change_logs.hits > 100
    assert reference.change_logs.hits == 0  # no bridge: never trusted


@pytest.mark.postgres
def test_after_the_claim_of_a_new_message_the_other_sessions_need_no_query(nodes) -> None:
    """The first session told of an APPEND claims its \\Recent; the catch-ups of the
    mailbox's other sessions are then answered from the log, as the database answers."""
    logged, reference = nodes
    logged.change_logs.trust()
    logged.ensure_user("alice")
    box = logged.get_mailbox("alice", INBOX).id
    head = logged.changes_since(box, 0).highestmodseq
    uid = logged.append(box, message())
    first = logged.changes_since(box, head)
    assert [r.flags for r in first.changed] == [frozenset({RECENT})]
    assert logged.clear_recent(box, [uid]) == [uid]
    misses = logged.change_logs.misses
    again = logged.changes_since(box, head)
    assert logged.change_logs.misses == misses  # answered from the log
    assert again == reference.changes_since(box, head)
    assert again.changed[0].flags == frozenset()


@pytest.mark.postgres
def test_another_nodes_change_is_seen_once_its_notice_is_heard(nodes) -> None:
    a, b = nodes
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    first = a.append(box, message(subject="one"))
    heard = Heard()
    b.add_listener(heard)
    _bridge(b)
    seen = b.changes_since(box, 0)
    b.clear_recent(box, [first])
    mark = b.changes_since(box, 0).highestmodseq
    hits = b.change_logs.hits
    assert b.changes_since(box, mark) == Changes(mark, [], [])
    assert b.change_logs.hits == hits + 1  # answered by the log
    assert [r.uid for r in seen.changed] == [first]
    second = a.append(box, message(subject="two"))
    heard.wait_for(box)
    got = b.changes_since(box, mark)
    assert [r.uid for r in got.changed] == [second] and got.highestmodseq > mark


@pytest.mark.postgres
def test_a_dropped_listen_connection_makes_every_catch_up_query(nodes, pg: Postgres) -> None:
    """B's LISTEN session is terminated; A appends while B cannot hear it: B's catch-up
    still sees the message at once (it queries), and again after the bridge is back."""
    a, b = nodes
    a.ensure_user("alice")
    box = a.get_mailbox("alice", INBOX).id
    bridge = _bridge(b, backoff_start=2.0)
    mark = b.changes_since(box, 0).highestmodseq
    assert b.changes_since(box, mark).changed == []
    assert b.change_logs.trusted
    pg.psql(f"SELECT pg_terminate_backend({bridge.backend_pid})")
    deadline = time.monotonic() + WAIT
    while bridge.connected.is_set():
        assert time.monotonic() < deadline, "the bridge never noticed it was cut off"
        time.sleep(0.01)
    assert not b.change_logs.trusted
    uid = a.append(box, message(subject="while b was away"))
    assert [r.uid for r in b.changes_since(box, mark).changed] == [uid]
    assert bridge.connections == 1  # still down (the reconnect waits backoff_start)
    assert bridge.connected.wait(WAIT) and b.change_logs.trusted
    assert [r.uid for r in b.changes_since(box, mark).changed] == [uid]


@pytest.mark.postgres
def test_a_stopped_bridge_leaves_the_logs_untrusted(nodes) -> None:
    _a, b = nodes
    bridge = _bridge(b)
    assert b.change_logs.trusted
    bridge.stop()
    assert not b.change_logs.trusted
