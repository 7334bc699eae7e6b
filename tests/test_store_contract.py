"""The storage contract (gateway/store/interfaces.py), written once and run against every backend.

Each test receives a ``store`` opened by a backend from :data:`BACKENDS` on a fresh
directory; backends that persist are also reopened to prove durability. Search is
checked against a brute-force Python evaluation of the same criteria tree
(:func:`reference_search`), over a fixed varied mailbox and over small random ones.
"""

from __future__ import annotations

import datetime
import functools
import mmap
import random
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.criteria import (
    All,
    And,
    Criteria,
    Date,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    Seq,
    SeqRange,
    SequenceSet,
    Size,
    Text,
    Uid,
)
from gateway.message.analysis import analyze
from gateway.message.sections import section
from gateway.store.interfaces import (
    INBOX,
    ChangeNotifier,
    Delivery,
    Ledger,
    Mailboxes,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MailStore,
    Messages,
    MessageSummary,
    MessageTooLarge,
    NewMessage,
    SearchTooComplex,
    SelectionSummary,
    Store,
    StoreError,
    Subscriptions,
)
from gateway.store.memory import MemoryState, MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.rules import MAX_MAILBOX_DEPTH, MAX_MAILBOX_NAME_LENGTH, leading_uids
from gateway.store.search import MAX_SEARCH_DEPTH, MAX_SEARCH_NODES
from gateway.store.sqlite import SQLiteStore
from gateway.testing.messages import message
from gateway.testing.postgres import acquire_schema, release_schema, shared_server

START = 1_700_000_000.0  # the fake clock's first reading (2023-11-14)
SMALL_LIMIT = 4096  # max_message_size given to every store under test


class FakeClock:
    """A settable clock, so dates and ledger times are predictable."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Opener = Callable[[Path, FakeClock], Store]

_MEMORY_STATES: dict[Path, MemoryState] = {}


_PG_SCHEMAS: dict[Path, str] = {}


def forget_memory(directory: Path) -> None:
    """Drop what a backend keeps for ``directory`` beyond the store itself: the memory
    store's state, the PostgreSQL schema (emptied and reused by a later test)."""
    _MEMORY_STATES.pop(directory, None)
    schema = _PG_SCHEMAS.pop(directory, None)
    if schema is not None:
        release_schema(shared_server(), schema)


def open_memory(directory: Path, clock: FakeClock) -> Store:
    """A memory store whose state is kept per directory, so "reopening" finds it again."""
    state = _MEMORY_STATES.setdefault(directory, MemoryState())
    return MemoryStore(max_message_size=SMALL_LIMIT, clock=clock, state=state)


def open_postgresql(directory: Path, clock: FakeClock) -> Store:
    """A PostgreSQL store in a schema of the shared test server, one schema per
    directory, so "reopening" finds the same data (gateway/testing/postgres.py)."""
    server = shared_server()
    schema = _PG_SCHEMAS.get(directory)
    if schema is None:
        schema = _PG_SCHEMAS[directory] = acquire_schema(server)
    return PostgresStore(
        server.dsn,
        password=server.password,
        schema=schema,
        pool_size=4,
        max_message_size=SMALL_LIMIT,
        clock=clock,
    )


BACKENDS: dict[str, Opener] = {
    "sqlite": lambda directory, clock: SQLiteStore(
        directory / "store.db", max_message_size=SMALL_LIMIT, clock=clock
    ),
    "memory": open_memory,
    "postgresql": open_postgresql,
}
"""Every backend the contract is run on; a new backend is one line here: its name and a
function opening it in a directory with the test clock and ``SMALL_LIMIT``."""


