"""Store contract for shared mailboxes: private \\Seen per viewer, shared everything else.

Runs against both backends (the ``backend``/``store`` fixtures of test_store_contract).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.criteria import Flag, ModSeq
from gateway.store.interfaces import INBOX, Delivery, NewMessage, Store
from gateway.store.schema import SCHEMA_VERSION
from tests.test_store_contract import BACKENDS, Backend, make_message

FAMILY = "shared:family"


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = Backend(BACKENDS[request.param], tmp_path)
    opened = backend.open()
    opened.ensure_user("alice")
    yield opened
    backend.close_all()


def shared_inbox(store: Store, n: int = 3) -> int:
    """The family's INBOX with ``n`` delivered messages (as the fetcher stores them)."""
    store.ensure_user(FAMILY)
    for i in range(n):
        store.deliver(FAMILY, INBOX, Delivery("up", f"u{i}", make_message(subject=f"m{i}")))
    return store.get_mailbox(FAMILY, INBOX).id


def seen_uids(store: Store, mailbox_id: int, viewer: str | None) -> set[int]:
    return {r.uid for r in store.message_rows(mailbox_id, viewer=viewer) if "\\Seen" in r.flags}


def test_shared_tree_is_provisioned_with_inbox_only(store: Store) -> None:
    """A shared owner gets INBOX and none of a person's default folders."""
    store.ensure_user(FAMILY)
    assert [m.name for m in store.list_mailboxes(FAMILY)] == [INBOX]


def test_seen_is_private_to_each_viewer(store: Store) -> None:
    """alice reading a shared message does not make it read for bob."""
    box = shared_inbox(store)
    result = store.store_flags(box, [1, 2], "+", ["\\Seen"], viewer="alice")
    assert [r.uid for r in result.updated] == [1, 2]
    assert all("\\Seen" in r.flags for r in result.updated)
    assert seen_uids(store, box, "alice") == {1, 2}
    assert seen_uids(store, box, "bob") == set()
    assert seen_uids(store, box, None) == set()
    assert store.counts(box, viewer="alice").unseen == 1
    assert store.counts(box, viewer="bob").unseen == 3


def test_selection_summary_first_unseen_follows_the_viewer(store: Store) -> None:
    """SELECT's UNSEEN is the viewer's own: alice having read message 1 moves her first
    unseen message on, not bob's."""
    box = shared_inbox(store)
    store.store_flags(box, [1], "+", ["\\Seen"], viewer="alice")
    assert store.selection_summary(box, viewer="alice").first_unseen_uid == 2
    assert store.selection_summary(box, viewer="bob").first_unseen_uid == 1


def test_other_flags_are_shared(store: Store) -> None:
    """\\Flagged and \\Deleted set by bob are seen by alice; EXPUNGE removes for all."""
    box = shared_inbox(store)
    store.store_flags(box, [2], "+", ["\\Flagged", "\\Deleted", "\\Seen"], viewer="bob")
    alice = {r.uid: r.flags for r in store.message_rows(box, viewer="alice")}
    assert alice[2] >= {"\\Flagged", "\\Deleted"} and "\\Seen" not in alice[2]
    assert store.expunge(box) == [2]
    assert [r.uid for r in store.message_rows(box, viewer="alice")] == [1, 3]


def test_private_change_is_visible_only_in_its_viewers_changes(store: Store) -> None:
    """CONDSTORE per member: alice's \\Seen has a modseq for alice, none for bob."""
    box = shared_inbox(store)
    before = store.counts(box).highestmodseq
    result = store.store_flags(box, [1], "+", ["\\Seen"], viewer="alice")
    modseq = result.updated[0].modseq
    assert modseq > before
    alice = store.changes_since(box, before, viewer="alice")
    bob = store.changes_since(box, before, viewer="bob")
    assert [(r.uid, r.modseq) for r in alice.changed] == [(1, modseq)]
    assert bob.changed == []
    assert alice.highestmodseq == bob.highestmodseq >= modseq
    assert store.search(box, ModSeq(modseq), viewer="alice") == [1]
    assert store.search(box, ModSeq(modseq), viewer="bob") == []


def test_shared_change_reaches_every_viewer(store: Store) -> None:
    box = shared_inbox(store)
    before = store.counts(box).highestmodseq
    store.store_flags(box, [3], "+", ["\\Answered"], viewer="alice")
    assert [r.uid for r in store.changes_since(box, before, viewer="bob").changed] == [3]


def test_search_seen_and_unseen_follow_the_viewer(store: Store) -> None:
    box = shared_inbox(store)
    store.store_flags(box, [1, 3], "+", ["\\Seen"], viewer="bob")
    assert store.search(box, Flag("\\Seen", True), viewer="bob") == [1, 3]
    assert store.search(box, Flag("\\Seen", False), viewer="bob") == [2]
    assert store.search(box, Flag("\\Seen", False), viewer="alice") == [1, 2, 3]


def test_unchangedsince_compares_the_viewers_modseq(store: Store) -> None:
    """RFC 7162 §3.1.3 per member: bob's own \\Seen makes his UNCHANGEDSINCE fail, alice's not."""
    box = shared_inbox(store)
    start = store.counts(box).highestmodseq
    store.store_flags(box, [1], "+", ["\\Seen"], viewer="bob")
    refused = store.store_flags(box, [1], "+", ["$Work"], unchangedsince=start, viewer="bob")
    assert refused.modified == [1] and refused.updated == []
    allowed = store.store_flags(box, [1], "+", ["$Work"], unchangedsince=start, viewer="alice")
    assert allowed.modified == [] and [r.uid for r in allowed.updated] == [1]


