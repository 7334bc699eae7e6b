"""The list view's kept header fields (gateway/store/heads.py, issue 19): what is kept, its
bound, and the reads behind it. That the answers equal ``section()`` on every backend is
the contract's test (tests/test_store_contract.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.message.analysis import analyze
from gateway.message.sections import header_span, section
from gateway.store import heads
from gateway.store.heads import HEAD_ENTRY_MAX, HEAD_ENTRY_OVERHEAD, HeadCache
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite import messages as sqlite_messages

NAMES = ("FROM", "SUBJECT", "DATE")


def _message(i: int, header_pad: int = 0, body: int = 10) -> bytes:
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 60) for n in range(header_pad))
    return (
        b"From: s%d@example.org\r\n%sSubject: message %d\r\n"
        b"Date: Mon, 05 Feb 2024 10:11:12 +0100\r\n\r\n%s\r\n" % (i, pad, i, b"b" * body)
    )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.ensure_user("u")
    yield store
    store.close()


def test_the_cache_keeps_short_entries_within_its_bound() -> None:
    cache = HeadCache(limit=3 * (10 + HEAD_ENTRY_OVERHEAD))
    cache.keep(NAMES, 1, {1: b"a" * 10, 2: b"b" * 10, 3: b"x" * (HEAD_ENTRY_MAX + 1)})
    assert dict(cache.known(NAMES, 1)) == {1: b"a" * 10, 2: b"b" * 10}  # too long: not kept
    assert cache.known(("FROM",), 1) == {} and cache.known(NAMES, 2) == {}
    cache.keep(NAMES, 2, {7: b"c" * 10})
    assert cache.size == 3 * (10 + HEAD_ENTRY_OVERHEAD)
    cache.keep(NAMES, 2, {8: b"d" * 10})  # over the bound: everything goes, then this
    assert cache.known(NAMES, 1) == {} and dict(cache.known(NAMES, 2)) == {8: b"d" * 10}
    assert cache.size == 10 + HEAD_ENTRY_OVERHEAD


def test_fields_are_cut_once_and_then_read_from_what_is_kept(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = sqlite_store.get_mailbox("u", "INBOX").id
    for i in range(6):
        sqlite_store.append(box, _message(i))
    cut: list[list[int]] = []
    sources = sqlite_store._head_sources

    def counting(mailbox_id: int, uids: list[int]) -> Iterator[tuple[int, bytes, str]]:
        cut.append(list(uids))
        return sources(mailbox_id, uids)

    monkeypatch.setattr(sqlite_store, "_head_sources", counting)
    first = sqlite_store.message_header_fields(box, [2, 3, 4], NAMES)
    assert sqlite_store.message_header_fields(box, [2, 3, 4], NAMES) == first
    wider = sqlite_store.message_header_fields(box, [1, 2, 3, 4, 5, 6], NAMES)
    assert wider[1:4] == first
    assert cut == [[2, 3, 4], [1, 5, 6]]  # each message cut once, then kept
    sqlite_store.message_header_fields(box, [2], ("SUBJECT",))  # other names: cut again
    assert cut[-1] == [2]


def test_large_messages_give_their_header_through_the_blob(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every body over ROW_BODY_BYTES is read through the blob API, only as far as its
    header section goes (header_span); the fields are what section() cuts."""
    monkeypatch.setattr(sqlite_messages, "ROW_BODY_BYTES", 64)
    box = sqlite_store.get_mailbox("u", "INBOX").id
    raws = [_message(1, header_pad=40, body=70_000), _message(2), b"From: x@y\r\nSubject: no body"]
    for raw in raws:
        sqlite_store.append(box, raw)
    spans = {uid: header_span(analyze(raw).parts) for uid, raw in enumerate(raws, 1)}
    read = {uid: raw for uid, raw, _ in sqlite_store._head_sources(box, [1, 2, 3])}
    assert {uid: len(raw) for uid, raw in read.items()} == spans
    assert spans[1] < 5000  # the 70 KB body was not read
    got = sqlite_store.message_header_fields(box, [1, 2, 3], NAMES)
    assert [h.fields for h in got] == [
        section(raw, analyze(raw).parts, (), "HEADER.FIELDS", NAMES) for raw in raws
    ]


def test_a_message_expunged_between_the_two_reads_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    store.ensure_user("u")
    box = store.get_mailbox("u", "INBOX").id
    for i in range(3):
        store.append(box, _message(i))
    sources = heads.HeaderFieldReads._head_sources

    def expunging(self: MemoryStore, mailbox_id: int, uids: list[int]):  # type: ignore[no-untyped-def]
        store.store_flags(box, [2], "+", ["\\Deleted"])
        store.expunge(box)
        return sources(self, mailbox_id, uids)

    monkeypatch.setattr(MemoryStore, "_head_sources", expunging)
    assert [h.uid for h in store.message_header_fields(box, [1, 2, 3], NAMES)] == [1, 3]


def test_an_entry_of_exactly_the_entry_bound_is_kept() -> None:
    cache = HeadCache()
    cache.keep(NAMES, 1, {1: b"a" * HEAD_ENTRY_MAX, 2: b"b" * (HEAD_ENTRY_MAX + 1)})
    assert dict(cache.known(NAMES, 1)) == {1: b"a" * HEAD_ENTRY_MAX}
    assert cache.size == HEAD_ENTRY_MAX + HEAD_ENTRY_OVERHEAD


def test_the_shared_reads_bring_bodies_in_runs_of_at_most_the_source_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HeaderFieldReads._head_sources (memory and PostgreSQL) reads the messages not cut
    yet at most HEAD_SOURCE_BYTES at a time, always at least one message, and yields
    every one of them."""
    store = MemoryStore()
    store.ensure_user("u")
    box = store.get_mailbox("u", "INBOX").id
    raws = [_message(i, body=1000) for i in range(5)]
    for raw in raws:
        store.append(box, raw)
    size = len(raws[0])
    monkeypatch.setattr(heads, "HEAD_SOURCE_BYTES", 2 * size)  # two messages a read
    runs: list[list[int]] = []
    batch = store.message_bytes_batch

    def counting(mailbox_id: int, uids: list[int]) -> dict[int, bytes]:
        runs.append(list(uids))
        return batch(mailbox_id, uids)

    monkeypatch.setattr(store, "message_bytes_batch", counting)
    assert [uid for uid, _, _ in store._head_sources(box, [1, 2, 3, 4, 5])] == [1, 2, 3, 4, 5]
    assert runs == [[1, 2], [3, 4], [5]]
    runs.clear()
    monkeypatch.setattr(heads, "HEAD_SOURCE_BYTES", size - 1)  # below one message
    assert [uid for uid, _, _ in store._head_sources(box, [1, 2])] == [1, 2]
    assert runs == [[1], [2]]