class Backend:
    """Opens stores of one kind in one directory and closes all of them at the end."""

    def __init__(self, opener: Opener, directory: Path) -> None:
        self.opener = opener
        self.directory = directory
        self.clock = FakeClock()
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = self.opener(self.directory, self.clock)
        self.opened.append(store)
        return store

    def reopen(self, store: Store) -> Store:
        store.close()
        return self.open()

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        forget_memory(self.directory)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(BACKENDS[request.param], tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.ensure_user("alice")
    return s


def test_backend_has_every_protocol_of_the_contract(store: Store) -> None:
    """Each small protocol is there by name (the rest of the suite checks behaviour), and
    the backend says where its calls may run (gateway/store/runner.py)."""
    for protocol in (Mailboxes, Subscriptions, Messages, MailStore, Ledger, ChangeNotifier):
        assert isinstance(store, protocol), protocol.__name__
    assert isinstance(store, Store)
    assert isinstance(store.runs_inline, bool)


def inbox(store: Store, user: str = "alice") -> int:
    return store.get_mailbox(user, INBOX).id


make_message = functools.partial(
    message,
    sender="Alice <alice@example.com>",
    to="bob@example.org",
    body="Hi Bob,\r\nsee you.\r\n",
    date="Mon, 07 Feb 1994 21:52:25 -0800",
    message_id=None,
    mime=True,
)
"""The contract's message: MIME text/plain from Alice to Bob (keywords as for ``message``)."""


def add(store: Store, mailbox_id: int, n: int, flags: tuple[str, ...] = ()) -> list[int]:
    return [store.append(mailbox_id, make_message(subject=f"m{i}"), flags) for i in range(n)]


def uids(store: Store, mailbox_id: int) -> list[int]:
    return [r.uid for r in store.message_rows(mailbox_id)]


def flags_of(store: Store, mailbox_id: int) -> dict[int, frozenset[str]]:
    return {r.uid: r.flags for r in store.message_rows(mailbox_id)}


# ---- users and mailboxes ----------------------------------------------------------


def test_ensure_user_creates_inbox_and_subscribed_special_use_folders(store: Store) -> None:
    boxes = {m.name: m for m in store.list_mailboxes("alice")}
    assert set(boxes) == {INBOX, "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert boxes[INBOX].special_use is None
    assert {n: boxes[n].special_use for n in ("Sent", "Drafts", "Trash", "Junk", "Archive")} == {
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }
    assert all(m.subscribed for m in boxes.values())
    assert set(store.subscriptions("alice")) == set(boxes)
    assert all(m.uidnext == 1 and m.owner == "alice" for m in boxes.values())


def test_ensure_user_is_idempotent(store: Store) -> None:
    before = store.list_mailboxes("alice")
    store.ensure_user("alice")
    assert store.list_mailboxes("alice") == before


def test_ensure_user_does_not_bring_back_a_deleted_default_folder(store: Store) -> None:
    store.delete_mailbox("alice", "Junk")
    store.ensure_user("alice")
    assert "Junk" not in {m.name for m in store.list_mailboxes("alice")}


def test_list_mailboxes_puts_inbox_first_then_sorts_by_name(store: Store) -> None:
    store.create_mailbox("alice", "Aardvark")
    names = [m.name for m in store.list_mailboxes("alice")]
    assert names[0] == INBOX
    assert names[1:] == sorted(names[1:])


def test_mailboxes_belong_to_their_owner(store: Store) -> None:
    store.create_mailbox("alice", "Private")
    store.ensure_user("bob")
    assert "Private" not in {m.name for m in store.list_mailboxes("bob")}
    with pytest.raises(MailboxNotFound):
        store.get_mailbox("bob", "Private")
    assert inbox(store, "bob") != inbox(store, "alice")


def test_get_mailbox_of_missing_name_raises_not_found(store: Store) -> None:
    with pytest.raises(MailboxNotFound):
        store.get_mailbox("alice", "Nope")
    with pytest.raises(MailboxNotFound):
        store.get_mailbox("nobody", INBOX)


def test_create_mailbox_creates_missing_parents(store: Store) -> None:
    """RFC 3501 §6.3.3: superior hierarchical names are created as needed."""
    created = store.create_mailbox("alice", "a/b/c")
    assert created.name == "a/b/c" and created.uidnext == 1 and created.highestmodseq >= 1
    for name in ("a", "a/b", "a/b/c"):
        assert store.get_mailbox("alice", name).name == name
    # A parent that exists is left alone.
    before = store.get_mailbox("alice", "a")
    store.create_mailbox("alice", "a/d")
    assert store.get_mailbox("alice", "a") == before


def test_create_existing_mailbox_raises_exists(store: Store) -> None:
    store.create_mailbox("alice", "Work")
    with pytest.raises(MailboxExists):
        store.create_mailbox("alice", "Work")
    with pytest.raises(MailboxExists):
        store.create_mailbox("alice", "Sent")


@pytest.mark.parametrize("name", [INBOX, "inbox", "Inbox"])
def test_create_inbox_in_any_case_raises_exists(store: Store, name: str) -> None:
    with pytest.raises(MailboxExists):
        store.create_mailbox("alice", name)


def test_inbox_is_case_insensitive_also_as_a_parent(store: Store) -> None:
    """RFC 3501 §5.1: "inbox/x" lives under INBOX; no second inbox appears."""
    assert store.get_mailbox("alice", "Inbox").id == inbox(store)
    assert store.create_mailbox("alice", "inbox/child").name == "INBOX/child"
    assert [m.name for m in store.list_mailboxes("alice")].count(INBOX) == 1
    assert not any(
        m.name.lower() == "inbox" and m.name != INBOX for m in store.list_mailboxes("alice")
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a//b",
        "/a",
        "a/",
        "/",
        "a\x00b",
        "a\rb",
        "a\nb",
        "x" * (MAX_MAILBOX_NAME_LENGTH + 1),
        "/".join(["d"] * (MAX_MAILBOX_DEPTH + 1)),
        # Format and bidi controls (Unicode Cf) and line/paragraph separators: invisible,
        # or reordering what a user sees (U+202E shows "evil\u202etxt.exe" as
        # "evilexe.txt"); refused like the C0 controls (issue 20, item 15).
        "evil\u202etxt.exe",
        "a\u200eb",
        "a\u200fb",
        "a\u2066b\u2069",
        "a\u2067b",
        "a\u2068b",
        "a\u061cb",
        "a\u2028b",
        "a\u2029b",
        "\ufeffInbox",
        "soft\u00adhyphen",
        "Work/\u202dx",
        "a\ud800b",  # a lone surrogate is no character at all
    ],
)
def test_create_mailbox_refuses_bad_names(store: Store, name: str) -> None:
    before = store.list_mailboxes("alice")
    with pytest.raises(MailboxNotAllowed):
        store.create_mailbox("alice", name)
    assert store.list_mailboxes("alice") == before


@pytest.mark.parametrize(
    "name",
    ["Family \U0001f468\u200d\U0001f469\u200d\U0001f467", "\u0645\u06cc\u200c\u0631\u0648\u0645"],
)
def test_create_mailbox_accepts_joiners_inside_text(store: Store, name: str) -> None:
    """ZWJ and ZWNJ (U+200D, U+200C) are Cf but part of emoji sequences and of words in
    Persian and Indic scripts; they reorder nothing, so names may hold them."""
    assert store.create_mailbox("alice", name).name == name


def test_create_mailbox_accepts_the_longest_allowed_name(store: Store) -> None:
    name = "x" * MAX_MAILBOX_NAME_LENGTH
    assert store.create_mailbox("alice", name).name == name


def test_create_mailbox_accepts_the_deepest_allowed_name(store: Store) -> None:
    name = "/".join(["d"] * MAX_MAILBOX_DEPTH)
    assert store.create_mailbox("alice", name).name == name


def test_create_mailbox_with_special_use(store: Store) -> None:
    """RFC 6154 §3 CREATE-SPECIAL-USE; an unknown attribute is refused."""
    assert store.create_mailbox("alice", "All mail", "\\All").special_use == "\\All"
    assert store.get_mailbox("alice", "All mail").special_use == "\\All"
    with pytest.raises(MailboxNotAllowed):
        store.create_mailbox("alice", "Odd", "\\Bogus")


def test_delete_inbox_is_not_allowed(store: Store) -> None:
    with pytest.raises(MailboxNotAllowed):
        store.delete_mailbox("alice", INBOX)
    assert store.get_mailbox("alice", INBOX)


def test_delete_missing_mailbox_raises_not_found(store: Store) -> None:
    with pytest.raises(MailboxNotFound):
        store.delete_mailbox("alice", "Nope")


def test_delete_removes_mailbox_and_messages_but_keeps_children_and_subscription(
    store: Store,
) -> None:
    parent = store.create_mailbox("alice", "p")
    child = store.create_mailbox("alice", "p/c")
    store.set_subscribed("alice", "p", True)
    add(store, parent.id, 2)
    add(store, child.id, 1)
    store.delete_mailbox("alice", "p")
    with pytest.raises(MailboxNotFound):
        store.get_mailbox("alice", "p")
    with pytest.raises(MailboxNotFound):
        store.message_rows(parent.id)
    assert len(store.message_rows(child.id)) == 1
    assert "p" in store.subscriptions("alice")


def test_recreated_mailbox_gets_new_uidvalidity_and_starts_at_uid_one(store: Store) -> None:
    """RFC 3501 §2.3.1.1: a name reused for a new mailbox must not reuse UIDVALIDITY."""
    first = store.create_mailbox("alice", "Again")
    add(store, first.id, 3)
    store.delete_mailbox("alice", "Again")
    second = store.create_mailbox("alice", "Again")
    assert second.uidvalidity != first.uidvalidity
    assert second.id != first.id
    assert second.uidnext == 1 and store.message_rows(second.id) == []


def test_uidvalidity_is_unique_per_mailbox_and_stable_across_reopen(
    backend: Backend, store: Store
) -> None:
    store.create_mailbox("alice", "x/y")
    store.ensure_user("bob")
    before = {
        (m.owner, m.name): m.uidvalidity for u in ("alice", "bob") for m in store.list_mailboxes(u)
    }
    assert len(set(before.values())) == len(before)
    assert all(0 < v < 2**32 for v in before.values())
    again = backend.reopen(store)
    after = {
        (m.owner, m.name): m.uidvalidity for u in ("alice", "bob") for m in again.list_mailboxes(u)
    }
    assert after == before
    # A mailbox created after reopening still gets a fresh value.
    assert again.create_mailbox("alice", "new").uidvalidity not in before.values()


def test_uidvalidity_is_not_reused_even_if_the_clock_goes_back(
    backend: Backend, store: Store
) -> None:
    seen = {m.uidvalidity for m in store.list_mailboxes("alice")}
    backend.clock.now = START - 10_000
    for i in range(5):
        value = store.create_mailbox("alice", f"back{i}").uidvalidity
        assert value not in seen
        seen.add(value)


def test_rename_keeps_uidvalidity_messages_and_renames_children(store: Store) -> None:
    top = store.create_mailbox("alice", "old")
    kid = store.create_mailbox("alice", "old/kid")
    other = store.create_mailbox("alice", "older")  # shares a prefix, not a child
    add(store, top.id, 2)
    top = store.get_mailbox("alice", "old")
    store.set_subscribed("alice", "old/kid", True)
    store.rename_mailbox("alice", "old", "new/place")
    moved = store.get_mailbox("alice", "new/place")
    assert (moved.id, moved.uidvalidity, moved.uidnext) == (top.id, top.uidvalidity, top.uidnext)
    assert uids(store, moved.id) == [1, 2]
    moved_kid = store.get_mailbox("alice", "new/place/kid")
    assert (moved_kid.id, moved_kid.uidvalidity) == (kid.id, kid.uidvalidity)
    assert store.get_mailbox("alice", "new").name == "new"  # missing parent created
    assert store.get_mailbox("alice", "older") == other
    for gone in ("old", "old/kid"):
        with pytest.raises(MailboxNotFound):
            store.get_mailbox("alice", gone)
    subs = store.subscriptions("alice")
    assert "new/place/kid" in subs and "old/kid" not in subs


def test_rename_does_not_change_other_mailboxes_uidvalidity(store: Store) -> None:
    before = {m.id: m.uidvalidity for m in store.list_mailboxes("alice")}
    store.rename_mailbox("alice", "Junk", "Spam")
    store.rename_mailbox("alice", "Spam", "Junk")
    assert {m.id: m.uidvalidity for m in store.list_mailboxes("alice")} == before


def test_rename_refusals(store: Store) -> None:
    store.create_mailbox("alice", "a/x")
    store.create_mailbox("alice", "b/x")
    store.delete_mailbox("alice", "b")  # b/x remains
    with pytest.raises(MailboxNotFound):
        store.rename_mailbox("alice", "missing", "z")
    with pytest.raises(MailboxExists):
        store.rename_mailbox("alice", "a", "Sent")
    with pytest.raises(MailboxExists):
        store.rename_mailbox("alice", "a", "a")
    with pytest.raises(MailboxExists):
        store.rename_mailbox("alice", "a", INBOX)
    with pytest.raises(MailboxExists):  # a/x would land on the existing b/x
        store.rename_mailbox("alice", "a", "b")
    with pytest.raises(MailboxNotAllowed):
        store.rename_mailbox("alice", "a", "a/x/y")
    with pytest.raises(MailboxNotAllowed):
        store.rename_mailbox("alice", "a", "bad//name")
    with pytest.raises(MailboxNotAllowed):
        store.rename_mailbox("alice", "a", "evil\u202etxt.exe")
    assert store.get_mailbox("alice", "a/x").name == "a/x"
    with pytest.raises(MailboxNotFound):
        store.get_mailbox("alice", "b")


def test_rename_inbox_moves_messages_to_a_new_mailbox_and_leaves_inbox_empty(
    store: Store,
) -> None:
    """RFC 3501 §6.3.5: INBOX's messages move, INBOX stays (empty), its children stay."""
    box = inbox(store)
    child = store.create_mailbox("alice", "INBOX/kid")
    first = add(store, box, 3, ("\\Seen",))
    store.store_flags(box, [first[1]], "+", ["urgent"])
    store.expunge(box)  # nothing deleted: no change
    before = store.get_mailbox("alice", INBOX)
    raws = [store.message_bytes(box, u) for u in first]
    store.rename_mailbox("alice", INBOX, "Old/Mail")
    after = store.get_mailbox("alice", INBOX)
    assert store.message_rows(box) == []
    assert (after.id, after.uidvalidity, after.uidnext) == (box, before.uidvalidity, 4)
    assert after.highestmodseq > before.highestmodseq
    assert store.changes_since(box, before.highestmodseq).expunged == first
    new = store.get_mailbox("alice", "Old/Mail")
    assert new.uidvalidity not in {
        m.uidvalidity for m in store.list_mailboxes("alice") if m.id != new.id
    }
    rows = store.message_rows(new.id)
    assert [r.uid for r in rows] == [1, 2, 3]
    assert [r.flags - {"\\Recent"} for r in rows] == [
        frozenset({"\\Seen"}),
        frozenset({"\\Seen", "urgent"}),
        frozenset({"\\Seen"}),
    ]
    assert [store.message_bytes(new.id, u) for u in (1, 2, 3)] == raws
    assert store.get_mailbox("alice", "INBOX/kid") == child
    assert store.get_mailbox("alice", "Old").name == "Old"


def test_rename_empty_inbox_creates_empty_mailbox(store: Store) -> None:
    store.rename_mailbox("alice", INBOX, "Copy")
    assert store.message_rows(store.get_mailbox("alice", "Copy").id) == []
    assert store.message_rows(inbox(store)) == []


def test_subscriptions_are_independent_of_mailbox_existence(store: Store) -> None:
    """RFC 3501 §6.3.6/§6.3.7: LSUB may list names that no longer exist."""
    store.set_subscribed("alice", "ghost", True)
    store.set_subscribed("alice", "ghost", True)
    assert store.subscriptions("alice").count("ghost") == 1
    assert store.subscriptions("alice") == sorted(store.subscriptions("alice"))
    store.set_subscribed("alice", "Trash", False)
    store.set_subscribed("alice", "Trash", False)
    assert "Trash" not in store.subscriptions("alice")
    assert store.get_mailbox("alice", "Trash").subscribed is False
    assert store.get_mailbox("alice", "Sent").subscribed is True
    assert store.subscriptions("bob") == []


# ---- messages ----------------------------------------------------------------------


def test_append_assigns_increasing_uids_and_keeps_bytes_exactly(store: Store) -> None:
    box = inbox(store)
    raws = [make_message(subject=f"s{i}", body=f"line {i}\r\n\r\n \r\n") for i in range(3)]
    raws.append(b"no header at all, no CRLF")
    got = [store.append(box, raw) for raw in raws]
    assert got == [1, 2, 3, 4]
    assert [store.message_bytes(box, u) for u in got] == raws
    assert store.get_mailbox("alice", INBOX).uidnext == 5


def test_append_internaldate_keeps_instant_and_offset(store: Store) -> None:
    box = inbox(store)
    zone = datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))
    when = datetime.datetime(2020, 2, 29, 23, 59, 58, tzinfo=zone)
    uid = store.append(box, make_message(), internaldate=when)
    (info,) = store.message_info(box, [uid])
    assert info.internaldate == when
    assert info.internaldate.utcoffset() == zone.utcoffset(None)