def test_replace_mode_keeps_private_and_shared_parts_apart(store: Store) -> None:
    box = shared_inbox(store, 1)
    store.store_flags(box, [1], "+", ["\\Seen", "\\Flagged"], viewer="alice")
    store.store_flags(box, [1], "", ["\\Seen"], viewer="bob")  # bob: only \Seen, no \Flagged
    assert store.message_rows(box, viewer="alice")[0].flags == {"\\Seen", "\\Recent"}
    assert store.message_rows(box, viewer="bob")[0].flags == {"\\Seen", "\\Recent"}
    store.store_flags(box, [1], "-", ["\\Seen"], viewer="alice")
    assert store.message_rows(box, viewer="alice")[0].flags == {"\\Recent"}
    assert "\\Seen" in store.message_rows(box, viewer="bob")[0].flags


def test_append_and_copy_into_shared_make_seen_the_viewers_own(store: Store) -> None:
    box = shared_inbox(store, 0)
    (uid,) = store.append_many(box, [NewMessage(make_message(), ("\\Seen",))], viewer="alice")
    assert seen_uids(store, box, "alice") == {uid}
    assert seen_uids(store, box, "bob") == set()
    private = store.get_mailbox("alice", INBOX).id
    store.append(private, make_message(), ["\\Seen"])
    ((_, copied),) = store.copy(private, [1], box, viewer="alice")
    assert copied in seen_uids(store, box, "alice")
    assert copied not in seen_uids(store, box, "bob")


def test_copy_out_of_shared_carries_the_viewers_flags(store: Store) -> None:
    box = shared_inbox(store, 2)
    store.store_flags(box, [2], "+", ["\\Seen"], viewer="alice")
    private = store.create_mailbox("alice", "Kept").id
    pairs = store.copy(box, [1, 2], private, move=True, viewer="alice")
    assert [p[0] for p in pairs] == [1, 2]
    flags = {r.uid: r.flags for r in store.message_rows(private)}
    assert "\\Seen" not in flags[pairs[0][1]] and "\\Seen" in flags[pairs[1][1]]
    assert store.message_rows(box, viewer="bob") == []


def test_viewer_changes_nothing_in_a_private_mailbox(store: Store) -> None:
    private = store.get_mailbox("alice", INBOX).id
    store.append(private, make_message())
    store.store_flags(private, [1], "+", ["\\Seen"], viewer="bob")
    assert "\\Seen" in store.message_rows(private)[0].flags
    assert store.counts(private, viewer="carol").unseen == 0


def test_message_info_shows_the_viewers_flags(store: Store) -> None:
    box = shared_inbox(store, 2)
    store.store_flags(box, [1], "+", ["\\Seen"], viewer="alice")
    assert "\\Seen" in store.message_info(box, [1], viewer="alice")[0].flags
    assert "\\Seen" not in store.message_info(box, [1], viewer="bob")[0].flags
    assert "\\Seen" in store.message_summaries(box, [1], viewer="alice")[0].flags
    assert "\\Seen" not in store.message_summaries(box, [1], viewer="bob")[0].flags
    for viewer, seen in (("alice", True), ("bob", False), ("alice", True)):  # kept fields too
        (head,) = store.message_header_fields(box, [1], ("SUBJECT",), viewer=viewer)
        assert ("\\Seen" in head.flags) is seen
        assert head.fields == b"Subject: m0\r\n\r\n"
    for uids in ([1], [1, 2]):  # one UID and several take different statements
        for viewer, seen in (("alice", True), ("bob", False)):
            infos, bodies = store.message_info_with_bytes(box, uids, 1, viewer=viewer)
            assert infos == store.message_info(box, uids, viewer=viewer)
            assert ("\\Seen" in infos[0].flags) is seen
            assert bodies == {1: store.message_bytes(box, 1)}


def test_expunged_rows_take_their_private_flags_along(store: Store) -> None:
    """A reused-looking UID can never inherit someone's \\Seen (UIDs are not reused, but
    the private rows must not outlive their message either)."""
    box = shared_inbox(store, 1)
    store.store_flags(box, [1], "+", ["\\Seen", "\\Deleted"], viewer="alice")
    store.expunge(box)
    store.deliver(FAMILY, INBOX, Delivery("up", "later", make_message()))
    assert seen_uids(store, box, "alice") == set()


def test_sqlite_migration_adds_private_flag_table(tmp_path: Path) -> None:
    from gateway.store.sqlite import SQLiteStore

    SQLiteStore(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
        conn.execute("SELECT mailbox_id, user, uid, seen, modseq FROM private_flag")
    finally:
        conn.close()


@pytest.mark.parametrize("flag", ["\\Seen", "\\seen"])
def test_store_without_viewer_never_writes_seen_into_a_shared_mailbox(
    store: Store, flag: str
) -> None:
    box = shared_inbox(store, 1)
    result = store.store_flags(box, [1], "+", [flag])
    assert result.updated == []
    assert seen_uids(store, box, None) == set()
