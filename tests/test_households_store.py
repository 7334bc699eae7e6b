"""The access wrappers implement the store protocols they wrap, method by method: the
per-user view (:class:`UserStore`) is a MailStore and the quota guard a Ledger, with no
pass-through of anything else."""

from __future__ import annotations

import pytest

from gateway.access.households import Households, UserStore
from gateway.access.quota import DeliveryQuotaGuard, Quotas
from gateway.store.interfaces import (
    INBOX,
    ChangeNotifier,
    Delivery,
    Ledger,
    MailboxNotFound,
    MailStore,
    NewMessage,
)
from gateway.store.memory import MemoryStore

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def test_user_store_is_a_mail_store_and_nothing_more() -> None:
    view = UserStore(MemoryStore(), "alice", Households({"family": ["alice"]}))
    assert isinstance(view, MailStore)
    assert not isinstance(view, Ledger)  # the fetcher's, not a session's
    assert not isinstance(view, ChangeNotifier)  # the server's
    assert not hasattr(UserStore, "__getattr__")


def test_user_store_views_as_its_user_only() -> None:
    """``viewer`` may be omitted or be the session's user; another user's view of a
    shared mailbox is not reachable through it."""
    store = MemoryStore()
    view = UserStore(store, "alice", Households({"family": ["alice", "bob"]}))
    view.ensure_user("alice")
    shared = view.get_mailbox("alice", "Shared/family").id
    (uid,) = view.append_many(shared, [NewMessage(MESSAGE, ("\\Seen",))])
    assert view.message_rows(shared)[0].flags >= {"\\Seen"}
    assert view.message_rows(shared, viewer="alice") == view.message_rows(shared)
    # \Seen is alice's own: bob, through the raw store, has not read it.
    assert "\\Seen" not in store.message_rows(shared, viewer="bob")[0].flags
    with pytest.raises(MailboxNotFound):
        view.message_rows(shared, viewer="bob")
    with pytest.raises(MailboxNotFound):
        view.store_flags(shared, [uid], "+", ["\\Seen"], viewer="bob")


def test_user_store_passes_unchanged_methods_through() -> None:
    store = MemoryStore()
    view = UserStore(store, "alice", Households())
    view.ensure_user("alice")
    box = view.get_mailbox("alice", INBOX).id
    uid = view.append(box, MESSAGE, ["\\Deleted"])
    assert list(view.message_uids(box)) == [uid]
    assert view.message_bytes(box, uid) == MESSAGE
    assert view.message_bytes_batch(box, [uid]) == {uid: MESSAGE}
    view.clear_recent(box, [uid])
    assert store.selection_summary(box).recent.tolist() == []
    assert view.expunge(box) == [uid]


def test_delivery_guard_is_a_ledger_and_runs_where_its_store_runs() -> None:
    store = MemoryStore()
    guard = DeliveryQuotaGuard(store, Quotas({"alice": 10_000}))
    assert isinstance(guard, Ledger)
    assert not hasattr(DeliveryQuotaGuard, "__getattr__")
    assert guard.runs_inline is store.runs_inline is True
    assert guard.deliver("alice", INBOX, Delivery("isp", "1", MESSAGE)) == 1
    guard.record_skipped("isp", "2", "too large")
    assert guard.record_imported("isp", ["3"], "from fetchmail") == 1
    assert guard.known_uidls("isp") == {"1", "2", "3"}
    guard.forget_uidls("isp", ["3"])
    assert [(e.uidl, e.state) for e in guard.ledger_entries("isp")] == [
        ("1", "delivered"),
        ("2", "skipped"),
    ]
