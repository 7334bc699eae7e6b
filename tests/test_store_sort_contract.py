"""The store's SORT and THREAD reads as a contract, run on every backend (RFC 5256).

Written once, checked on SQLite (ORDER BY over the ``sort_key`` table) and in memory
(Python ordering), against a brute-force reference ordering computed here from the
corpus' own keys; plus the schema step that fills ``sort_key`` for mail stored before it.
"""

from __future__ import annotations

import datetime
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.criteria import All, Flag, Header, Not
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.message.analysis import analyze
from gateway.store.interfaces import Sorting, Store
from gateway.store.memory import MemoryStore
from gateway.store.sorting import migrate_sort_keys
from gateway.store.sqlite import SQLiteStore
from gateway.testing.threadmail import thread_corpus

CORPUS = thread_corpus(150, seed=17)
ANALYSES = [analyze(mail.raw) for mail in CORPUS]

BACKENDS = {
    "sqlite": lambda path: SQLiteStore(path / "store.db"),
    "memory": lambda path: MemoryStore(),
}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, int]]:
    """One filled store per backend for the module: the tests only read."""
    store = BACKENDS[request.param](tmp_path_factory.mktemp(request.param))
    store.ensure_user("alice")
    box = store.get_mailbox("alice", "INBOX").id
    for mail in CORPUS:
        store.append(box, mail.raw, (), mail.internaldate)
    yield store, box
    store.close()


def _reference_key(name: str, uid: int) -> object:
    """The RFC 5256 key of one corpus message, computed without any store."""
    mail = CORPUS[uid - 1]
    keys = ANALYSES[uid - 1].sort
    sent = ANALYSES[uid - 1].sent_date
    return {
        "ARRIVAL": int(mail.internaldate.timestamp()),
        "DATE": int((sent or mail.internaldate).timestamp()),
        "SIZE": len(mail.raw),
        "SUBJECT": keys.subject.encode(),
        "FROM": keys.from_.encode(),
        "TO": keys.to.encode(),
        "CC": keys.cc.encode(),
        "DISPLAYFROM": keys.display_from.encode(),
        "DISPLAYTO": keys.display_to.encode(),
    }[name]


def _reference_sort(program: list[SortCriterion], uids: list[int]) -> list[int]:
    """Stable sorts from the last key to the first: ties keep ascending UID (§3)."""
    out = sorted(uids)
    for criterion in reversed(program):
        out.sort(key=lambda u, k=criterion.key: _reference_key(k, u), reverse=criterion.reverse)
    return out


def test_backend_has_the_sorting_protocol(filled: tuple[Store, int]) -> None:
    store, _ = filled
    assert isinstance(store, Sorting)


@pytest.mark.parametrize("seed", range(12))
def test_sort_matches_the_reference_ordering(filled: tuple[Store, int], seed: int) -> None:
    """Random programs of one to three keys, REVERSE anywhere: the store's order is the
    reference's, ties broken by ascending UID whatever REVERSE says (RFC 5256 §3)."""
    store, box = filled
    rng = random.Random(seed)
    names = ["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"]
    program = [
        SortCriterion(rng.choice(names), rng.random() < 0.4) for _ in range(rng.randrange(1, 4))
    ]
    everything = list(range(1, len(CORPUS) + 1))
    assert store.sort(box, All(), program) == _reference_sort(program, everything)


def test_sort_applies_search_criteria(filled: tuple[Store, int]) -> None:
    store, box = filled
    criteria = Not(Header("subject", "re"))
    wanted = store.search(box, criteria)
    program = [SortCriterion("SUBJECT"), SortCriterion("DATE", True)]
    assert store.sort(box, criteria, program) == _reference_sort(program, wanted)


def test_unknown_sort_key_is_refused(filled: tuple[Store, int]) -> None:
    store, box = filled
    with pytest.raises(ValueError):
        store.sort(box, All(), [SortCriterion("COLOUR")])


