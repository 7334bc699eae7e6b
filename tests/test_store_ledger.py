"""Contract tests for the ledger/delivery methods the POP3 fetcher added to the store
(deliver_many, record_imported, LedgerEntry.stored), run against every backend, plus the
schema migration that made room for them on an existing SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store.interfaces import INBOX, Delivery, MessageTooLarge, Store
from gateway.store.schema import MIGRATIONS, migrate
from gateway.store.sqlite import SQLiteStore
from gateway.testing.messages import message
from tests.test_store_contract import SMALL_LIMIT, START, Backend, backend  # noqa: F401


@pytest.fixture
def store(backend: Backend) -> Store:  # noqa: F811
    return backend.open()


def msg(n: int, body: bytes = b"") -> bytes:
    return message(
        f"m{n}", b"body %d %s\r\n" % (n, body), None, to=None, date=None, message_id=f"<{n}@x>"
    )


def d(upstream: str, uidl: str, raw: bytes) -> Delivery:
    return Delivery(upstream=upstream, uidl=uidl, raw=raw, size_on_server=len(raw) + 1)


def contents(store: Store, owner: str = "alice", name: str = INBOX) -> list[bytes]:
    box = store.get_mailbox(owner, name)
    return [store.message_bytes(box.id, r.uid) for r in store.message_rows(box.id)]


def test_deliver_many_stores_all_with_consecutive_uids_and_ledger_rows(store) -> None:
    uids = store.deliver_many("alice", INBOX, [d("isp", f"u{i}", msg(i)) for i in range(5)])
    assert uids == [1, 2, 3, 4, 5]
    assert contents(store) == [msg(i) for i in range(5)]
    entries = store.ledger_entries("isp")
    assert [e.uidl for e in entries] == [f"u{i}" for i in range(5)]
    assert all(e.state == "delivered" and e.stored is True for e in entries)
    assert [e.size for e in entries] == [len(msg(i)) + 1 for i in range(5)]
    assert entries[0].fetched_at.timestamp() == START


def test_deliver_many_skips_known_uidls_and_repeats_within_a_batch(store) -> None:
    store.deliver_many("alice", INBOX, [d("isp", "a", msg(1))])
    uids = store.deliver_many(
        "alice", INBOX, [d("isp", "a", msg(9)), d("isp", "b", msg(2)), d("isp", "b", msg(3))]
    )
    assert uids == [None, 2, None]
    assert contents(store) == [msg(1), msg(2)]


def test_deliver_many_creates_the_user_and_a_nested_folder(store) -> None:
    uids = store.deliver_many("bob", "Lists/pop", [d("isp", "a", msg(1))])
    assert uids == [1]
    assert contents(store, "bob", "Lists/pop") == [msg(1)]
    assert {m.name for m in store.list_mailboxes("bob")} >= {INBOX, "Lists", "Lists/pop"}


def test_deliver_many_is_all_or_nothing_when_one_message_is_too_large(store) -> None:
    batch = [d("isp", "ok", msg(1)), d("isp", "big", b"x" * (SMALL_LIMIT + 1))]
    with pytest.raises(MessageTooLarge):
        store.deliver_many("alice", INBOX, batch)
    assert store.known_uidls("isp") == set()


def test_empty_batch_writes_nothing(store) -> None:
    assert store.deliver_many("alice", INBOX, []) == []


def test_dedup_stores_bytes_seen_through_another_upstream_once_but_records_both(store) -> None:
    same = msg(7)
    assert store.deliver_many("alice", INBOX, [d("a", "a1", same)], dedup=True) == [1]
    assert store.deliver_many("alice", INBOX, [d("b", "b1", same)], dedup=True) == [None]
    assert contents(store) == [same]
    assert store.known_uidls("a") == {"a1"} and store.known_uidls("b") == {"b1"}
    assert store.ledger_entries("b")[0].stored is True


def test_dedup_looks_at_the_mailbox_as_it_was_before_the_batch(store) -> None:
    """Two upstreams' copies of the same bytes in ONE batch are both stored, on every
    backend: dedup looks for copies the mailbox held before the batch (the fetcher
    delivers one upstream's batch at a time, so this is the rare case)."""
    same, other = msg(7), msg(8)
    batch = [d("a", "a1", same), d("a", "a2", other), d("b", "b1", same)]
    assert store.deliver_many("alice", INBOX, batch, dedup=True) == [1, 2, 3]
    assert contents(store) == [same, other, same]
    assert store.known_uidls("b") == {"b1"}


def test_dedup_batch_with_one_known_copy_stores_only_the_new_bytes(store) -> None:
    """A batch of which one message the mailbox already holds through another upstream:
    that one points at the stored copy, the rest are stored, UIDs consecutive."""
    known = msg(7)
    assert store.deliver_many("alice", INBOX, [d("a", "a1", known)], dedup=True) == [1]
    batch = [d("b", "b1", msg(8)), d("b", "b2", known), d("b", "b3", msg(9))]
    assert store.deliver_many("alice", INBOX, batch, dedup=True) == [2, None, 3]
    assert contents(store) == [known, msg(8), msg(9)]
    assert store.known_uidls("b") == {"b1", "b2", "b3"}


def test_without_dedup_identical_bytes_are_stored_twice(store) -> None:
    same = msg(7)
    store.deliver_many("alice", INBOX, [d("a", "a1", same)])
    assert store.deliver_many("alice", INBOX, [d("b", "b1", same)]) == [2]
    assert contents(store) == [same, same]


def test_dedup_never_merges_messages_of_the_same_upstream_or_other_folders(store) -> None:
    same = msg(8)
    store.deliver_many("alice", INBOX, [d("a", "a1", same)], dedup=True)
    assert store.deliver_many("alice", INBOX, [d("a", "a2", same)], dedup=True) == [2]
    assert store.deliver_many("alice", "Other", [d("b", "b1", same)], dedup=True) == [1]
    assert len(contents(store)) == 2 and contents(store, "alice", "Other") == [same]


def test_stored_turns_false_once_the_user_expunges_the_message(store) -> None:
    store.deliver_many("alice", INBOX, [d("isp", "a", msg(1)), d("isp", "b", msg(2))])
    box = store.get_mailbox("alice", INBOX)
    store.store_flags(box.id, [1], "+", ["\\Deleted"])
    store.expunge(box.id)
    stored = {e.uidl: e.stored for e in store.ledger_entries("isp")}
    assert stored == {"a": False, "b": True}


def test_a_message_moved_to_another_folder_is_still_stored(store) -> None:
    store.deliver_many("alice", INBOX, [d("isp", "a", msg(1))])
    box = store.get_mailbox("alice", INBOX)
    archive = store.get_mailbox("alice", "Archive")
    store.copy(box.id, [1], archive.id, move=True)
    assert store.ledger_entries("isp")[0].stored is True


def test_record_imported_adds_known_uidls_without_touching_existing_rows(store) -> None:
    store.deliver_many("alice", INBOX, [d("isp", "a", msg(1))])
    store.record_skipped("isp", "s", "too large")
    added = store.record_imported("isp", ["a", "s", "x", "y", "x"], "fetchmail .fetchids")
    assert added == 2
    entries = {e.uidl: e for e in store.ledger_entries("isp")}
    assert {u: e.state for u, e in entries.items()} == {
        "a": "delivered",
        "s": "skipped",
        "x": "imported",
        "y": "imported",
    }
    assert entries["x"].reason == "fetchmail .fetchids" and entries["x"].stored is None
    assert store.known_uidls("isp") == {"a", "s", "x", "y"}
    assert store.deliver_many("alice", INBOX, [d("isp", "x", msg(5))]) == [None]


def test_ledger_survives_reopening(backend) -> None:  # noqa: F811
    s = backend.open()
    s.deliver_many("alice", INBOX, [d("isp", "a", msg(1))])
    s.record_imported("isp", ["old"], "getmail")
    s = backend.reopen(s)
    assert {e.uidl: e.state for e in s.ledger_entries("isp")} == {
        "a": "delivered",
        "old": "imported",
    }


def test_migration_to_version_2_keeps_existing_ledger_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:1])
    conn.execute(
        "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
        " VALUES ('isp', 'u1', NULL, 'skipped', 'too large', 1.0, 5)"
    )
    conn.close()
    store = SQLiteStore(path)
    try:
        (entry,) = store.ledger_entries("isp")
        assert (entry.uidl, entry.state, entry.reason, entry.size) == (
            "u1",
            "skipped",
            "too large",
            5,
        )
        assert store.record_imported("isp", ["u2"], "fetchmail") == 1
    finally:
        store.close()
