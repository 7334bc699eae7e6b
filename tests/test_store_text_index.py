"""SEARCH BODY/TEXT through the FTS5 trigram index gives exactly the scan's results.

The scan (``instr`` over the case-folded text, :mod:`gateway.store.search`) and the memory
backend's Python ``in`` are the reference: for random messages and needles (non-ASCII,
case-folding that changes length, NUL, short needles, quotes), the indexed search of
:mod:`gateway.store.sqlite_textindex` answers the same UIDs. Also: the index follows
expunge, move and mailbox deletion, and an upgraded store's backlog is indexed in
batches, interleaved with writes, without indexing anything twice or missing anything.
New messages wait in the backlog until :data:`INDEX_BATCH` of them are indexed together,
and a search finds them at every point of the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.criteria import Not, Or, Text
from gateway.store import steps as steps_module
from gateway.store.memory import MemoryStore
from gateway.store.schema import (
    DEFERRED_INDEX,
    FTS_AUTOMERGE,
    MIGRATIONS,
    TEXT_INDEX,
    migrate,
    schema_version,
)
from gateway.store.search import build_query
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_textindex import (
    AUTOMERGE,
    INDEX_BATCH,
    TABLE,
    UNINDEXED,
    backlog_done,
    index_backlog_step,
    indexable,
    migrate_text_index,
)

# Characters chosen to collide: ASCII case pairs, characters whose case folding changes
# length (ß -> ss, ﬃ -> ffi, İ -> i̇), a combining accent, quotes and operators FTS5 must
# escape, and NUL (which the FTS5 tokenizer stops at).
ALPHABET = "abcABC sSßẞﬃfiİı\u0307é\u0301\"'*:{}()-\n\x00"
texts = st.text(alphabet=ALPHABET, max_size=40)
needles = st.text(alphabet=ALPHABET, min_size=0, max_size=6)


def mail(subject: str, body: str) -> bytes:
    """A UTF-8 message (RFC 6532 header, 8bit body) with ``subject`` and ``body`` as text."""
    head = f"Subject: {subject.replace(chr(10), ' ')}\r\nMIME-Version: 1.0\r\n"
    head += "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    return (head + "\r\n" + body.replace("\n", "\r\n") + "\r\n").encode("utf-8")


def searches(store, mailbox_id: int, needle: str) -> dict[str, list[int]]:
    """Every text criterion's answer for ``needle`` (alone, negated, or-ed)."""
    return {
        f"{where} {shape}": store.search(mailbox_id, criteria)
        for where in ("BODY", "TEXT")
        for shape, criteria in (
            ("plain", Text(where, needle)),
            ("not", Not(Text(where, needle))),
            ("or", Or(Text(where, needle), Text("BODY", needle[::-1]))),
        )
    }


