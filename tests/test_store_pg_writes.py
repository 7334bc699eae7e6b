"""The PostgreSQL store's one-statement writes (bench/README.md, "PostgreSQL writes,
session 5"): APPEND of one message, the \\Recent claim and STORE in a mailbox that is not
shared are one statement each, write exactly the rows the shared algorithm writes (STORE:
plans as :func:`~gateway.store.rowdata.plan_flags` does), and keep the node's change log
able to answer the catch-up after them. Their answers are the contract suite's
(tests/test_store_contract.py runs on PostgreSQL); two nodes appending to one mailbox are
in tests/test_store_postgres.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import psycopg
import pytest

from gateway.core.flags import RECENT
from gateway.store.errors import MailboxNotFound, StoreError
from gateway.store.interfaces import INBOX, NewMessage
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.rows import FLAG_ROWS
from gateway.store.rowdata import plan_flags
from gateway.store.rules import MAX_UID, flag_map
from gateway.store.steps import MessageSteps
from gateway.testing.messages import message
from gateway.testing.postgres import StatementLog, message_rows, shared_server, user_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    with user_store("alice") as s:
        yield s


def _known(store: PostgresStore) -> int:
    """INBOX, once the node knows it is not shared (its first write tells)."""
    box = store.get_mailbox("alice", INBOX).id
    store.clear_recent(box, [store.append(box, message(subject="first"))])
    return box


def _rows(store: PostgresStore, message_id: int) -> dict[str, list[tuple]]:
    """Every row stored for one message, its id left out."""
    with store._cursor() as cur:
        return message_rows(cur, message_id)


def _message_id(store: PostgresStore, box: int, uid: int) -> int:
    with store._cursor() as cur:
        cur.execute(
            "SELECT message_id FROM mailbox_message WHERE mailbox_id = %s AND uid = %s", (box, uid)
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_an_append_is_one_statement_and_its_catch_up_needs_none(store, monkeypatch) -> None:
    """The append's row feeds the node's change log, \\Recent included: the session's
    catch-up reads it from there, claims it in one statement, and the log forgets it."""
    box = _known(store)
    store.change_logs.trust()  # as the LISTEN bridge does once it has caught up
    head = store.changes_since(box, 0).highestmodseq
    statements = StatementLog(monkeypatch).sent
    uid = store.append(box, message(subject="new"), flags=["\\Flagged"])
    assert len(statements) == 1 and statements[0].startswith(b"WITH box AS (")
    statements.clear()
    changes = store.changes_since(box, head)
    assert statements == []  # answered by the log
    assert [(r.uid, r.flags) for r in changes.changed] == [(uid, {"\\Flagged", RECENT})]
    assert changes.highestmodseq == head + 1
    assert store.change_logs.known((box, ""), head) is None  # a claim: not on the reactor
    assert store.clear_recent(box, [uid]) == [uid] and len(statements) == 1
    statements.clear()
    after = store.changes_since(box, head)
    assert statements == [] and [(r.uid, r.flags) for r in after.changed] == [(uid, {"\\Flagged"})]
    assert store.change_logs.known((box, ""), head) == after
    monkeypatch.undo()
    server = shared_server()  # a second node, no log: the database's own answer
    with PostgresStore(server.dsn, password=server.password, schema=store.schema) as fresh:
        assert fresh.changes_since(box, head) == after


def test_a_claim_made_first_elsewhere_leaves_the_log_once_tried(store) -> None:
    """Another connection (node) claims the new row before this node's session does: the
    session's claim returns nothing, as before, and the log stops saying \\Recent."""
    box = _known(store)
    store.change_logs.trust()
    head = store.changes_since(box, 0).highestmodseq
    uid = store.append(box, message(subject="new"))
    with psycopg.connect(store.dsn, autocommit=True, **store.connect_kwargs) as other:
        other.execute(
            "UPDATE mailbox_message SET recent = 0 WHERE mailbox_id = %s AND uid = %s", (box, uid)
        )
    assert RECENT in store.changes_since(box, head).changed[0].flags  # the log's word
    assert store.clear_recent(box, [uid]) == []
    assert store.changes_since(box, head).changed[0].flags == frozenset()