def test_append_without_internaldate_uses_the_clock(backend: Backend, store: Store) -> None:
    backend.clock.now = START + 12345
    uid = store.append(inbox(store), make_message())
    (info,) = store.message_info(inbox(store), [uid])
    assert info.internaldate.tzinfo is not None
    assert info.internaldate.timestamp() == START + 12345


def test_append_normalises_flags(store: Store) -> None:
    """System flags get canonical case; \\Recent cannot be set (RFC 3501 §2.3.2); keywords
    are deduplicated case-insensitively, keeping the first spelling."""
    box = inbox(store)
    uid = store.append(box, make_message(), ["\\seen", "\\FLAGGED", "\\Recent", "Work", "work"])
    assert flags_of(store, box)[uid] == {"\\Seen", "\\Flagged", "Work", "\\Recent"}


@pytest.mark.parametrize("flag", ["", "two words", "\\", "paren(", "x\x00", 'quote"', "br]"])
def test_append_refuses_invalid_flags(store: Store, flag: str) -> None:
    with pytest.raises(ValueError):
        store.append(inbox(store), make_message(), [flag])
    assert store.message_rows(inbox(store)) == []


def test_append_to_missing_mailbox_raises_not_found(store: Store) -> None:
    box = store.create_mailbox("alice", "tmp")
    store.delete_mailbox("alice", "tmp")
    with pytest.raises(MailboxNotFound):
        store.append(box.id, make_message())


def test_append_over_the_size_limit_raises_and_writes_nothing(store: Store) -> None:
    box = inbox(store)
    before = store.counts(box)
    with pytest.raises(MessageTooLarge):
        store.append(box, make_message(body="x" * SMALL_LIMIT))
    assert store.counts(box) == before
    exact = make_message(body="")
    exact += b"y" * (SMALL_LIMIT - len(exact))
    assert store.append(box, exact) == 1


def test_append_many_adds_all_with_consecutive_uids_in_one_change(store: Store) -> None:
    """RFC 3502 MULTIAPPEND: the messages get consecutive UIDs in the given order, their
    own flags and dates, one modseq, and listeners hear of the mailbox once."""
    box = inbox(store)
    store.append(box, make_message(subject="first"))
    before = store.counts(box).highestmodseq
    heard: list[int] = []
    store.add_listener(heard.append)
    when = datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    raws = [make_message(subject=f"multi {i}") for i in range(3)]
    got = store.append_many(
        box,
        [
            NewMessage(raws[0]),
            NewMessage(raws[1], ("\\Seen", "$Work"), when),
            NewMessage(raws[2], ("\\flagged",)),
        ],
    )
    assert got == [2, 3, 4]
    assert heard == [box]
    assert [store.message_bytes(box, u) for u in got] == raws
    rows = {r.uid: r for r in store.message_rows(box)}
    assert rows[3].flags == {"\\Seen", "$Work", "\\Recent"}
    assert rows[4].flags == {"\\Flagged", "\\Recent"}
    assert {rows[u].modseq for u in got} == {before + 1}
    assert store.counts(box).highestmodseq == before + 1
    (info,) = store.message_info(box, [3])
    assert info.internaldate == when
    assert store.append_many(box, []) == []


def test_append_many_is_all_or_nothing(store: Store) -> None:
    """RFC 3502 §6.3.11: when one message is refused, none is stored: no rows, no UIDs
    used up, no modseq, no listener call."""
    box = inbox(store)
    before = store.get_mailbox("alice", INBOX)
    heard: list[int] = []
    store.add_listener(heard.append)
    good = NewMessage(make_message())
    with pytest.raises(MessageTooLarge):
        store.append_many(box, [good, NewMessage(make_message(body="x" * SMALL_LIMIT))])
    with pytest.raises(ValueError):
        store.append_many(box, [good, NewMessage(make_message(), ("bad flag",))])
    after = store.get_mailbox("alice", INBOX)
    assert store.message_rows(box) == []
    assert (after.uidnext, after.highestmodseq) == (before.uidnext, before.highestmodseq)
    assert heard == []
    assert store.append_many(box, [good, good]) == [1, 2]


def _mapped(directory: Path, data: bytes) -> mmap.mmap:
    """A read-only map of a file holding ``data``, as the IMAP server spools a large
    APPEND (gateway/imap/spool.py)."""
    path = directory / f"spool-{len(data)}"
    path.write_bytes(data)
    with path.open("rb") as file:
        return mmap.mmap(file.fileno(), len(data), access=mmap.ACCESS_READ)


def test_append_many_takes_a_map_of_a_spooled_file(store: Store, tmp_path: Path) -> None:
    """Issue 20: ``NewMessage.raw`` may be a read-only ``mmap``; the message is stored
    byte for byte, sized and analysed as from bytes, the size limit still applies, and
    the backend keeps no reference to the map (the caller can close it at once)."""
    box = inbox(store)
    raw = make_message(subject="spooled", body="mapped body " * 40)
    mapped = _mapped(tmp_path, raw)
    (uid,) = store.append_many(box, [NewMessage(mapped, ("\\Seen",))])
    mapped.close()  # BufferError here would mean the store still holds the buffer
    assert store.message_bytes(box, uid) == raw
    (info,) = store.message_info(box, [uid])
    assert info.size == len(raw)
    assert info.bodystructure == analyze(raw).bodystructure
    too_big = _mapped(tmp_path, make_message(body="x" * SMALL_LIMIT))
    with pytest.raises(MessageTooLarge):
        store.append_many(box, [NewMessage(too_big)])
    too_big.close()
    assert [r.uid for r in store.message_rows(box)] == [uid]


def test_append_many_to_missing_mailbox_raises_not_found(store: Store) -> None:
    box = store.create_mailbox("alice", "tmp")
    store.delete_mailbox("alice", "tmp")
    with pytest.raises(MailboxNotFound):
        store.append_many(box.id, [NewMessage(make_message())])


def test_uids_are_never_reused_after_expunge_or_reopen(backend: Backend, store: Store) -> None:
    box = inbox(store)
    add(store, box, 3, ("\\Deleted",))
    assert store.expunge(box) == [1, 2, 3]
    assert store.append(box, make_message()) == 4
    store.store_flags(box, [4], "+", ["\\Deleted"])
    store.expunge(box)
    store = backend.reopen(store)
    assert store.get_mailbox("alice", INBOX).uidnext == 5
    assert store.append(box, make_message()) == 5


def test_highestmodseq_increases_with_every_change_and_only_then(store: Store) -> None:
    box = inbox(store)
    other = store.create_mailbox("alice", "other").id
    seen = [store.counts(box).highestmodseq]

    def changed() -> None:
        value = store.counts(box).highestmodseq
        assert value > seen[-1]
        seen.append(value)

    def unchanged() -> None:
        assert store.counts(box).highestmodseq == seen[-1]

    add(store, box, 3)
    changed()
    store.store_flags(box, [1, 2], "+", ["\\Seen"])
    changed()
    store.store_flags(box, [1, 2], "+", ["\\Seen"])  # no-op
    unchanged()
    store.clear_recent(box, [1, 2, 3])
    unchanged()
    store.message_rows(box)
    store.search(box, All())
    unchanged()
    store.store_flags(box, [3], "+", ["\\Deleted"])
    changed()
    store.expunge(box)
    changed()
    store.expunge(box)  # nothing to expunge
    unchanged()
    store.copy(box, [1], other)
    unchanged()
    store.copy(other, [1], box)
    changed()
    store.copy(box, [1], other, move=True)
    changed()


def test_message_rows_are_ascending_and_show_recent_until_cleared(store: Store) -> None:
    box = inbox(store)
    add(store, box, 4, ("\\Seen",))
    rows = store.message_rows(box)
    assert [r.uid for r in rows] == [1, 2, 3, 4]
    assert all(r.flags == {"\\Seen", "\\Recent"} for r in rows)
    assert store.counts(box).recent == 4
    # The claim returns what it took (RFC 3501 §2.3.2: one session's \\Recent); asking
    # again, as a second session that read the same rows would, takes nothing.
    assert store.clear_recent(box, [3, 2, 99]) == [2, 3]
    assert store.clear_recent(box, [2, 3]) == []
    assert [("\\Recent" in r.flags) for r in store.message_rows(box)] == [True, False, False, True]
    assert store.counts(box).recent == 2
    # Clearing is not a flag change: modseqs stay.
    assert [r.modseq for r in store.message_rows(box)] == [r.modseq for r in rows]


def test_append_claiming_recent_stores_no_recent_and_changes_nothing_else(store: Store) -> None:
    """``append_many(claim_recent=True)`` (the appending session takes \\Recent in the
    APPEND's own transaction, RFC 3501 §2.3.2): the rows are what an APPEND followed by
    that session's ``clear_recent`` leaves, so no other session sees them as recent and
    nothing is left to claim; UIDs, modseq, flags and the change log are as without it.
    One message (PostgreSQL's one-statement path) and several (the shared algorithm)."""
    box = inbox(store)
    add(store, box, 1)
    before = store.changes_since(box, 0).highestmodseq
    one = store.append_many(
        box, [NewMessage(b"Subject: a\r\n\r\nx\r\n", ("$A",))], claim_recent=True
    )
    two = store.append_many(
        box,
        [NewMessage(b"Subject: b\r\n\r\nx\r\n"), NewMessage(b"Subject: c\r\n\r\nx\r\n")],
        claim_recent=True,
    )
    assert one == [2] and two == [3, 4]
    rows = store.message_rows(box)
    assert [r.flags for r in rows] == [{"\\Recent"}, {"$A"}, set(), set()]
    assert [r.modseq for r in rows[1:]] == [before + 1, before + 2, before + 2]
    assert store.counts(box).recent == 1
    assert store.clear_recent(box, [2, 3, 4]) == []
    changes = store.changes_since(box, before)
    assert [(r.uid, r.flags) for r in changes.changed] == [(2, {"$A"}), (3, set()), (4, set())]
    assert changes.highestmodseq == before + 2 and changes.expunged == []
    assert store.selection_summary(box).recent.tolist() == [1]