@contextmanager
def scanning() -> Iterator[None]:
    """The SQLite store's searches compiled without the index (the scan of before)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            steps_module,  # where the SQL stores compile SEARCH (store/steps.py)
            "build_query",
            lambda *a, **k: build_query(*a, **{**k, "text_index": False}),
        )
        yield


def index_waiting(store: SQLiteStore) -> None:
    """Index every message waiting in the backlog now, as a full batch would."""
    while not store.index_text_step():
        pass


def sqlite_store(tmp_path: Path, name: str) -> SQLiteStore:
    path = tmp_path / name
    if path.exists():
        path.unlink()
    return SQLiteStore(path)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=st.lists(st.tuples(texts, texts), min_size=1, max_size=6),
    needle=needles,
    pick=st.integers(min_value=0),
)
def test_indexed_search_equals_scan_and_memory(tmp_path, messages, needle, pick):
    """For random messages and needles (also one cut out of a message, so hits are
    common), the FTS-backed result equals the scan and the memory backend."""
    subject, body = messages[pick % len(messages)]
    source = subject + body
    if source:
        start = pick % len(source)
        candidates = [needle, source[start : start + 3 + pick % 4]]
    else:
        candidates = [needle]
    memory = MemoryStore()
    memory.ensure_user("u")
    mem_box = memory.get_mailbox("u", "INBOX").id
    with sqlite_store(tmp_path, "prop.sqlite3") as store:
        store.ensure_user("u")
        box = store.get_mailbox("u", "INBOX").id
        for subject, body in messages:
            store.append(box, mail(subject, body))
            memory.append(mem_box, mail(subject, body))
        for indexed_yet in (False, True):  # waiting in the backlog, then in the index
            if indexed_yet:
                index_waiting(store)
            for candidate in candidates:
                indexed = searches(store, box, candidate)
                with scanning():
                    scanned = searches(store, box, candidate)
                assert indexed == scanned, candidate
                assert indexed == searches(memory, mem_box, candidate), candidate


def test_needles_the_index_cannot_answer_go_to_the_scan():
    assert indexable("abc")
    assert not indexable("ab")  # no trigram
    assert not indexable("a\x00bc")  # FTS5 queries cannot hold NUL


def test_non_ascii_case_folding_matches_like_the_scan(tmp_path):
    with sqlite_store(tmp_path, "fold.sqlite3") as store:
        store.ensure_user("u")
        box = store.get_mailbox("u", "INBOX").id
        uid = store.append(box, mail("Grüße aus KÖLN", "Straße und ΣΊΣΥΦΟΣ"))
        for needle in ("STRASSE", "grüsse", "köln", "σίσυφοσ", "ße und"):
            assert store.search(box, Text("TEXT", needle)) == [uid], needle
        assert store.search(box, Text("BODY", "köln")) == []  # header only
        assert store.search(box, Text("BODY", "strasse")) == [uid]


def index_rows(store: SQLiteStore) -> set[int]:
    """Message ids the FTS5 index has terms for (read from its own doc-size table)."""
    return {r[0] for r in store.db.execute(f"SELECT id FROM {TABLE}_docsize")}


def test_the_index_follows_expunge_move_and_mailbox_deletion(tmp_path):
    with sqlite_store(tmp_path, "sync.sqlite3") as store:
        store.ensure_user("u")
        inbox = store.get_mailbox("u", "INBOX").id
        store.create_mailbox("u", "Other")
        other = store.get_mailbox("u", "Other").id
        uids = [store.append(inbox, mail(f"s{n}", f"needle{n} body")) for n in range(4)]
        index_waiting(store)
        assert len(index_rows(store)) == 4
        store.store_flags(inbox, uids[:1], "+", {"\\Deleted"})
        store.expunge(inbox, uids[:1])
        assert len(index_rows(store)) == 3
        assert store.search(inbox, Text("BODY", "needle0")) == []
        store.copy(inbox, uids[1:2], other)
        store.copy(inbox, uids[2:3], other, move=True)
        assert len(index_rows(store)) == 3  # copies share the message row
        assert store.search(other, Text("BODY", "body")) == [1, 2]
        store.delete_mailbox("u", "Other")
        assert store.search(inbox, Text("BODY", "needle")) == [uids[1], uids[3]]
        assert len(index_rows(store)) == 2


def test_an_upgraded_store_indexes_its_backlog_in_batches(tmp_path):
    """Messages stored before the index existed are indexed batch by batch; messages
    added and removed meanwhile are each indexed exactly once, a text holding NUL stays
    out of the index, and searches give the same answers at every step."""
    path = tmp_path / "old.sqlite3"
    previous = MIGRATIONS[: MIGRATIONS.index(TEXT_INDEX)]  # the version before the index
    with pytest.MonkeyPatch.context() as mp:
        # Fill the file at the previous version: the store opened before the index migration.
        mp.setattr("gateway.store.sqlite.connection.migrate", lambda c: migrate(c, previous))
        mp.setattr(SQLiteStore, "_index_text_backlog", lambda self: None)
        with SQLiteStore(path) as old:
            old.ensure_user("u")
            box = old.get_mailbox("u", "INBOX").id
            uids = [old.append(box, mail(f"old {n}", f"word{n % 3} text")) for n in range(10)]
            nul = old.append(box, mail("nul", "word1\x00 after"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SQLiteStore, "_index_text_backlog", lambda self: None)
        store = SQLiteStore(path)  # migrated; the backlog is left for this test to index
    expected = [uids[1], uids[4], uids[7], nul]
    try:
        db = store.db
        assert schema_version(db) == len(MIGRATIONS)
        assert not backlog_done(db)
        assert index_rows(store) == set()
        assert store.search(box, Text("BODY", "word1")) == expected
        # Interleave: index two, expunge one not yet indexed and one indexed, add more.
        db.execute("BEGIN IMMEDIATE")
        assert not index_backlog_step(db, batch=2)
        db.execute("COMMIT")
        assert store.search(box, Text("BODY", "word1")) == expected
        store.store_flags(box, [uids[0], uids[7]], "+", {"\\Deleted"})
        store.expunge(box, [uids[0], uids[7]])
        new = store.append(box, mail("new", "word1 fresh"))
        expected = [uids[1], uids[4], nul, new]
        assert store.search(box, Text("BODY", "word1")) == expected
        steps = 0
        while True:
            db.execute("BEGIN IMMEDIATE")
            done = index_backlog_step(db, batch=3)
            db.execute("COMMIT")
            steps += 1
            assert store.search(box, Text("BODY", "word1")) == expected
            if done:
                break
        # 9 left, 3 per batch: 11 - 2 indexed - uids[7] expunged + the new one (a new
        # message waits in the backlog too, sqlite_textindex.INDEX_BATCH).
        assert steps == 3
        assert backlog_done(db)
        live = {r[0] for r in db.execute("SELECT message_id FROM message_text")}
        unindexed = {r[0] for r in db.execute(f"SELECT message_id FROM {UNINDEXED}")}
        assert len(unindexed) == 1 and index_rows(store) == live - unindexed
        assert store.search(box, Text("TEXT", "after")) == [nul]
    finally:
        store.close()
    with SQLiteStore(path) as again:
        assert again.search(box, Text("TEXT", "OLD 4")) == [uids[4]]


def test_rerunning_the_migration_rebuilds_the_index(tmp_path):
    """A version number set back by hand re-runs the migration: the index is built
    afresh (backlog of everything), never with a message twice."""
    with sqlite_store(tmp_path, "again.sqlite3") as store:
        store.ensure_user("u")
        box = store.get_mailbox("u", "INBOX").id
        uid = store.append(box, mail("one", "alpha beta"))
        db = store.db
        db.execute("BEGIN IMMEDIATE")
        migrate_text_index(db)
        assert not index_backlog_step(db, batch=0)
        assert index_backlog_step(db)
        db.execute("COMMIT")
        db.execute(f"INSERT INTO {TABLE} ({TABLE}, rank) VALUES ('integrity-check', 1)")
        assert store.search(box, Text("BODY", "pha b")) == [uid]


def waiting(store: SQLiteStore) -> set[int]:
    """Message ids listed in the backlog (to be indexed)."""
    return {r[0] for r in store.db.execute(f"SELECT message_id FROM {UNINDEXED} WHERE backlog = 1")}


def test_a_search_right_after_an_append_finds_it_before_and_after_its_batch(tmp_path):
    """An APPENDed message waits in the backlog, in the same transaction as the message;
    SEARCH BODY/TEXT finds it at once (scanned) and after the write that completes a
    batch of INDEX_BATCH has indexed them all in one statement."""
    with sqlite_store(tmp_path, "batch.sqlite3") as store:
        store.ensure_user("u")
        box = store.get_mailbox("u", "INBOX").id
        uids = []
        for n in range(INDEX_BATCH - 1):
            uids.append(store.append(box, mail(f"subject {n}", f"needle{n:03d} body")))
            assert store.search(box, Text("BODY", f"needle{n:03d}")) == [uids[-1]]
            assert store.search(box, Text("TEXT", f"SUBJECT {n}")) == [uids[-1]]
        assert index_rows(store) == set()
        assert len(waiting(store)) == INDEX_BATCH - 1
        last = store.append(box, mail("last", "needle999 body"))
        assert waiting(store) == set()
        assert len(index_rows(store)) == INDEX_BATCH
        assert store.search(box, Text("BODY", "needle999")) == [last]
        assert store.search(box, Text("BODY", "needle00")) == uids[:10]
        store.db.execute(f"INSERT INTO {TABLE} ({TABLE}, rank) VALUES ('integrity-check', 1)")


def test_a_message_expunged_or_holding_nul_before_its_batch_keeps_the_index_exact(tmp_path):
    """Expunged while waiting: never indexed, its backlog entry goes with it. A text
    holding NUL stays listed (scanned for good). The batch indexes the rest, once."""
    with sqlite_store(tmp_path, "edge.sqlite3") as store:
        store.ensure_user("u")
        box = store.get_mailbox("u", "INBOX").id
        gone = store.append(box, mail("gone", "word gone"))
        nul = store.append(box, mail("nul", "word\x00 nul"))
        kept = store.append(box, mail("kept", "word kept"))
        store.store_flags(box, [gone], "+", {"\\Deleted"})
        store.expunge(box, [gone])
        assert store.search(box, Text("BODY", "word")) == [nul, kept]
        count = INDEX_BATCH - 3  # with the three above: one batch
        more = [store.append(box, mail(f"m{n}", f"other {n}")) for n in range(count)]
        assert waiting(store) == set()
        listed = {r[0] for r in store.db.execute(f"SELECT message_id FROM {UNINDEXED}")}
        assert len(listed) == 1  # the NUL text, scanned for good
        assert len(index_rows(store)) == count + 1  # kept and the others
        assert store.search(box, Text("BODY", "word")) == [nul, kept]
        assert store.search(box, Text("BODY", "other 3")) == [more[3]]
        with scanning():
            assert store.search(box, Text("BODY", "word")) == [nul, kept]


def test_messages_waiting_when_the_store_closes_are_indexed_when_it_opens(tmp_path):
    """A batch not yet complete when the process ends (or crashes: the backlog commits
    with each message) is indexed by the next open, before it serves."""
    path = tmp_path / "reopen.sqlite3"
    with SQLiteStore(path) as store:
        store.ensure_user("u")
        box = store.get_mailbox("u", "INBOX").id
        uids = [store.append(box, mail(f"s{n}", f"needle{n} body")) for n in range(3)]
        assert len(waiting(store)) == 3
    with SQLiteStore(path) as again:
        assert waiting(again) == set()
        assert len(index_rows(again)) == 3
        assert again.search(box, Text("BODY", "needle1")) == [uids[1]]


def test_a_store_upgraded_to_batched_indexing_keeps_what_it_indexed(tmp_path):
    """Messages indexed one by one before the upgrade stay indexed; from it on, new ones
    wait for their batch; searches agree with the scan throughout."""
    path = tmp_path / "upgrade.sqlite3"
    previous = MIGRATIONS[: MIGRATIONS.index(DEFERRED_INDEX)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gateway.store.sqlite.connection.migrate", lambda c: migrate(c, previous))
        with SQLiteStore(path) as old:
            old.ensure_user("u")
            box = old.get_mailbox("u", "INBOX").id
            before = [old.append(box, mail(f"old {n}", f"word{n} old")) for n in range(3)]
            assert len(index_rows(old)) == 3  # indexed by the insert trigger of before
    with SQLiteStore(path) as store:
        assert schema_version(store.db) == len(MIGRATIONS)
        new = store.append(box, mail("new", "word1 new"))
        assert len(index_rows(store)) == 3 and waiting(store) == {new}
        assert store.search(box, Text("BODY", "word1")) == [before[1], new]
        with scanning():
            assert store.search(box, Text("BODY", "word1")) == [before[1], new]
        index_waiting(store)
        assert len(index_rows(store)) == 4
        assert store.search(box, Text("BODY", "word1")) == [before[1], new]


def test_the_index_merges_segments_eight_at_a_time_on_new_and_upgraded_stores(tmp_path):
    """Schema version 15 (issue 19, session 7): FTS5's automerge is AUTOMERGE (8, not its
    default 4: about half the merge work per APPEND), on a new store and on one upgraded
    from version 14, and searches stay exact across many batches."""
    new = sqlite_store(tmp_path, "new")
    path = tmp_path / "old.sqlite3"
    with pytest.MonkeyPatch.context() as mp:
        previous = MIGRATIONS[: MIGRATIONS.index(FTS_AUTOMERGE)]
        mp.setattr("gateway.store.sqlite.connection.migrate", lambda c: migrate(c, previous))
        with SQLiteStore(path) as old:
            assert schema_version(old.db) == len(previous)
    upgraded = SQLiteStore(path)
    try:
        for store in (new, upgraded):
            db = store.db
            assert schema_version(db) == len(MIGRATIONS)
            (value,) = db.execute(
                "SELECT v FROM message_text_index_config WHERE k = 'automerge'"
            ).fetchone()
            assert value == AUTOMERGE == 8
        new.ensure_user("u")
        box = new.get_mailbox("u", "INBOX").id
        uids = [new.append(box, mail(f"s {n}", f"word{n % 7} body {n}")) for n in range(300)]
        index_waiting(new)
        assert new.search(box, Text("BODY", "word3")) == uids[3::7]
        with scanning():
            assert new.search(box, Text("BODY", "word3")) == uids[3::7]
    finally:
        new.close()
        upgraded.close()