def test_the_one_statement_writes_the_rows_the_shared_algorithm_writes(store) -> None:
    box = _known(store)
    raw = message(subject="Grüße \x00 from the café", body="Hello\r\n" * 40)
    fast = store.append(box, raw, flags=["\\Seen", "$Label"])
    (slow,) = MessageSteps.append_many(store, box, [NewMessage(raw, ("\\Seen", "$Label"), None)])
    assert slow == fast + 1
    fast_rows = _rows(store, _message_id(store, box, fast))
    assert fast_rows["header_field"] and fast_rows["sort_key"] and fast_rows["message_text"]
    assert fast_rows == _rows(store, _message_id(store, box, slow))
    infos = store.message_info(box, [fast, slow])
    assert infos[0].flags == infos[1].flags == {"\\Seen", "$Label", RECENT}
    assert infos[0].envelope == infos[1].envelope and infos[0].size == infos[1].size
    assert store.message_bytes(box, fast) == store.message_bytes(box, slow) == raw


def test_an_append_to_a_missing_mailbox_or_a_full_uid_space_writes_nothing(store) -> None:
    box = _known(store)
    gone = store.create_mailbox("alice", "Gone").id
    store.clear_recent(gone, [store.append(gone, message())])
    store.delete_mailbox("alice", "Gone")
    with store._cursor() as cur:
        cur.execute("SELECT count(*) FROM message")
        (messages,) = cur.fetchone()
        cur.execute("UPDATE mailbox SET uidnext = %s WHERE id = %s", (MAX_UID + 1, box))
    with pytest.raises(MailboxNotFound):
        store.append(gone, message())
    head = store.counts(box).highestmodseq
    with pytest.raises(StoreError, match="UID space"):
        store.append(box, message())
    assert store.counts(box).highestmodseq == head
    with store._cursor() as cur:
        cur.execute("SELECT count(*) FROM message")
        assert cur.fetchone() == (messages,)


FLAG_POOL = (
    "\\Seen",
    "\\Flagged",
    "\\Deleted",
    "\\Answered",
    "\\Draft",
    "\\seen",
    "\\FLAGGED",
    "$Label1",
    "$label1",
    "Junk",
    "NonJunk",
    "a",
    "B",
    "b",
    "\\Recent",
)
"""Flags a random STORE draws from: system flags in other spellings, keywords differing
only in case, \\Recent (never settable)."""


def test_the_server_side_store_plans_as_plan_flags_does(store) -> None:
    """Random STOREs (+FLAGS, -FLAGS, FLAGS, with and without UNCHANGEDSINCE) on random
    flag sets: the function's answer and the rows it leaves equal what
    :func:`~gateway.store.rowdata.plan_flags` plans from the rows read before."""
    box = _known(store)
    rng = random.Random(5)
    uids = [store.append(box, message(subject=f"m{i}")) for i in range(12)]
    seen = {"writes": 0, "no-ops": 0, "refused": 0}
    for step in range(150):
        picked = rng.sample(uids, rng.randint(1, 4))
        mode = rng.choice(["+", "-", ""])
        given = rng.sample(FLAG_POOL, rng.randint(0, 4))
        with store._cursor() as cur:
            cur.execute(FLAG_ROWS, (None, box, sorted(picked)))
            before = cur.fetchall()
            cur.execute("SELECT highestmodseq FROM mailbox WHERE id = %s", (box,))
            (head,) = cur.fetchone()
        since = rng.choice([None, None, head, max(1, head - rng.randint(0, 10))])
        plan = plan_flags(before, mode, flag_map(given), since, False, None)
        result = store.store_flags(box, picked, mode, given, since)
        modseq = head + 1
        assert result.modified == plan.modified, step
        assert result.updated == plan.rows(modseq, store._flags), step
        assert result.unchanged == plan.unchanged(before, store._flags), step
        stored = {uid: text for uid, text, *_rest in before}
        stored.update((uid, text) for uid, text, _p, _e, _r in plan.writes)
        with store._cursor() as cur:
            cur.execute(
                "SELECT uid, flags FROM mailbox_message WHERE mailbox_id = %s"
                " AND uid = ANY(%s::bigint[])",
                (box, sorted(picked)),
            )
            assert dict(cur.fetchall()) == stored, step
        assert store.counts(box).highestmodseq == (modseq if plan.writes else head), step
        seen["writes" if plan.writes else "no-ops"] += 1
        seen["refused"] += bool(plan.modified)
    assert min(seen.values()) >= 10, seen  # every outcome met often
