"""Contract tests for routed delivery (issue 16: a Sieve outcome committed with the ledger
row) and RFC 7352 duplicate tracking, run against every backend, plus the schema
migration that added the Sieve tables to an existing SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store.interfaces import (
    INBOX,
    Delivery,
    DuplicateRecord,
    MessageTooLarge,
    Routed,
    Store,
    Target,
)
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from gateway.store.sqlite import SQLiteStore
from tests.test_store_contract import SMALL_LIMIT, Backend, backend  # noqa: F401


@pytest.fixture
def store(backend: Backend) -> Store:  # noqa: F811
    return backend.open()


def msg(n: int) -> bytes:
    return b"Subject: m%d\r\nMessage-ID: <%d@x>\r\n\r\nbody %d\r\n" % (n, n, n)


def routed(uidl: str, raw: bytes, *targets: Target, upstream: str = "isp", **kw) -> Routed:
    return Routed(Delivery(upstream=upstream, uidl=uidl, raw=raw), tuple(targets), **kw)


def rows(store: Store, name: str, owner: str = "alice") -> list[tuple[bytes, frozenset[str]]]:
    box = store.get_mailbox(owner, name)
    return [
        (store.message_bytes(box.id, r.uid), r.flags - {"\\Recent"})
        for r in store.message_rows(box.id)
    ]


def test_one_message_filed_into_several_mailboxes_with_their_flags(store) -> None:
    """fileinto :copy + keep: one delivery, two mailboxes, one ledger row."""
    store.ensure_user("alice")
    store.create_mailbox("alice", "Work")
    (filed,) = store.deliver_routed(
        "alice",
        INBOX,
        [routed("u1", msg(1), Target("Work", ("\\Flagged", "$Work")), Target(INBOX, ("\\Seen",)))],
    )
    assert filed == {"Work": 1, INBOX: 1}
    assert rows(store, "Work") == [(msg(1), frozenset({"\\Flagged", "$Work"}))]
    assert rows(store, INBOX) == [(msg(1), frozenset({"\\Seen"}))]
    (entry,) = store.ledger_entries("isp")
    assert entry.state == "delivered" and entry.stored is True


def test_a_missing_mailbox_is_created_only_with_create(store) -> None:
    """:create makes the folder (and parents); without it the message lands in the default."""
    filed = store.deliver_routed(
        "alice",
        INBOX,
        [
            routed("u1", msg(1), Target("Lists/dev", create=True)),
            routed("u2", msg(2), Target("Nowhere")),
        ],
    )
    assert filed == [{"Lists/dev": 1}, {INBOX: 1}]
    names = {m.name for m in store.list_mailboxes("alice")}
    assert {"Lists", "Lists/dev"} <= names and "Nowhere" not in names
    assert rows(store, INBOX) == [(msg(2), frozenset())]


def test_the_default_mailbox_is_the_fallback_and_is_created(store) -> None:
    """The implicit keep of an upstream that delivers into a folder goes to that folder."""
    (filed,) = store.deliver_routed(
        "alice", "Pop/isp", [routed("u1", msg(1), Target("bad//name"), Target("Pop/isp"))]
    )
    assert filed == {"Pop/isp": 1}
    assert rows(store, "Pop/isp") == [(msg(1), frozenset())]


def test_discard_writes_the_ledger_row_and_no_message(store) -> None:
    (filed,) = store.deliver_routed("alice", INBOX, [routed("u1", msg(1))])
    assert filed == {}
    store.ensure_user("alice")
    assert rows(store, INBOX) == []
    (entry,) = store.ledger_entries("isp")
    assert entry.state == "delivered" and entry.stored is False
    assert store.known_uidls("isp") == {"u1"}


def test_a_known_uidl_writes_nothing_even_with_other_targets(store) -> None:
    store.deliver_routed("alice", INBOX, [routed("u1", msg(1), Target(INBOX))])
    again = store.deliver_routed(
        "alice", INBOX, [routed("u1", msg(1), Target("Work", create=True)), routed("u1", msg(9))]
    )
    assert again == [None, None]
    assert rows(store, INBOX) == [(msg(1), frozenset())]
    assert "Work" not in {m.name for m in store.list_mailboxes("alice")}


def test_repeats_within_a_batch_are_delivered_once(store) -> None:
    filed = store.deliver_routed(
        "alice",
        INBOX,
        [routed("u1", msg(1), Target(INBOX)), routed("u1", msg(1), Target(INBOX))],
    )
    assert filed == [{INBOX: 1}, None]


def test_targets_naming_one_mailbox_twice_file_once_with_flags_united(store) -> None:
    (filed,) = store.deliver_routed(
        "alice",
        INBOX,
        [routed("u1", msg(1), Target("inbox", ("\\Seen",)), Target(INBOX, ("\\Flagged",)))],
    )
    assert filed == {INBOX: 1}
    assert rows(store, INBOX) == [(msg(1), frozenset({"\\Seen", "\\Flagged"}))]


def test_invalid_flags_are_dropped_not_refused(store) -> None:
    """RFC 5232 lets a script set any string; the message must still be filed."""
    (filed,) = store.deliver_routed(
        "alice", INBOX, [routed("u1", msg(1), Target(INBOX, ("bad(flag", "\\Unknown", "ok")))]
    )
    assert filed == {INBOX: 1}
    assert rows(store, INBOX) == [(msg(1), frozenset({"ok"}))]


def test_uids_are_consecutive_per_mailbox_in_batch_order(store) -> None:
    filed = store.deliver_routed(
        "alice",
        INBOX,
        [
            routed("u1", msg(1), Target("A", create=True)),
            routed("u2", msg(2), Target(INBOX)),
            routed("u3", msg(3), Target("A", create=True), Target(INBOX)),
        ],
    )
    assert filed == [{"A": 1}, {INBOX: 1}, {"A": 2, INBOX: 2}]


def test_all_or_nothing_when_one_message_is_too_large(store) -> None:
    with pytest.raises(MessageTooLarge):
        store.deliver_routed(
            "alice",
            INBOX,
            [
                routed("u1", msg(1), Target("A", create=True)),
                routed("u2", b"x" * (SMALL_LIMIT + 1), Target(INBOX)),
            ],
        )
    assert store.known_uidls("isp") == set()
    store.ensure_user("alice")
    assert "A" not in {m.name for m in store.list_mailboxes("alice")}


def test_dedup_skips_only_the_targets_that_hold_the_bytes_already(store) -> None:
    store.deliver_routed("alice", INBOX, [routed("a1", msg(1), Target(INBOX), upstream="a")])
    (filed,) = store.deliver_routed(
        "alice",
        INBOX,
        [routed("b1", msg(1), Target(INBOX), Target("B", create=True), upstream="b")],
        dedup=True,
    )
    assert filed == {"B": 1}
    assert rows(store, INBOX) == [(msg(1), frozenset())]
    assert [e.stored for e in store.ledger_entries("b")] == [True]


def test_listeners_hear_each_changed_mailbox_once_after_commit(store) -> None:
    store.ensure_user("alice")
    work = store.create_mailbox("alice", "Work")
    heard: list[int] = []
    store.add_listener(heard.append)
    store.deliver_routed(
        "alice",
        INBOX,
        [routed("u1", msg(1), Target("Work"), Target(INBOX)), routed("u2", msg(2), Target("Work"))],
    )
    inbox = store.get_mailbox("alice", INBOX)
    assert sorted(heard) == sorted([inbox.id, work.id])


def test_duplicate_ids_are_recorded_with_the_delivery_and_expire(backend) -> None:  # noqa: F811
    store = backend.open()
    mark = DuplicateRecord(handle="", id="<1@x>", period=100)
    assert store.duplicate_seen("alice", "", "<1@x>") is False
    store.deliver_routed("alice", INBOX, [routed("u1", msg(1), Target(INBOX), duplicates=(mark,))])
    assert store.duplicate_seen("alice", "", "<1@x>") is True
    assert store.duplicate_seen("bob", "", "<1@x>") is False
    assert store.duplicate_seen("alice", "other", "<1@x>") is False
    store = backend.reopen(store)
    assert store.duplicate_seen("alice", "", "<1@x>") is True
    backend.clock.now += 101
    assert store.duplicate_seen("alice", "", "<1@x>") is False


def test_a_remembered_id_keeps_its_expiry_unless_refreshed(backend) -> None:  # noqa: F811
    """RFC 7352 §3.1: without :last the first occurrence counts; :last restarts the period."""
    store = backend.open()
    first = DuplicateRecord(handle="h", id="x", period=100)
    store.deliver_routed("alice", INBOX, [routed("u1", msg(1), duplicates=(first,))])
    backend.clock.now += 60
    store.deliver_routed("alice", INBOX, [routed("u2", msg(2), duplicates=(first,))])
    backend.clock.now += 60  # 120 s after the first: expired, not extended
    assert store.duplicate_seen("alice", "h", "x") is False
    last = DuplicateRecord(handle="h", id="y", period=100, refresh=True)
    store.deliver_routed("alice", INBOX, [routed("u3", msg(3), duplicates=(last,))])
    backend.clock.now += 60
    store.deliver_routed("alice", INBOX, [routed("u4", msg(4), duplicates=(last,))])
    backend.clock.now += 60
    assert store.duplicate_seen("alice", "h", "y") is True


def test_nothing_is_recorded_when_the_delivery_fails(store) -> None:
    mark = DuplicateRecord(handle="", id="<big>", period=100)
    with pytest.raises(MessageTooLarge):
        store.deliver_routed(
            "alice", INBOX, [routed("u1", b"x" * (SMALL_LIMIT + 1), duplicates=(mark,))]
        )
    assert store.duplicate_seen("alice", "", "<big>") is False


def test_migration_to_the_sieve_tables_keeps_the_mail_of_version_3(tmp_path: Path) -> None:
    """An existing version-3 file (households) opens, gains the known-source (v4) and Sieve
    (v5) tables, keeps its data."""
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:3])
    assert schema_version(conn) == 3
    conn.execute(
        "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
        " VALUES ('isp', 'u1', NULL, 'skipped', 'too large', 1.0, 5)"
    )
    conn.close()
    store = SQLiteStore(path)
    try:
        assert schema_version(store.db) == SCHEMA_VERSION
        assert [e.uidl for e in store.ledger_entries("isp")] == ["u1"]
        store.put_script("alice", "main", "keep;")
        store.set_active("alice", "main")
        assert store.active_script("alice") is not None
        store.deliver_routed(
            "alice",
            INBOX,
            [routed("u2", msg(2), duplicates=(DuplicateRecord("", "<2@x>", 60),))],
        )
        assert store.duplicate_seen("alice", "", "<2@x>")
    finally:
        store.close()