def test_thread_facts_carry_sent_date_subject_and_ids(filled: tuple[Store, int]) -> None:
    """What THREAD needs, ascending UID: sent date with the INTERNALDATE fallback (RFC 5256
    §2.2), the case-mapped base subject, msg-ids without brackets."""
    store, box = filled
    facts = store.thread_facts(box, All())
    assert [f.uid for f in facts] == list(range(1, len(CORPUS) + 1))
    for fact in facts:
        mail = CORPUS[fact.uid - 1]
        keys = ANALYSES[fact.uid - 1].sort
        assert fact == ThreadFacts(
            fact.uid,
            _reference_key("DATE", fact.uid),  # type: ignore[arg-type]
            keys.subject,
            keys.reply_or_forward,
            keys.message_id,
            keys.references,
        )
        assert fact.message_id == mail.message_id


def test_empty_mailbox_sorts_to_nothing(tmp_path: Path) -> None:
    for opener in BACKENDS.values():
        store = opener(tmp_path)
        store.ensure_user("bob")
        box = store.get_mailbox("bob", "INBOX").id
        assert store.sort(box, All(), [SortCriterion("DATE")]) == []
        assert store.thread_facts(box, All()) == []
        store.close()


def test_schema_step_fills_sort_keys_for_mail_stored_before_it(tmp_path: Path) -> None:
    """The schema step run on a file whose messages predate the sort_key table fills it
    with keys computed from the stored bytes: SORT then answers as for mail stored after."""
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    store.ensure_user("alice")
    box = store.get_mailbox("alice", "INBOX").id
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    for mail in CORPUS[:40]:
        store.append(box, mail.raw, (), when)
    program = [SortCriterion("SUBJECT"), SortCriterion("FROM", True)]
    expected = store.sort(box, All(), program)
    expected_facts = store.thread_facts(box, All())
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DROP TABLE sort_key")
    migrate_sort_keys(conn)
    conn.execute("COMMIT")
    conn.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.sort(box, All(), program) == expected
        assert reopened.thread_facts(box, All()) == expected_facts
    finally:
        reopened.close()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_sort_answers_follow_every_change(tmp_path: Path, name: str) -> None:
    """The same SORT asked again after a delivery, a flag change and an expunge sees each
    change (the SQLite store keeps each mailbox order only while its membership stands,
    and filters it by the criteria's matches of the moment)."""
    store = BACKENDS[name](tmp_path)
    store.ensure_user("alice")
    box = store.get_mailbox("alice", "INBOX").id
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    for subject in (b"b", b"a"):
        store.append(box, b"Subject: " + subject + b"\r\n\r\nx\r\n", (), when)
    program = [SortCriterion("SUBJECT")]
    unseen = Not(Flag("\\Seen"))
    assert store.sort(box, unseen, program) == [2, 1]
    assert store.sort(box, unseen, program) == [2, 1]  # asked again, unchanged
    store.append(box, b"Subject: 0\r\n\r\nx\r\n", (), when)
    assert store.sort(box, unseen, program) == [3, 2, 1]
    store.store_flags(box, [2], "+", ["\\Seen"])
    assert store.sort(box, unseen, program) == [3, 1]
    store.store_flags(box, [3], "+", ["\\Deleted"])
    store.expunge(box)
    assert store.sort(box, unseen, program) == [1]
    assert store.sort(box, All(), program) == [2, 1]
    store.close()


def _sqlite_and_reference(tmp_path: Path) -> tuple[SQLiteStore, MemoryStore, list[int]]:
    """A SQLite store and the memory backend (the reference model), each with alice's
    INBOX: the kept-order tests feed both the same changes and compare the answers."""
    sqlite_store, memory_store = SQLiteStore(tmp_path / "store.db"), MemoryStore()
    boxes = []
    for store in (sqlite_store, memory_store):
        store.ensure_user("alice")
        boxes.append(store.get_mailbox("alice", "INBOX").id)
    return sqlite_store, memory_store, boxes


