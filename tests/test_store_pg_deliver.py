"""The PostgreSQL store's batched POP3 delivery (bench/README.md, "PostgreSQL ingest,
session 5"): ``deliver_many`` claims and writes each message in one statement
(:data:`~gateway.store.postgres.messagerows.DELIVER_ONE`), the batch in one pipelined
``executemany``. It writes exactly the rows the per-statement path writes, and a UIDL
already in the ledger (earlier, in the same batch, or claimed by another node) writes
nothing. Exactly-once across nodes: tests/test_store_postgres.py, tests/test_store_ledger.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from gateway.store.interfaces import INBOX, Delivery
from gateway.store.postgres import PostgresStore
from gateway.testing import samplemail
from gateway.testing.messages import message
from gateway.testing.postgres import message_rows, user_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    with user_store() as s:
        yield s


def _stored(store: PostgresStore, owner: str) -> list[dict[str, list[tuple]]]:
    """Every row of every message in the owner's INBOX (UID order), ids left out, with
    its ledger row."""
    box = store.get_mailbox(owner, INBOX).id
    found = []
    with store._cursor() as cur:
        cur.execute(
            "SELECT mm.message_id, l.uidl, l.state, l.fetched_at, l.size FROM mailbox_message mm"
            " JOIN ledger l ON l.message_id = mm.message_id WHERE mm.mailbox_id = %s"
            " ORDER BY mm.uid",
            (box,),
        )
        for message_id, *ledger in cur.fetchall():
            rows: dict[str, list[tuple]] = {"ledger": [tuple(ledger)]}
            rows.update(message_rows(cur, message_id))
            found.append(rows)
    return found


def test_the_batched_delivery_writes_the_rows_the_per_statement_path_writes(
    store, monkeypatch
) -> None:
    """``dedup`` with a possible copy takes the per-statement path (claim, look-up,
    ``_insert_message``); with no other upstream holding the bytes it stores every
    message, as the batch does (the copy check is forced here so both paths run)."""
    monkeypatch.setattr(store, "_may_hold_copies", lambda *_args: True)
    raws = samplemail.generate(30, 5, size_profile="realistic")
    raws.append(message(subject="Grüße \x00 from the café", body="Hello\r\n" * 40))
    raws.append(b"X-No-Body: yes\r\n\r\n")
    raws.append(b"\r\nno header at all\r\n")
    store._clock = lambda: 1_700_000_000.5  # one fetched_at for both
    batch = [Delivery("up", f"m{i}", raw, size_on_server=i or None) for i, raw in enumerate(raws)]
    fast = store.deliver_many("fast", INBOX, batch)
    slow = store.deliver_many(
        "slow",
        INBOX,
        [Delivery("up2", d.uidl, d.raw, None, d.size_on_server) for d in batch],
        dedup=True,
    )
    assert fast == slow == list(range(1, len(raws) + 1))
    fast_rows, slow_rows = _stored(store, "fast"), _stored(store, "slow")
    assert len(fast_rows) == len(raws) and fast_rows[0]["header_field"]
    assert fast_rows == slow_rows
    box = store.get_mailbox("fast", INBOX).id
    assert [store.message_bytes(box, uid) for uid in fast] == raws


def test_a_uidl_already_in_the_ledger_writes_nothing(store) -> None:
    """Known before the batch (skipped before the transaction), repeated in the batch,
    or committed by another node after the look-up: the claim in the statement fails
    and no message row is written."""
    first = store.deliver_many("alice", INBOX, [Delivery("up", "a", message(subject="a"))])
    assert first == [1]
    with psycopg.connect(store.dsn, autocommit=True, **store.connect_kwargs) as other:
        other.execute(f"SET search_path TO {store.schema}")
        other.execute(
            "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
            " VALUES ('up', 'c', NULL, 'delivered', NULL, 0, 1)"
        )
    with store._cursor() as cur:
        cur.execute("SELECT count(*) FROM message")
        (before,) = cur.fetchone()
    original = store._known
    store._known = lambda upstream, uidls: original(upstream, uidls) - {"c"}  # raced
    batch = [
        Delivery("up", "a", message(subject="again")),
        Delivery("up", "b", message(subject="b")),
        Delivery("up", "b", message(subject="b twice")),
        Delivery("up", "c", message(subject="c")),
        Delivery("up", "d", message(subject="d")),
    ]
    assert store.deliver_many("alice", INBOX, batch) == [None, 2, None, None, 3]
    with store._cursor() as cur:
        cur.execute("SELECT count(*) FROM message")
        assert cur.fetchone() == (before + 2,)
        cur.execute("SELECT uidl, message_id IS NULL FROM ledger ORDER BY uidl")
        assert cur.fetchall() == [("a", False), ("b", False), ("c", True), ("d", False)]


def test_a_dedup_batch_with_no_copies_is_one_pipelined_statement_per_message(store) -> None:
    """A first import with dedup on (an upstream's default): no bytes repeat and the
    mailbox holds none of them, so the batch takes the pipelined path (one look-up for
    the batch, no per-message statements) and stores what the per-message path would."""
    raws = [message(subject=f"first import {i}") for i in range(12)]
    calls: list[str] = []
    original = store._claim_and_insert

    def per_message(*args, **kwargs):
        calls.append("per-message")
        return original(*args, **kwargs)

    store._claim_and_insert = per_message
    batch = [Delivery("up", f"u{i}", raw) for i, raw in enumerate(raws)]
    assert store.deliver_many("alice", INBOX, batch, dedup=True) == list(range(1, 13))
    assert calls == []
    again = [Delivery("up2", "v1", raws[0]), Delivery("up2", "v2", message(subject="new"))]
    assert store.deliver_many("alice", INBOX, again, dedup=True) == [None, 13]
    assert calls == ["per-message"]
    box = store.get_mailbox("alice", INBOX).id
    assert store.message_bytes(box, 1) == raws[0]