def test_message_uids_are_the_uid_column_of_message_rows_as_an_array(store: Store) -> None:
    """message_uids gives exactly message_rows' UIDs, ascending, as a compact
    array('I'), and follows expunges."""
    box = inbox(store)
    add(store, box, 5)
    store.store_flags(box, [2, 4], "+", ["\\Deleted"])
    store.expunge(box)
    got = store.message_uids(box)
    assert isinstance(got, array) and got.typecode == "I"
    assert got.tolist() == uids(store, box) == [1, 3, 5]
    with pytest.raises(MailboxNotFound):
        store.message_uids(987654)


def test_selection_summary_matches_what_message_rows_show(store: Store) -> None:
    """The SELECT aggregates agree with a scan of message_rows: \\Recent UIDs, the
    lowest UID without \\Seen, and the keywords in use (system flags excluded)."""
    box = inbox(store)
    add(store, box, 5)
    store.store_flags(box, [1, 2], "+", ["\\Seen", "$Label"])
    store.store_flags(box, [4], "+", ["\\Flagged", "Zeta", "$Label"])
    store.clear_recent(box, [2, 5])
    summary = store.selection_summary(box)
    rows = store.message_rows(box)
    assert summary.recent.tolist() == [r.uid for r in rows if "\\Recent" in r.flags] == [1, 3, 4]
    assert summary.first_unseen_uid == 3
    assert summary.keywords == ("$Label", "Zeta")
    store.store_flags(box, [3, 4, 5], "+", ["\\Seen"])
    store.clear_recent(box, [1, 3, 4])
    summary = store.selection_summary(box)
    assert summary.first_unseen_uid is None and len(summary.recent) == 0
    empty = store.create_mailbox("alice", "Empty").id
    assert store.selection_summary(empty) == SelectionSummary(array("I"), None, ())
    with pytest.raises(MailboxNotFound):
        store.selection_summary(987654)


def test_selection_summary_finds_the_seen_token_only(store: Store) -> None:
    """The first unseen UID looks for the \\Seen flag itself wherever it stands among a
    message's flags, not for keywords that merely look like it (SQLite mode tests the
    flag text with GLOB patterns instead of a padded copy, issue 19)."""
    box = inbox(store)
    for flags in [("\\Seen",), ("$x", "\\Seen"), ("$a", "$b", "\\Seen"), ("\\Seen", "Zed")]:
        add(store, box, 1, flags)
    add(store, box, 1, ("$Seen", "Seen"))
    add(store, box, 1)
    summary = store.selection_summary(box)
    assert summary.first_unseen_uid == 5
    assert summary.keywords == ("$Seen", "$a", "$b", "$x", "Seen", "Zed")
    store.store_flags(box, [5], "+", ["\\Seen"])
    assert store.selection_summary(box).first_unseen_uid == 6
    store.store_flags(box, [6], "+", ["\\Seen"])
    assert store.selection_summary(box).first_unseen_uid is None