def test_kept_orders_follow_deliveries_and_expunges_as_a_fresh_sort(tmp_path: Path) -> None:
    """The SQLite store brings a kept order up to date after small changes (expunged
    UIDs dropped, new ones placed by binary search) and recomputes after big ones: the
    answers stay those of the memory backend, fed the same changes, for plain, reversed
    and multi-key programs."""
    sqlite_store, memory_store, boxes = _sqlite_and_reference(tmp_path)
    stores = (sqlite_store, memory_store)
    programs = [
        [SortCriterion("SUBJECT")],
        [SortCriterion("FROM", reverse=True), SortCriterion("DATE")],
        [SortCriterion("ARRIVAL", reverse=True)],
        [SortCriterion("SIZE"), SortCriterion("SUBJECT", reverse=True)],
    ]
    rng = random.Random(5)
    mails = list(CORPUS)
    rng.shuffle(mails)
    position = 0

    def deliver(count: int) -> None:
        nonlocal position
        for mail in mails[position : position + count]:
            for store, box in zip(stores, boxes, strict=True):
                store.append(box, mail.raw, (), mail.internaldate)
        position += count

    def check() -> None:
        for program in programs:
            for criteria in (All(), Not(Flag("\\Deleted"))):
                ours, reference = (
                    s.sort(b, criteria, program) for s, b in zip(stores, boxes, strict=True)
                )
                assert ours == reference, program

    deliver(40)
    check()
    for step in range(12):
        present = sqlite_store.sort(boxes[0], All(), [SortCriterion("ARRIVAL")])
        doomed = rng.sample(sorted(present), k=rng.choice([0, 1, 3]))
        if doomed:
            for store, box in zip(stores, boxes, strict=True):
                store.store_flags(box, doomed, "+", ["\\Deleted"])
                if step % 3:
                    store.expunge(box)
        deliver(rng.choice([0, 1, 2, 70 if step == 6 else 5]))
        check()
    sqlite_store.close()


def test_kept_orders_are_patched_up_to_max_placed_and_bounded_in_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two limits of the SQLite store's kept orders, at their edges: up to
    ``MAX_PLACED`` new messages are placed into a kept order, one more recomputes it;
    ``SORT_CACHE_ENTRIES`` orders are kept, the least recently used beyond that is
    dropped. Answers equal the memory backend's every time."""
    from gateway.store.sqlite import sorting as sqlite_sorting

    recomputed: list[str] = []
    original = SQLiteStore._sorted_in

    def counting(self, conn, mailbox_id, criteria, columns, order, viewer):  # type: ignore[no-untyped-def]
        if order != "mm.uid":  # a whole mailbox order, not the criteria's matches
            recomputed.append(order)
        return original(self, conn, mailbox_id, criteria, columns, order, viewer)

    monkeypatch.setattr(SQLiteStore, "_sorted_in", counting)
    sqlite_store, memory_store, boxes = _sqlite_and_reference(tmp_path)
    stores = (sqlite_store, memory_store)
    mails = iter(CORPUS)

    def deliver(count: int) -> None:
        for mail in [next(mails) for _ in range(count)]:
            for store, box in zip(stores, boxes, strict=True):
                store.append(box, mail.raw, (), mail.internaldate)

    def sort(program: list[SortCriterion]) -> list[int]:
        ours, reference = (s.sort(b, All(), program) for s, b in zip(stores, boxes, strict=True))
        assert ours == reference
        return ours

    subject = [SortCriterion("SUBJECT")]
    deliver(10)
    sort(subject)
    assert len(recomputed) == 1
    deliver(sqlite_sorting.MAX_PLACED)
    sort(subject)
    assert len(recomputed) == 1  # placed into the kept order
    deliver(sqlite_sorting.MAX_PLACED + 1)
    sort(subject)
    assert len(recomputed) == 2  # one too many: computed afresh

    programs = [
        [SortCriterion("SIZE"), SortCriterion("ARRIVAL", reverse=reverse), SortCriterion(key)]
        for reverse in (False, True)
        for key in ("SUBJECT", "FROM", "DATE", "TO", "CC")
    ][: sqlite_sorting.SORT_CACHE_ENTRIES]
    for program in programs:  # with ``subject``: one more than the store keeps
        sort(program)
    before = len(recomputed)
    sort(programs[-1])  # most recently used: kept
    assert len(recomputed) == before
    sort(subject)  # least recently used: dropped
    assert len(recomputed) == before + 1
    sqlite_store.close()