def test_flag_sets_follow_every_write(store: Store) -> None:
    """The sets SEARCH UNSEEN/FLAGGED/DELETED and SELECT's summary read (kept by partial
    indexes in SQLite mode, issue 19) agree with message_rows after every kind of write:
    flag changes in all three modes, APPEND with flags, COPY and MOVE in and out,
    EXPUNGE, \\Recent claims, and a keyword dropped from its last message."""
    box = inbox(store)
    other = store.create_mailbox("alice", "Other").id
    rng = random.Random(19)
    choices = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Label1", "Work"]
    add(store, other, 4, ("\\Flagged",))

    def check() -> None:
        rows = store.message_rows(box)
        has = {r.uid: r.flags for r in rows}

        def where(test: Callable[[frozenset[str]], bool]) -> list[int]:
            return [uid for uid, flags in has.items() if test(flags)]

        assert store.search(box, Flag("\\Seen", False)) == where(lambda f: "\\Seen" not in f)
        assert store.search(box, Flag("\\Flagged")) == where(lambda f: "\\Flagged" in f)
        assert store.search(box, Flag("\\Deleted")) == where(lambda f: "\\Deleted" in f)
        summary = store.selection_summary(box)
        assert summary.recent.tolist() == where(lambda f: "\\Recent" in f)
        unseen = where(lambda f: "\\Seen" not in f)
        assert summary.first_unseen_uid == (unseen[0] if unseen else None)
        keywords = {k for f in has.values() for k in f if not k.startswith("\\")}
        assert summary.keywords == tuple(sorted(keywords))

    add(store, box, 12)
    check()
    for step in range(60):
        present = uids(store, box)
        kind = rng.choice(["store", "store", "store", "append", "copy", "move", "expunge"])
        if kind == "store" and present:
            picked = rng.sample(present, rng.randint(1, min(4, len(present))))
            mode = rng.choice(["+", "-", ""])
            store.store_flags(box, picked, mode, rng.sample(choices, rng.randint(1, 3)))
        elif kind == "append":
            add(store, box, 1, tuple(rng.sample(choices, rng.randint(0, 2))))
        elif kind == "copy":
            store.copy(other, uids(store, other)[:2], box)
        elif kind == "move" and present:
            store.copy(box, rng.sample(present, 1), other, move=True)
        elif kind == "expunge":
            store.expunge(box)
        if step % 7 == 0 and present:
            store.clear_recent(box, present[: len(present) // 2])
        check()
    store.store_flags(box, uids(store, box), "-", ["$Label1", "Work"])
    check()
    assert store.selection_summary(box).keywords == ()


def test_message_rows_of_missing_mailbox_raises_not_found(store: Store) -> None:
    with pytest.raises(MailboxNotFound):
        store.message_rows(987654)


def test_message_info_returns_existing_uids_ascending_with_ingest_facts(store: Store) -> None:
    box = inbox(store)
    raw = make_message(subject="Grüße", body="body\r\n")
    add(store, box, 2)
    uid = store.append(box, raw, ["\\Answered"])
    infos = store.message_info(box, [uid, 1, 77, uid, 1])
    assert [i.uid for i in infos] == [1, uid]
    info = infos[1]
    expected = analyze(raw)
    assert (info.envelope, info.bodystructure, info.body, info.parts) == (
        expected.envelope,
        expected.bodystructure,
        expected.body,
        expected.parts,
    )
    assert info.size == len(raw)
    assert info.flags == {"\\Answered", "\\Recent"}
    assert info.modseq == store.message_rows(box)[-1].modseq
    assert store.message_info(box, []) == []


def test_message_summaries_are_message_info_cut_to_the_stored_items(store: Store) -> None:
    """The narrow read FETCH's stored items use (issue 19) answers exactly what
    message_info does for the same UIDs, field for field: existing UIDs ascending, each
    once, whether the set is a contiguous run or not; an unknown mailbox is refused."""
    box = inbox(store)
    add(store, box, 4)
    raw = make_message(subject="Grüße", body="body\r\n")
    store.append(box, raw, ["\\Answered", "$Work"])
    store.store_flags(box, [2], "+", ["\\Seen"])
    store.clear_recent(box, [3])
    for uids in ([5, 1, 77, 5, 1], [1, 2, 3, 4, 5], [2, 3], [4, 9, 2], [], [77]):
        summaries = store.message_summaries(box, uids)
        assert summaries == [
            tuple(getattr(i, name) for name in MessageSummary._fields)
            for i in store.message_info(box, uids)
        ], uids
    (last,) = store.message_summaries(box, [5])
    assert (last.uid, last.flags, last.size) == (5, {"\\Answered", "$Work", "\\Recent"}, len(raw))
    assert (last.envelope, last.bodystructure) == (
        analyze(raw).envelope,
        analyze(raw).bodystructure,
    )
    with pytest.raises(MailboxNotFound):
        store.message_summaries(987654, [1])


def test_message_summary_chunks_are_message_summaries_in_lists(store: Store) -> None:
    """The streamed form of the narrow read (a FETCH 1:* on a threaded store): non-empty
    lists whose concatenation is exactly message_summaries for the same UIDs; an iterator
    closed after its first list leaves the store usable (more times than a pool has
    connections); an unknown mailbox is refused at the first ``next``."""
    box = inbox(store)
    add(store, box, 6)
    store.store_flags(box, [2], "+", ["\\Seen", "$Work"])
    store.store_flags(box, [4], "+", ["\\Deleted"])
    store.expunge(box)
    for uids in ([1, 2, 3, 4, 5, 6], [6, 1, 77, 6, 1], [2, 3], [5, 9, 2], [], [4], [77]):
        lists = list(store.message_summary_chunks(box, uids))
        assert all(lists), uids
        assert [s for chunk in lists for s in chunk] == store.message_summaries(box, uids), uids
    for _ in range(10):
        chunks = store.message_summary_chunks(box, [1, 2, 3, 4, 5, 6])
        assert next(chunks)[0].uid == 1
        chunks.close()
    assert [s.uid for c in store.message_summary_chunks(box, [3, 4, 5]) for s in c] == [3, 5]
    with pytest.raises(MailboxNotFound):
        next(store.message_summary_chunks(987654, [1]))


def test_message_summary_chunks_read_one_snapshot(store: Store) -> None:
    """A message expunged while the caller holds the first list is still in the later
    ones (one snapshot, as every read), so the caller's count tells EXPUNGEISSUED only
    for what was gone before the read began."""
    box = inbox(store)
    add(store, box, 6)
    before = store.message_summaries(box, list(range(1, 7)))
    chunks = store.message_summary_chunks(box, list(range(1, 7)))
    first = next(chunks)
    store.store_flags(box, [6], "+", ["\\Deleted"])
    store.expunge(box)
    assert first + [s for chunk in chunks for s in chunk] == before
    after = [s.uid for chunk in store.message_summary_chunks(box, range(1, 7)) for s in chunk]
    assert after == [1, 2, 3, 4, 5]


def test_message_flags_are_message_info_cut_to_uid_flags_and_modseq(store: Store) -> None:
    """The flag resync's read (``UID FETCH 1:* (UID FLAGS)``, issue 19) answers exactly
    what message_info does for the same UIDs, cut to UID, flags and modseq: existing UIDs
    ascending, each once, \\Recent included; an unknown mailbox is refused."""
    box = inbox(store)
    add(store, box, 4)
    store.append(box, make_message(subject="k"), ["\\Answered", "$Work"])
    store.store_flags(box, [2], "+", ["\\Seen"])
    store.clear_recent(box, [3])
    store.expunge(box, [4])
    for uids in ([5, 1, 77, 5, 1], [1, 2, 3, 4, 5], [2, 3], [4, 9, 2], [], [77]):
        assert store.message_flags(box, uids) == [
            (i.uid, i.flags, i.modseq) for i in store.message_info(box, uids)
        ], uids
    (last,) = store.message_flags(box, [5])
    assert (last.uid, last.flags) == (5, {"\\Answered", "$Work", "\\Recent"})
    assert last.modseq == store.message_rows(box)[-1].modseq
    with pytest.raises(MailboxNotFound):
        store.message_flags(987654, [1])


HEAD_MESSAGES = [
    b"From: a@example.com\r\nSubject: plain\r\nDate: Mon, 5 Feb 2024 10:11:12 +0000\r\n\r\nHi\r\n",
    b"Subject: folded\r\n  line\r\nFROM : b@example.com\r\nX-Date: no\r\n\r\nbody\r\n",
    b"Subject: Stra\xdfe \xc3\xa9t\xc3\xa9\r\nfrom: c@example.com\r\n\r\n8-bit header\r\n",
    b"From: d@example.com\r\nSubject: no body",
    b"To: nobody@example.com\r\n\r\nno wanted field\r\n",
    b"Date: Tue, 6 Feb 2024 10:11:12 +0000\nFrom: bare@example.com\n\nbare LF\n",
]


def test_message_header_fields_are_what_section_cuts(store: Store) -> None:
    """A list view's read (issue 19): for the UIDs that exist, ascending, each once,
    message_summaries' first four fields and BODY[HEADER.FIELDS (names)] exactly as
    section() cuts it from message_bytes, folded, missing, differently cased and 8-bit
    fields and a message without a body alike; asked again (the store may keep the cut
    fields) the answer is the same, with flags as they are now; an unknown mailbox is
    refused."""
    box = inbox(store)
    for raw in HEAD_MESSAGES:
        store.append(box, raw, ["\\Answered"])
    store.store_flags(box, [3], "+", ["\\Deleted"])
    store.expunge(box, [3])
    store.clear_recent(box, [2])

    def expected(uids: list[int], names: tuple[str, ...]) -> list[tuple]:
        return [
            (
                *(getattr(i, name) for name in ("uid", "flags", "modseq", "size")),
                section(store.message_bytes(box, i.uid), i.parts, (), "HEADER.FIELDS", names),
            )
            for i in store.message_info(box, uids)
        ]

    names_asked = [("FROM", "SUBJECT", "DATE"), ("subject",), ("X-%S", "TO"), ("STRASSE",)]
    for uids in ([6, 1, 77, 6, 1], [1, 2, 3, 4, 5, 6], [2, 4], [3], [], [77]):
        for names in names_asked:
            first = store.message_header_fields(box, uids, names)
            assert first == expected(uids, names), (uids, names)
            assert store.message_header_fields(box, uids, names) == first, (uids, names)
    store.store_flags(box, [1], "+", ["$Work"])
    (head,) = store.message_header_fields(box, [1], ("FROM", "SUBJECT", "DATE"))
    assert head.flags == {"\\Answered", "\\Recent", "$Work"}
    assert head.fields == (
        b"From: a@example.com\r\nSubject: plain\r\nDate: Mon, 5 Feb 2024 10:11:12 +0000\r\n\r\n"
    )
    assert store.message_header_fields(box, [4], ("FROM",))[0].fields == (
        b"From: d@example.com\r\n\r\n"
    )
    with pytest.raises(MailboxNotFound):
        store.message_header_fields(987654, [1], ("FROM",))


def test_message_bytes_batch_returns_existing_messages_byte_exact(store: Store) -> None:
    """message_bytes_batch agrees with message_bytes for every UID that exists, for a
    contiguous run and a scattered set alike; expunged or unknown UIDs are left out."""
    box = inbox(store)
    raws = [make_message(subject=f"batch {i}", body=f"body {i}\r\n") for i in range(5)]
    for raw in raws:
        store.append(box, raw)
    store.store_flags(box, [4], "+", ["\\Deleted"])
    store.expunge(box)
    assert store.message_bytes_batch(box, [1, 2, 3]) == {u: raws[u - 1] for u in (1, 2, 3)}
    assert store.message_bytes_batch(box, [5, 1, 4, 99, 3]) == {
        u: store.message_bytes(box, u) for u in (1, 3, 5)
    }
    assert store.message_bytes_batch(box, []) == {}
    with pytest.raises(MailboxNotFound):
        store.message_bytes_batch(987654, [1])


def test_message_info_with_bytes_is_message_info_and_the_leading_bodies(store: Store) -> None:
    """message_info_with_bytes gives message_info's rows and the bytes of the first
    messages whose sizes fit in the budget, always at least the first one, for one UID,
    a contiguous run and a scattered set; expunged or unknown UIDs are left out."""
    box = inbox(store)
    raws = [make_message(subject=f"lead {i}", body="x" * (100 * i) + "\r\n") for i in range(5)]
    for raw in raws:
        store.append(box, raw)
    store.store_flags(box, [2], "+", ["\\Deleted"])
    store.expunge(box)
    size = {uid: len(raws[uid - 1]) for uid in (1, 3, 4, 5)}
    expected = {
        0: [1],  # the first always comes, whatever the budget
        size[1]: [1],
        size[1] + size[3]: [1, 3],
        size[1] + size[3] + size[4] - 1: [1, 3],
        10**9: [1, 3, 4, 5],
    }
    for uids in ([1, 2, 3, 4, 5], [5, 3, 99, 1, 4]):
        for budget, leading in expected.items():
            infos, bodies = store.message_info_with_bytes(box, uids, budget)
            assert infos == store.message_info(box, uids)
            assert bodies == {uid: raws[uid - 1] for uid in leading}
            assert leading_uids(infos, budget) == leading
    assert store.message_info_with_bytes(box, [4], 0) == (
        store.message_info(box, [4]),
        {4: raws[3]},
    )
    assert store.message_info_with_bytes(box, [2], 10**9) == ([], {})
    assert store.message_info_with_bytes(box, [], 10**9) == ([], {})
    with pytest.raises(MailboxNotFound):
        store.message_info_with_bytes(987654, [1], 10**9)


def test_message_bytes_of_unknown_or_expunged_uid_raises_key_error(store: Store) -> None:
    box = inbox(store)
    add(store, box, 1, ("\\Deleted",))
    store.expunge(box)
    with pytest.raises(KeyError):
        store.message_bytes(box, 1)
    with pytest.raises(KeyError):
        store.message_bytes(box, 42)


def test_counts_reports_status_figures(store: Store) -> None:
    box = inbox(store)
    empty = store.counts(box)
    assert (empty.messages, empty.recent, empty.unseen, empty.size) == (0, 0, 0, 0)
    raws = [make_message(subject=f"size {'x' * i}") for i in range(4)]
    store.append(box, raws[0], ["\\Seen"])
    store.append(box, raws[1])
    store.append(box, raws[2], ["\\Seen", "\\Deleted"])
    store.append(box, raws[3], ["seen"])  # a keyword, not \Seen
    store.clear_recent(box, [1])
    counts = store.counts(box)
    mailbox = store.get_mailbox("alice", INBOX)
    assert counts.messages == 4
    assert counts.recent == 3
    assert counts.unseen == 2
    assert counts.size == sum(len(r) for r in raws)
    assert (counts.uidnext, counts.uidvalidity, counts.highestmodseq) == (
        mailbox.uidnext,
        mailbox.uidvalidity,
        mailbox.highestmodseq,
    )
    with pytest.raises(MailboxNotFound):
        store.counts(987654)


def test_store_flags_replace_add_remove(store: Store) -> None:
    """RFC 3501 §6.4.6 FLAGS, +FLAGS, -FLAGS."""
    box = inbox(store)
    add(store, box, 3, ("\\Seen", "keep"))
    store.clear_recent(box, [1, 2, 3])
    r = store.store_flags(box, [1], "", ["\\Flagged", "\\draft"])
    assert [(u.uid, u.flags) for u in r.updated] == [(1, {"\\Flagged", "\\Draft"})]
    r = store.store_flags(box, [2], "+", ["\\Answered", "KEEP"])
    assert [(u.uid, u.flags) for u in r.updated] == [(2, {"\\Seen", "keep", "\\Answered"})]
    r = store.store_flags(box, [3], "-", ["\\SEEN", "Keep", "absent"])
    assert [(u.uid, u.flags) for u in r.updated] == [(3, frozenset())]
    assert flags_of(store, box) == {
        1: {"\\Flagged", "\\Draft"},
        2: {"\\Seen", "keep", "\\Answered"},
        3: frozenset(),
    }
    assert r.modified == []


def test_store_flags_updates_only_rows_that_change_with_one_shared_modseq(store: Store) -> None:
    box = inbox(store)
    add(store, box, 2)
    add(store, box, 2, ("\\Seen",))
    before = store.counts(box).highestmodseq
    result = store.store_flags(box, [1, 2, 3, 4, 50], "+", ["\\Seen"])
    assert [u.uid for u in result.updated] == [1, 2]
    assert {u.modseq for u in result.updated} == {before + 1}
    assert store.counts(box).highestmodseq == before + 1
    rows = {r.uid: r for r in store.message_rows(box)}
    assert rows[1].modseq == rows[2].modseq == before + 1
    assert rows[3].modseq < before + 1 and rows[4].modseq < before + 1
    assert all(u.flags == rows[u.uid].flags for u in result.updated)


def test_store_flags_ignores_recent_and_keeps_it_in_results(store: Store) -> None:
    box = inbox(store)
    add(store, box, 2)
    store.clear_recent(box, [2])
    result = store.store_flags(box, [1, 2], "-", ["\\Recent"])
    assert result.updated == []
    result = store.store_flags(box, [1, 2], "", ["\\Recent", "\\Seen"])
    assert [(u.uid, u.flags) for u in result.updated] == [
        (1, {"\\Seen", "\\Recent"}),
        (2, {"\\Seen"}),
    ]
    result = store.store_flags(box, [2], "+", ["\\Recent"])
    assert result.updated == []


def test_store_flags_with_a_keyword_in_another_case_is_no_change(store: Store) -> None:
    box = inbox(store)
    store.append(box, make_message(), ["Important"])
    assert store.store_flags(box, [1], "", ["IMPORTANT"]).updated == []
    assert store.store_flags(box, [1], "+", ["important"]).updated == []
    assert flags_of(store, box)[1] == {"Important", "\\Recent"}


def test_store_flags_unchangedsince_refuses_rows_modified_meanwhile(store: Store) -> None:
    """RFC 7162 §3.1.3: rows whose modseq exceeds UNCHANGEDSINCE go to MODIFIED, untouched."""
    box = inbox(store)
    add(store, box, 3)
    base = store.counts(box).highestmodseq
    store.store_flags(box, [2], "+", ["\\Flagged"])  # uid 2 now newer than base
    result = store.store_flags(box, [1, 2, 3], "+", ["\\Seen"], unchangedsince=base)
    assert [u.uid for u in result.updated] == [1, 3]
    assert result.modified == [2]
    assert "\\Seen" not in flags_of(store, box)[2]
    # UNCHANGEDSINCE 0 refuses everything (every modseq is positive).
    result = store.store_flags(box, [1, 2, 3], "-", ["\\Seen"], unchangedsince=0)
    assert result.updated == [] and result.modified == [1, 2, 3]


def test_store_flags_unchangedsince_equal_to_modseq_is_allowed(store: Store) -> None:
    box = inbox(store)
    add(store, box, 1)
    (row,) = store.message_rows(box)
    result = store.store_flags(box, [1], "+", ["\\Seen"], unchangedsince=row.modseq)
    assert [u.uid for u in result.updated] == [1] and result.modified == []


def test_store_flags_rejects_unknown_mode_and_missing_mailbox(store: Store) -> None:
    box = inbox(store)
    add(store, box, 1)
    with pytest.raises(ValueError):
        store.store_flags(box, [1], "*", ["\\Seen"])
    with pytest.raises(MailboxNotFound):
        store.store_flags(987654, [1], "+", ["\\Seen"])


def test_expunge_removes_only_deleted_messages_and_remembers_them(store: Store) -> None:
    box = inbox(store)
    add(store, box, 5)
    store.store_flags(box, [2, 4, 5], "+", ["\\Deleted"])
    before = store.counts(box).highestmodseq
    assert store.expunge(box, [4, 5, 1]) == [4, 5]  # UID EXPUNGE, RFC 4315 §2.1
    assert uids(store, box) == [1, 2, 3]
    assert store.expunge(box) == [2]
    assert uids(store, box) == [1, 3]
    changes = store.changes_since(box, before)
    assert changes.expunged == [2, 4, 5]
    assert store.expunge(box) == []


def test_changes_since_reports_new_reflagged_and_expunged_rows(store: Store) -> None:
    box = inbox(store)
    add(store, box, 4)
    mark = store.counts(box).highestmodseq
    assert store.changes_since(box, mark).changed == []
    store.store_flags(box, [3], "+", ["\\Seen"])
    store.store_flags(box, [1], "+", ["\\Deleted"])
    store.expunge(box)
    store.append(box, make_message())
    changes = store.changes_since(box, mark)
    assert [r.uid for r in changes.changed] == [3, 5]
    assert changes.expunged == [1]
    assert changes.highestmodseq == store.counts(box).highestmodseq
    assert all(r.modseq > mark for r in changes.changed)
    everything = store.changes_since(box, 0)
    assert [r.uid for r in everything.changed] == [2, 3, 4, 5]
    assert store.changes_since(box, changes.highestmodseq).changed == []


def test_copy_assigns_new_uids_in_source_order_and_keeps_flags(store: Store) -> None:
    """RFC 3501 §6.4.7 and RFC 4315 COPYUID: pairs follow ascending source UID."""
    src = inbox(store)
    dst = store.create_mailbox("alice", "dst").id
    add(store, dst, 2)
    add(store, src, 4)
    store.store_flags(src, [3], "+", ["\\Seen", "tag"])
    store.clear_recent(src, [1, 2, 3, 4])
    raws = {u: store.message_bytes(src, u) for u in (1, 3, 4)}
    pairs = store.copy(src, [4, 3, 1, 99], dst)
    assert pairs == [(1, 3), (3, 4), (4, 5)]
    dst_flags = flags_of(store, dst)
    assert dst_flags[4] == {"\\Seen", "tag", "\\Recent"}
    assert dst_flags[3] == {"\\Recent"}
    assert {new: store.message_bytes(dst, new) for _old, new in pairs} == {
        new: raws[old] for old, new in pairs
    }
    assert uids(store, src) == [1, 2, 3, 4]  # source untouched
    assert store.copy(src, [99], dst) == []


def test_copy_shares_content_so_expunging_or_deleting_the_source_keeps_the_copy(
    store: Store,
) -> None:
    src = store.create_mailbox("alice", "src").id
    dst = store.create_mailbox("alice", "dst").id
    raw = make_message(subject="shared")
    store.append(src, raw, ["\\Deleted"])
    store.append(src, raw)
    store.copy(src, [1, 2], dst)
    store.expunge(src)
    assert store.message_bytes(dst, 1) == raw
    store.delete_mailbox("alice", "src")
    assert [store.message_bytes(dst, u) for u in (1, 2)] == [raw, raw]
    assert store.search(dst, Header("subject", "shared")) == [1, 2]


def test_copy_into_the_same_mailbox(store: Store) -> None:
    box = inbox(store)
    add(store, box, 2)
    assert store.copy(box, [1, 2], box) == [(1, 3), (2, 4)]
    assert uids(store, box) == [1, 2, 3, 4]


def test_move_removes_source_rows_atomically_and_records_them_expunged(store: Store) -> None:
    """RFC 6851 MOVE."""
    src = inbox(store)
    dst = store.create_mailbox("alice", "dst").id
    add(store, src, 3)
    store.store_flags(src, [2], "+", ["\\Flagged"])
    mark = store.counts(src).highestmodseq
    raw2 = store.message_bytes(src, 2)
    assert store.copy(src, [2, 3], dst, move=True) == [(2, 1), (3, 2)]
    assert uids(store, src) == [1]
    assert store.changes_since(src, mark).expunged == [2, 3]
    assert store.message_bytes(dst, 1) == raw2
    assert flags_of(store, dst)[1] == {"\\Flagged", "\\Recent"}
    assert store.counts(src).highestmodseq > mark


def test_copy_with_missing_mailbox_raises_not_found(store: Store) -> None:
    box = inbox(store)
    add(store, box, 1)
    with pytest.raises(MailboxNotFound):
        store.copy(box, [1], 987654)
    with pytest.raises(MailboxNotFound):
        store.copy(987654, [1], box, move=True)
    assert uids(store, box) == [1]


# ---- listeners ---------------------------------------------------------------------


def test_listener_hears_each_write_once_after_it_is_visible(store: Store) -> None:
    box = inbox(store)
    other = store.create_mailbox("alice", "other").id
    heard: list[tuple[int, int]] = []

    def listener(mailbox_id: int) -> None:
        # The change must already be committed and visible when we are told.
        heard.append((mailbox_id, store.counts(mailbox_id).messages))

    store.add_listener(listener)
    store.append(box, make_message())
    assert heard == [(box, 1)]
    store.store_flags(box, [1], "+", ["\\Seen"])
    store.store_flags(box, [1], "+", ["\\Seen"])  # no change, no call
    store.message_rows(box)
    store.clear_recent(box, [1])
    assert heard == [(box, 1), (box, 1)]
    heard.clear()
    store.copy(box, [1], other, move=True)
    assert sorted(heard) == sorted([(box, 0), (other, 1)])
    heard.clear()
    store.store_flags(other, [1], "+", ["\\Deleted"])
    store.expunge(other)
    assert heard == [(other, 1), (other, 0)]
    heard.clear()
    store.remove_listener(listener)
    store.append(box, make_message())
    assert heard == []


def test_listener_hears_delivery_and_mailbox_deletion(store: Store) -> None:
    heard: list[int] = []
    store.add_listener(heard.append)
    uid = store.deliver("alice", INBOX, Delivery("pop", "u1", make_message()))
    assert uid == 1 and heard == [inbox(store)]
    junk = store.get_mailbox("alice", "Junk").id
    heard.clear()
    store.delete_mailbox("alice", "Junk")
    assert heard == [junk]


def test_failing_listener_is_logged_and_does_not_break_the_store(store: Store) -> None:
    box = inbox(store)
    heard: list[int] = []

    def broken(mailbox_id: int) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(heard.append)
    with structlog.testing.capture_logs() as logs:
        uid = store.append(box, make_message())
    assert uid == 1 and heard == [box]
    assert uids(store, box) == [1]
    assert any(e.get("mailbox_id") == box and e["log_level"] == "error" for e in logs)


def test_failed_write_rolls_back_and_notifies_nobody(store: Store) -> None:
    box = inbox(store)
    heard: list[int] = []
    store.add_listener(heard.append)
    before = store.counts(box)
    with pytest.raises(MessageTooLarge):
        store.append(box, b"x" * (SMALL_LIMIT + 1))
    with pytest.raises(ValueError):
        store.store_flags(box, [1], "+", ["bad flag"])
    assert heard == [] and store.counts(box) == before


# ---- POP3 ledger -------------------------------------------------------------------


def test_deliver_creates_user_and_is_idempotent_per_upstream_and_uidl(store: Store) -> None:
    raw = make_message(subject="fetched")
    uid = store.deliver("carol", INBOX, Delivery("pop.example:995", "UID-1", raw))
    box = inbox(store, "carol")
    assert uid == 1 and store.message_bytes(box, 1) == raw
    assert "Sent" in {m.name for m in store.list_mailboxes("carol")}
    assert store.deliver("carol", INBOX, Delivery("pop.example:995", "UID-1", raw)) is None
    assert uids(store, box) == [1]
    # The same UIDL from another upstream is another message.
    assert store.deliver("carol", INBOX, Delivery("other:110", "UID-1", raw)) == 2
    assert store.known_uidls("pop.example:995") == {"UID-1"}
    assert store.known_uidls("other:110") == {"UID-1"}
    assert store.known_uidls("nowhere") == set()
    assert "\\Recent" in flags_of(store, box)[1]


def test_deliver_into_a_named_folder_creates_it_with_parents(store: Store) -> None:
    uid = store.deliver("alice", "Lists/python", Delivery("pop", "a", make_message()))
    box = store.get_mailbox("alice", "Lists/python")
    assert uid == 1 and uids(store, box.id) == [1]
    assert store.get_mailbox("alice", "Lists").name == "Lists"
    assert store.deliver("alice", "inbox", Delivery("pop", "b", make_message())) == 1
    assert uids(store, inbox(store)) == [1]


def test_deliver_is_durable_across_reopen(backend: Backend, store: Store) -> None:
    raw = make_message(subject="durable", body="\r\n".join(f"line {i}" for i in range(50)))
    when = datetime.datetime(2021, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    store.deliver("alice", INBOX, Delivery("pop", "d1", raw, internaldate=when))
    store = backend.reopen(store)
    box = inbox(store)
    assert store.message_bytes(box, 1) == raw
    assert store.message_info(box, [1])[0].internaldate == when
    assert store.known_uidls("pop") == {"d1"}
    assert store.deliver("alice", INBOX, Delivery("pop", "d1", raw)) is None


def test_deliver_too_large_raises_and_records_nothing(store: Store) -> None:
    with pytest.raises(MessageTooLarge):
        store.deliver("alice", INBOX, Delivery("pop", "big", b"x" * (SMALL_LIMIT + 1)))
    assert store.known_uidls("pop") == set()
    assert store.message_rows(inbox(store)) == []


def test_deliver_into_a_bad_folder_name_is_refused(store: Store) -> None:
    with pytest.raises(MailboxNotAllowed):
        store.deliver("alice", "a//b", Delivery("pop", "x", make_message()))
    assert store.known_uidls("pop") == set()


def test_skipped_uidls_are_known_and_never_override_a_delivery(
    backend: Backend, store: Store
) -> None:
    store.deliver("alice", INBOX, Delivery("pop", "got", make_message(), size_on_server=999))
    store.record_skipped("pop", "huge", "too large")
    backend.clock.now = START + 60
    store.record_skipped("pop", "huge", "still too large")
    store.record_skipped("pop", "got", "should not apply")
    assert store.known_uidls("pop") == {"got", "huge"}
    entries = {e.uidl: e for e in store.ledger_entries("pop")}
    assert entries["got"].state == "delivered" and entries["got"].reason is None
    assert entries["got"].size == 999
    assert entries["got"].fetched_at == datetime.datetime.fromtimestamp(START, datetime.UTC)
    assert entries["huge"].state == "skipped" and entries["huge"].reason == "still too large"
    assert entries["huge"].fetched_at.timestamp() == START + 60
    assert [e.uidl for e in store.ledger_entries("pop")] == ["got", "huge"]


def test_forget_uidls_drops_only_the_named_entries(store: Store) -> None:
    for uidl in ("a", "b", "c"):
        store.deliver("alice", INBOX, Delivery("pop", uidl, make_message()))
    store.deliver("alice", INBOX, Delivery("other", "a", make_message()))
    store.record_skipped("pop", "d", "too large")
    store.forget_uidls("pop", ["a", "d", "zzz"])
    assert store.known_uidls("pop") == {"b", "c"}
    assert store.known_uidls("other") == {"a"}
    # The messages themselves stay; a forgotten UIDL would be fetched again.
    assert len(store.message_rows(inbox(store))) == 4
    assert store.deliver("alice", INBOX, Delivery("pop", "a", make_message())) == 5
    store.forget_uidls("pop", [])
    assert store.known_uidls("pop") == {"a", "b", "c"}


# ---- search: examples --------------------------------------------------------------


@pytest.fixture
def searchable(store: Store) -> tuple[Store, int]:
    box = inbox(store)
    pst = datetime.timezone(datetime.timedelta(hours=-8))
    east = datetime.timezone(datetime.timedelta(hours=13))
    store.append(
        box,
        make_message(subject="Grüße aus Köln", sender="Zoë <zoe@example.net>", body="Apfel\r\n"),
        ["\\Seen"],
        datetime.datetime(2024, 3, 1, 23, 30, tzinfo=pst),  # 2024-03-02 in UTC
    )
    store.append(
        box,
        make_message(subject="meeting", to=None, body="Straße " + "z" * 300, date=None),
        ["\\Flagged", "Work"],
        datetime.datetime(2024, 3, 2, 0, 30, tzinfo=east),  # 2024-03-01 in UTC
    )
    store.append(
        box,
        make_message(
            subject="Re: meeting", cc="carol@example.com", date="Sat, 02 Mar 2024 01:00:00 +1400"
        ),
        ["\\Deleted", "\\Seen"],
        datetime.datetime(2024, 3, 3, 12, 0, tzinfo=datetime.UTC),
    )
    store.clear_recent(box, [1])
    return store, box


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (All(), [1, 2, 3]),
        (Flag("\\Seen"), [1, 3]),
        (Flag("\\seen", present=False), [2]),
        (Flag("work"), [2]),
        (Flag("\\Recent"), [2, 3]),
        (Flag("\\Recent", present=False), [1]),
        (Flag("$Junk"), []),
        (Header("subject", "KÖLN"), [1]),
        (Header("subject", "GRÜSSE"), [1]),  # full case folding: ß matches SS
        (Header("Subject", "meeting"), [2, 3]),
        (Header("from", "zoë"), [1]),
        (Header("cc", ""), [3]),
        (Header("to", ""), [1, 3]),
        (Header("x-none", ""), []),
        (Text("BODY", "STRASSE"), [2]),
        (Text("BODY", "meeting"), []),
        (Text("TEXT", "meeting"), [2, 3]),
        (Text("TEXT", "apfel"), [1]),
        (Text("TEXT", ""), [1, 2, 3]),
        (Date("internal", "on", datetime.date(2024, 3, 1)), [1]),
        (Date("internal", "on", datetime.date(2024, 3, 2)), [2]),
        (Date("internal", "before", datetime.date(2024, 3, 2)), [1]),
        (Date("internal", "since", datetime.date(2024, 3, 2)), [2, 3]),
        (Date("sent", "on", datetime.date(1994, 2, 7)), [1]),
        (Date("sent", "on", datetime.date(2024, 3, 2)), [2, 3]),  # 2 has no Date: → internal
        (Date("sent", "before", datetime.date(2024, 3, 2)), [1]),
        (Size("larger", 300), [2]),
        (Size("smaller", 300), [1, 3]),
        (Uid(SequenceSet((SeqRange(2, None),))), [2, 3]),
        (Uid(SequenceSet((SeqRange(10, None),))), [3]),  # RFC 3501 §6.4.8: n:* includes *
        (Uid(SequenceSet((SeqRange(None, None),))), [3]),
        (Uid(SequenceSet((SeqRange(1, 1), SeqRange(3, 7)))), [1, 3]),
        (Uid(SequenceSet((SeqRange(4, 9),))), []),
        (And((Flag("\\Seen"), Header("subject", "meeting"))), [3]),
        (And(()), [1, 2, 3]),
        (Or(Flag("\\Flagged"), Flag("\\Deleted")), [2, 3]),
        (Not(Or(Flag("\\Flagged"), Flag("\\Deleted"))), [1]),
        (Not(Header("cc", "")), [1, 2]),
    ],
)
def test_search_examples(
    searchable: tuple[Store, int], criteria: Criteria, expected: list[int]
) -> None:
    store, box = searchable
    assert store.search(box, criteria) == expected


def test_search_by_modseq(searchable: tuple[Store, int]) -> None:
    """RFC 7162 §3.1.5: MODSEQ n matches modseq >= n."""
    store, box = searchable
    result = store.store_flags(box, [2], "+", ["\\Answered"])
    modseq = result.updated[0].modseq
    assert store.search(box, ModSeq(modseq)) == [2]
    assert store.search(box, ModSeq(modseq + 1)) == []
    assert store.search(box, ModSeq(0)) == [1, 2, 3]


def test_search_of_empty_mailbox_matches_nothing(store: Store) -> None:
    box = store.create_mailbox("alice", "empty").id
    assert store.search(box, All()) == []
    assert store.search(box, Uid(SequenceSet((SeqRange(None, None),)))) == []
    assert store.search(box, Not(Flag("\\Seen"))) == []


def test_search_with_many_uid_ranges(store: Store) -> None:
    box = inbox(store)
    add(store, box, 40)
    wanted = list(range(1, 41, 3))
    ranges = tuple(SeqRange(u, u) for u in reversed(wanted)) + (SeqRange(1000, 2000),)
    assert store.search(box, Uid(SequenceSet(ranges))) == sorted(set(wanted))
    assert store.search(box, Not(Uid(SequenceSet(ranges)))) == [
        u for u in range(1, 41) if u not in wanted
    ]


def test_search_refuses_sequence_number_keys(searchable: tuple[Store, int]) -> None:
    store, box = searchable
    with pytest.raises(ValueError):
        store.search(box, Seq(SequenceSet((SeqRange(1, 1),))))
    with pytest.raises(ValueError):
        store.search(box, And((All(), Not(Seq(SequenceSet((SeqRange(1, 1),)))))))


def test_search_refuses_trees_over_the_caps(searchable: tuple[Store, int]) -> None:
    store, box = searchable
    wide: Criteria = And(tuple(Flag("\\Seen") for _ in range(MAX_SEARCH_NODES)))
    with pytest.raises(SearchTooComplex, match="keys") as info:
        store.search(box, wide)
    assert isinstance(info.value, StoreError)  # mapped to NO [LIMIT] with the others
    deep: Criteria = Flag("\\Seen")
    for _ in range(MAX_SEARCH_DEPTH):
        deep = Not(deep)
    with pytest.raises(SearchTooComplex, match="deeper"):
        store.search(box, deep)


def test_search_accepts_trees_at_the_caps(searchable: tuple[Store, int]) -> None:
    store, box = searchable
    wide: Criteria = And(tuple(Flag("\\Seen") for _ in range(MAX_SEARCH_NODES - 1)))
    assert store.search(box, wide) == [1, 3]
    deep: Criteria = Flag("\\Seen")
    for _ in range(MAX_SEARCH_DEPTH - 1):
        deep = Not(deep)
    # MAX_SEARCH_DEPTH - 1 negations: odd or even decides the answer.
    assert store.search(box, deep) == ([2] if (MAX_SEARCH_DEPTH - 1) % 2 else [1, 3])


def test_search_of_missing_mailbox_raises_not_found(store: Store) -> None:
    with pytest.raises(MailboxNotFound):
        store.search(987654, All())


# ---- search: against a brute-force reference ---------------------------------------


@dataclass(frozen=True)
class Facts:
    """Everything the reference evaluator needs about one message."""

    uid: int
    flags: frozenset[str]
    modseq: int
    size: int
    internal_day: datetime.date
    sent_day: datetime.date
    headers: tuple[tuple[str, str], ...]
    text: str


def gather_facts(store: Store, mailbox_id: int, raws: dict[int, bytes]) -> list[Facts]:
    """The reference view, built from message_rows/message_info and an independent parse."""
    rows = store.message_rows(mailbox_id)
    infos = {i.uid: i for i in store.message_info(mailbox_id, [r.uid for r in rows])}
    out = []
    for row in rows:
        info = infos[row.uid]
        analysis = analyze(raws[row.uid])
        internal_day = info.internaldate.date()
        sent = analysis.sent_date.date() if analysis.sent_date is not None else internal_day
        out.append(
            Facts(
                uid=row.uid,
                flags=row.flags,
                modseq=row.modseq,
                size=len(raws[row.uid]),
                internal_day=internal_day,
                sent_day=sent,
                headers=tuple(analysis.headers),
                text=analysis.text,
            )
        )
    return out


def matches(node: Criteria, m: Facts, largest: int) -> bool:
    """RFC 3501 §6.4.4 semantics, evaluated the slow and obvious way."""
    if isinstance(node, All):
        return True
    if isinstance(node, And):
        return all(matches(k, m, largest) for k in node.keys)
    if isinstance(node, Or):
        return matches(node.left, m, largest) or matches(node.right, m, largest)
    if isinstance(node, Not):
        return not matches(node.key, m, largest)
    if isinstance(node, Flag):
        return (node.flag.lower() in {f.lower() for f in m.flags}) == node.present
    if isinstance(node, Header):
        return any(
            name == node.field.lower() and node.value.casefold() in value.casefold()
            for name, value in m.headers
        )
    if isinstance(node, Text):
        needle = node.value.casefold()
        in_body = needle in m.text.casefold()
        if node.where == "BODY":
            return in_body
        return in_body or any(needle in f"{n}: {v}".casefold() for n, v in m.headers)
    if isinstance(node, Date):
        day = m.internal_day if node.field == "internal" else m.sent_day
        return {"before": day < node.date, "on": day == node.date, "since": day >= node.date}[
            node.op
        ]
    if isinstance(node, Size):
        return m.size > node.size if node.op == "larger" else m.size < node.size
    if isinstance(node, Uid):
        return node.set.contains(m.uid, largest)
    if isinstance(node, ModSeq):
        return m.modseq >= node.modseq
    raise AssertionError(node)


def reference_search(facts: list[Facts], criteria: Criteria) -> list[int]:
    if not facts:
        return []
    largest = max(f.uid for f in facts)
    return [f.uid for f in facts if matches(criteria, f, largest)]


SUBJECTS = ["Hello", "hello world", "Grüße aus Köln", "STRASSE", "straße", "Re: Meeting", ""]
SENDERS = ["Alice <alice@example.com>", "bob@example.org", "Zoë <zoe@example.net>"]
BODIES = ["apple banana\r\n", "Cherry pie\r\nand GROSS text\r\n", "groß\r\n", "", "x" * 200]
FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Junk", "work"]
NEEDLES = [
    "",
    "a",
    "HELLO",
    "köln",
    "KÖLN",
    "strasse",
    "ß",
    "gross",
    "pie",
    "example",
    "zoë",
    "subject: gr",
    "from: bob",
    "nothing-matches",
]
FIELDS = ["subject", "from", "to", "cc", "date", "x-missing"]
DAY0 = datetime.date(2024, 1, 10)
OFFSETS = [-12 * 60, -8 * 60, -30, 0, 5 * 60 + 30, 13 * 60, 14 * 60]


def random_message(rng: random.Random) -> tuple[bytes, tuple[str, ...], datetime.datetime]:
    """One message with varied headers, body, flags and INTERNALDATE."""
    date = None
    if rng.random() < 0.8:
        day = DAY0 + datetime.timedelta(days=rng.randrange(5))
        minutes = rng.choice(OFFSETS)
        sign = "+" if minutes >= 0 else "-"
        date = (
            f"{day.strftime('%a, %d %b %Y')} {rng.randrange(24):02d}:{rng.randrange(60):02d}:00"
            f" {sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
        )
    raw = make_message(
        subject=rng.choice(SUBJECTS + [None]),
        sender=rng.choice(SENDERS),
        to=rng.choice(SENDERS + [None]),
        cc=rng.choice([None, None, rng.choice(SENDERS)]),
        body=rng.choice(BODIES) * rng.randrange(1, 3),
        date=date,
    )
    flags = tuple(f for f in FLAGS if rng.random() < 0.3)
    zone = datetime.timezone(datetime.timedelta(minutes=rng.choice(OFFSETS)))
    internal = datetime.datetime.combine(
        DAY0 + datetime.timedelta(days=rng.randrange(5)),
        datetime.time(rng.randrange(24), rng.randrange(60)),
        tzinfo=zone,
    )
    return raw, flags, internal


def fill_mailbox(store: Store, mailbox_id: int, seed: int, count: int) -> dict[int, bytes]:
    """Append ``count`` random messages, then shuffle flags, \\Recent and expunge some,
    so UIDs have gaps and modseqs differ."""
    rng = random.Random(seed)
    raws: dict[int, bytes] = {}
    for _ in range(count):
        raw, flags, internal = random_message(rng)
        raws[store.append(mailbox_id, raw, flags, internal)] = raw
    all_uids = sorted(raws)
    store.clear_recent(mailbox_id, [u for u in all_uids if rng.random() < 0.5])
    for _ in range(3):
        chosen = [u for u in all_uids if rng.random() < 0.3]
        store.store_flags(mailbox_id, chosen, rng.choice(["", "+", "-"]), rng.sample(FLAGS, 2))
    gone = store.expunge(mailbox_id, [u for u in all_uids if rng.random() < 0.3])
    for uid in gone:
        del raws[uid]
    return raws


def uid_sets(max_uid: int) -> st.SearchStrategy[SequenceSet]:
    bound = st.one_of(st.none(), st.integers(1, max_uid + 3))
    return st.lists(st.builds(SeqRange, bound, bound), min_size=1, max_size=12).map(
        lambda rs: SequenceSet(tuple(rs))
    )


def criteria_trees(max_uid: int, max_modseq: int) -> st.SearchStrategy[Criteria]:
    flag_names = FLAGS + ["\\Recent", "\\SEEN", "WORK", "$junk", "absent"]
    leaves = st.one_of(
        st.just(All()),
        st.builds(Flag, st.sampled_from(flag_names), st.booleans()),
        st.builds(Header, st.sampled_from(FIELDS), st.sampled_from(NEEDLES)),
        st.builds(Text, st.sampled_from(["BODY", "TEXT"]), st.sampled_from(NEEDLES)),
        st.builds(
            Date,
            st.sampled_from(["internal", "sent"]),
            st.sampled_from(["before", "on", "since"]),
            st.dates(DAY0 - datetime.timedelta(days=2), DAY0 + datetime.timedelta(days=6)),
        ),
        st.builds(Size, st.sampled_from(["larger", "smaller"]), st.integers(0, 900)),
        st.builds(Uid, uid_sets(max_uid)),
        st.builds(ModSeq, st.integers(0, max_modseq + 2)),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.builds(And, st.lists(children, max_size=4).map(tuple)),
            st.builds(Or, children, children),
            st.builds(Not, children),
        ),
        max_leaves=12,
    )


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, int, list[Facts]]]:
    """One varied mailbox of 60 messages, shared by the property test below."""
    directory = tmp_path_factory.mktemp("corpus")
    store = BACKENDS[request.param](directory, FakeClock())
    store.ensure_user("alice")
    box = inbox(store)
    raws = fill_mailbox(store, box, seed=20240110, count=60)
    yield store, box, gather_facts(store, box, raws)
    store.close()
    forget_memory(directory)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_search_agrees_with_reference_on_a_varied_mailbox(
    corpus: tuple[Store, int, list[Facts]], data: st.DataObject
) -> None:
    store, box, facts = corpus
    max_uid = max(f.uid for f in facts)
    max_modseq = max(f.modseq for f in facts)
    criteria = data.draw(criteria_trees(max_uid, max_modseq))
    assert store.search(box, criteria) == reference_search(facts, criteria)


@pytest.mark.parametrize("backend_name", sorted(BACKENDS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 8),
    trees=st.lists(criteria_trees(12, 12), min_size=1, max_size=10),
)
def test_search_agrees_with_reference_on_small_random_mailboxes(
    backend_name: str, seed: int, count: int, trees: list[Criteria]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = BACKENDS[backend_name](Path(directory), FakeClock())
        try:
            store.ensure_user("alice")
            box = inbox(store)
            facts = gather_facts(store, box, fill_mailbox(store, box, seed, count))
            for criteria in trees:
                assert store.search(box, criteria) == reference_search(facts, criteria)
        finally:
            store.close()
            forget_memory(Path(directory))
