"""How many statements the PostgreSQL store's hot reads send (each is a round trip on a
store thread, the queue every IMAP command of a PostgreSQL node waits in; bench/README.md,
"PostgreSQL mix tail, session 3").

SELECT's two reads and a SEARCH without ``*`` are one statement each in autocommit; a
SEARCH with a ``*`` UID set still reads the largest UID in the same snapshot; a catch-up
of a mailbox the node knows unchanged sends none. The answers themselves are the
contract suite's (tests/test_store_contract.py runs on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from gateway.core.criteria import Flag, Header, SeqRange, SequenceSet, Text, Uid
from gateway.store import heads
from gateway.store.errors import MailboxNotFound
from gateway.store.heads import HeaderFieldReads
from gateway.store.interfaces import INBOX
from gateway.store.postgres import PostgresStore
from gateway.store.postgres import messages as pg_messages
from gateway.store.postgres.rows import POSTGRESQL
from gateway.store.search import SQLITE, build_query
from gateway.testing.messages import message
from gateway.testing.postgres import StatementLog, user_store

STAR = Uid(SequenceSet((SeqRange(2, None),)))


def test_a_query_says_whether_it_used_the_largest_uid() -> None:
    assert build_query(1, STAR, 0, dialect=POSTGRESQL).uses_largest
    assert not build_query(1, Uid(SequenceSet((SeqRange(2, 5),))), 0).uses_largest
    assert not build_query(1, Flag("\\Seen", True), 0).uses_largest


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    with user_store("alice") as s:
        yield s


@pytest.mark.postgres
def test_selects_reads_and_a_plain_search_are_one_statement_each(store, monkeypatch) -> None:
    box = store.get_mailbox("alice", INBOX).id
    first = store.append(box, message(subject="one"))
    store.append(box, message(subject="two"), flags=["\\Seen"])
    counted = StatementLog(monkeypatch)
    uids, sent = counted(store.message_uids, box)
    assert list(uids) == [first, first + 1] and sent == 1
    summary, sent = counted(store.selection_summary, box)
    assert list(summary.recent) == [first, first + 1] and sent == 1
    assert summary.first_unseen_uid == first
    found, sent = counted(store.search, box, Flag("\\Seen", True))
    assert found == [first + 1] and sent == 1
    found, sent = counted(store.search, box, STAR)
    assert found == [first + 1] and sent > 1  # the largest UID first, one snapshot


@pytest.mark.postgres
def test_an_empty_or_missing_mailbox_is_told_apart(store) -> None:
    empty = store.create_mailbox("alice", "Empty").id
    assert list(store.message_uids(empty)) == []
    assert store.search(empty, Flag("\\Seen", True)) == []
    store.delete_mailbox("alice", "Empty")
    for read in (store.message_uids, store.selection_summary):
        with pytest.raises(MailboxNotFound):
            read(empty)
    with pytest.raises(MailboxNotFound):
        store.search(empty, Flag("\\Seen", True))


@pytest.mark.postgres
def test_a_catch_up_the_node_knows_unchanged_sends_nothing(store, monkeypatch) -> None:
    box = store.get_mailbox("alice", INBOX).id
    store.clear_recent(box, [store.append(box, message())])  # \Recent rows are never kept
    store.change_logs.trust()  # as the LISTEN bridge does once it has caught up
    counted = StatementLog(monkeypatch)
    head = store.changes_since(box, 0).highestmodseq
    _changes, sent = counted(store.changes_since, box, head)
    assert sent == 0
    store.store_flags(box, [1], "+", ["\\Flagged"])  # this node's own write feeds the log
    changes, sent = counted(store.changes_since, box, head)
    assert [r.uid for r in changes.changed] == [1] and sent == 0
    store.change_logs.changed([box])  # a change heard from another node
    again, sent = counted(store.changes_since, box, head)
    assert again == changes and sent == 1


@pytest.mark.postgres
def test_a_store_is_one_statement_and_one_that_changes_nothing_writes_nothing(
    store, monkeypatch
) -> None:
    """A mailbox that is not shared: one call of the server-side function (the lock, the
    rows, the writes and the notice in one round trip); a STORE that changes no flag
    moves no modseq and commits nothing durable (synchronous_commit off in the call)."""
    box = store.get_mailbox("alice", INBOX).id
    uid = store.append(box, message())
    statements = StatementLog(monkeypatch).sent
    result = store.store_flags(box, [uid], "+", ["\\Seen"])
    assert [r.uid for r in result.updated] == [uid]
    assert len(statements) == 1 and b"popgate_store_flags(" in statements[0]
    head = store.counts(box).highestmodseq
    statements.clear()
    assert store.store_flags(box, [uid], "+", ["\\Seen"]).updated == []
    assert len(statements) == 1 and store.counts(box).highestmodseq == head


@pytest.mark.postgres
def test_a_store_in_a_shared_mailbox_is_two_round_trips_and_a_no_op_commits_nothing(
    store, monkeypatch
) -> None:
    """BEGIN, the lock and the rows in one round trip; then the writes with COMMIT, or
    a ROLLBACK when no flag changes (no durable commit for a no-op)."""
    store.ensure_user("shared:team")
    box = store.get_mailbox("shared:team", INBOX).id
    uid = store.append(box, message())
    statements = StatementLog(monkeypatch).sent
    result = store.store_flags(box, [uid], "+", ["\\Flagged"], viewer="alice")
    assert [r.uid for r in result.updated] == [uid] and statements[-1] == b"COMMIT"
    statements.clear()
    assert store.store_flags(box, [uid], "+", ["\\Flagged"], viewer="alice").updated == []
    assert statements[-1] == b"ROLLBACK" and not any(s.startswith(b"UPDATE") for s in statements)


@pytest.mark.postgres
def test_a_store_hands_back_the_rows_it_left_alone_as_message_flags_reads_them(store) -> None:
    """STORE's untagged FETCH of the messages it did not change (RFC 3501 §6.4.6) needs
    no second read: the rows read under the lock come back, equal to ``message_flags``."""
    box = store.get_mailbox("alice", INBOX).id
    uids = [store.append(box, message()) for _ in range(3)]
    store.store_flags(box, [uids[0]], "+", ["\\Seen"])  # the mailbox's kind now known
    store.store_flags(box, [uids[1]], "+", ["\\Flagged"])
    result = store.store_flags(box, uids, "+", ["\\Seen"])
    assert [r.uid for r in result.updated] == uids[1:]
    assert result.unchanged == store.message_flags(box, uids[:1])
    result = store.store_flags(box, uids, "+", ["\\Seen"])  # nothing to change
    assert result.updated == [] and result.unchanged == store.message_flags(box, uids)


@pytest.mark.postgres
@pytest.mark.parametrize("lazy", [False, True])
def test_flag_only_commits_are_asynchronous_under_optimized_flag_fsync(
    store, monkeypatch, lazy: bool
) -> None:
    """``[store] flag_fsync = "optimized"`` (the default; ``lazy_flags``): STORE and the
    \\Recent claim commit with ``synchronous_commit = off``, as SQLite mode answers them
    before their fsync; an APPEND never does (a message is always durable before its
    OK). The change is committed and seen by other connections either way."""
    store.lazy_flags = lazy
    box = store.get_mailbox("alice", INBOX).id
    statements = StatementLog(monkeypatch).sent
    uid = store.append(box, message())
    uid2 = store.append(box, message())
    assert not any(b"synchronous_commit" in s for s in statements)
    # Every pooled connection (two in a test store) last served a read-only snapshot:
    # the claim still writes (its transaction says READ WRITE itself).
    with store._read() as a, store._read() as b:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
    statements.clear()
    assert store.clear_recent(box, [uid, uid2]) == [uid, uid2]
    assert store.clear_recent(box, [uid]) == []
    # One statement each (one round trip): the setting local to its own transaction.
    asynchronous = [s for s in statements if b"set_config('synchronous_commit', 'off', true)" in s]
    assert len(asynchronous) == (2 if lazy else 0) and len(statements) == 2
    statements.clear()
    store.store_flags(box, [uid], "+", ["\\Flagged"])  # the mailbox's kind now known
    calls: list[tuple] = []
    original = psycopg.Cursor.execute

    def execute(cursor, query, params=None, *args, **kwargs):
        if b"popgate_store_flags(" in (query if isinstance(query, bytes) else query.encode()):
            calls.append(tuple(params))
        return original(cursor, query, params, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    result = store.store_flags(box, [uid], "+", ["\\Seen"])
    assert [r.uid for r in result.updated] == [uid]
    assert len(calls) == 1 and calls[0][6] is lazy  # the function's p_lazy
    with store._cursor() as cur:  # the function sets it only when lazy (or a no-op)
        cur.execute("SELECT prosrc FROM pg_proc WHERE proname = 'popgate_store_flags'")
        (source,) = cur.fetchone()
    assert "IF v_written = 0 OR p_lazy THEN" in source
    assert "set_config('synchronous_commit', 'off', true)" in source
    store.ensure_user("shared:team")  # a shared mailbox: the two-round-trip STORE
    team = store.get_mailbox("shared:team", INBOX).id
    other_uid = store.append(team, message())
    store.store_flags(team, [other_uid], "+", ["\\Draft"], viewer="alice")
    statements.clear()
    result = store.store_flags(team, [other_uid], "+", ["\\Flagged"], viewer="alice")
    assert [r.uid for r in result.updated] == [other_uid] and statements[-1] == b"COMMIT"
    assert (b"SET LOCAL synchronous_commit = off" in statements) is lazy
    monkeypatch.undo()
    with psycopg.connect(store.dsn, autocommit=True, **store.connect_kwargs) as other:
        seen = other.execute(
            "SELECT recent FROM mailbox_message WHERE mailbox_id = %s AND uid = %s",
            (box, uid),
        ).fetchone()
    assert seen == (0,)  # the claim committed, seen from another connection
    assert {"\\Seen", "\\Flagged"} <= set(store.message_flags(box, [uid])[0].flags)


NAMES = ("FROM", "SUBJECT", "DATE")


@pytest.mark.postgres
def test_a_list_view_is_one_statement_cut_or_not_and_reads_as_the_shared_reads(
    store, monkeypatch
) -> None:
    """``message_header_fields`` (the list view's FETCH): one statement whether the
    fields are kept already or not (the header octets of the uncut ones come in the same
    round trip); the answer is the shared reads' (:class:`HeaderFieldReads`)."""
    box = store.get_mailbox("alice", INBOX).id
    uids = [store.append(box, message(subject=f"s{i}")) for i in range(6)]
    store.store_flags(box, [uids[2]], "+", ["\\Seen"])
    expected = HeaderFieldReads.message_header_fields(store, box, uids, NAMES)
    store._head_cache_instance = None  # nothing kept
    counted = StatementLog(monkeypatch)
    heads_, sent = counted(store.message_header_fields, box, uids[:3], NAMES)
    assert heads_ == expected[:3] and sent == 1
    heads_, sent = counted(store.message_header_fields, box, uids, NAMES)  # three kept
    assert heads_ == expected and sent == 1
    heads_, sent = counted(store.message_header_fields, box, uids, NAMES)  # all kept
    assert heads_ == expected and sent == 1
    assert b"content" not in counted.sent[-1]


@pytest.mark.postgres
def test_a_list_view_brings_header_octets_within_the_source_bound(store, monkeypatch) -> None:
    """Octets for a leading run of the uncut messages within HEAD_SOURCE_BYTES (at least
    one); the others are read as the shared reads read them, in bounded runs."""
    box = store.get_mailbox("alice", INBOX).id
    uids = [store.append(box, message(subject=f"s{i}", body="x" * 3000)) for i in range(5)]
    expected = HeaderFieldReads.message_header_fields(store, box, uids, NAMES)
    store._head_cache_instance = None
    span = len(store.message_bytes(box, uids[0])) - 3000
    monkeypatch.setattr(heads, "HEAD_SOURCE_BYTES", 2 * span + 10)  # two headers a run
    runs: list[list[int]] = []
    batch = store.message_bytes_batch

    def counting(mailbox_id: int, wanted: list[int]) -> dict[int, bytes]:
        runs.append(list(wanted))
        return batch(mailbox_id, wanted)

    monkeypatch.setattr(store, "message_bytes_batch", counting)
    assert store.message_header_fields(box, uids, NAMES) == expected
    assert runs and uids[0] not in runs[0] and uids[1] not in runs[0]
    store._head_cache_instance = None
    runs.clear()
    monkeypatch.setattr(heads, "HEAD_SOURCE_BYTES", 1)  # below one header: one a read
    assert store.message_header_fields(box, uids[1:3], NAMES) == expected[1:3]
    assert runs == [[uids[2]]]


@pytest.mark.postgres
def test_a_list_view_of_exactly_head_inline_max_uncut_messages_is_one_statement(
    store, monkeypatch
) -> None:
    """The bound is inclusive: HEAD_INLINE_MAX uncut messages still come in the one
    statement; one more takes the rows alone, then the shared reads."""
    box = store.get_mailbox("alice", INBOX).id
    uids = [store.append(box, message(subject=f"s{i}")) for i in range(3)]
    expected = HeaderFieldReads.message_header_fields(store, box, uids, NAMES)
    monkeypatch.setattr(pg_messages, "HEAD_INLINE_MAX", 2)
    for wanted, statements in ((uids[:2], 1), (uids, 3)):
        store._head_cache_instance = None
        counted = StatementLog(monkeypatch)
        heads_, sent = counted(store.message_header_fields, box, wanted, NAMES)
        assert heads_ == expected[: len(wanted)] and sent == statements


@pytest.mark.postgres
def test_a_gone_mailbox_or_uids_in_a_list_view(store) -> None:
    box = store.create_mailbox("alice", "Gone").id
    uid = store.append(box, message())
    assert store.message_header_fields(box, [uid + 5], NAMES) == []
    store.delete_mailbox("alice", "Gone")
    with pytest.raises(MailboxNotFound):
        store.message_header_fields(box, [uid], NAMES)


def test_searchs_per_message_subqueries_are_fenced_on_postgresql_only() -> None:
    """``EXISTS`` over header fields and text ends with OFFSET 0 on PostgreSQL (a probe
    per row of the mailbox, never a semi-join over every message of the store);
    SQLite's SQL is unchanged."""
    for criteria in (Header("from", "x", address=True), Header("subject", ""), Text("BODY", "x")):
        pg = build_query(1, criteria, 0, dialect=POSTGRESQL).sql
        assert "OFFSET 0)" in pg
        assert "OFFSET" not in build_query(1, criteria, 0, dialect=SQLITE, text_index=False).sql


@pytest.mark.postgres
def test_a_list_view_of_many_uncut_messages_reads_the_rows_then_the_sources(
    store, monkeypatch
) -> None:
    """Past HEAD_INLINE_MAX uncut messages the rows come alone (the one statement tests
    each row against the uncut UIDs) and the octets as the shared reads bring them."""
    box = store.get_mailbox("alice", INBOX).id
    uids = [store.append(box, message(subject=f"s{i}")) for i in range(5)]
    expected = HeaderFieldReads.message_header_fields(store, box, uids, NAMES)
    store._head_cache_instance = None
    monkeypatch.setattr(pg_messages, "HEAD_INLINE_MAX", 2)
    counted = StatementLog(monkeypatch)
    heads_, sent = counted(store.message_header_fields, box, uids, NAMES)
    assert heads_ == expected and sent == 3  # rows, infos, bodies
    assert not any(b"take" in s for s in counted.sent)


@pytest.mark.postgres
def test_one_statement_reads_keep_their_connections_cursor_through_errors(store) -> None:
    """``_cursor`` hands each pooled connection's own cursor back (a new cursor per
    statement cost ~20-40 us of store-thread CPU; bench/README.md, "PostgreSQL mix tail,
    session 6"); a failed statement, an unread result or an abandoned stream leaves it
    usable, and the next read sees only its own rows."""
    box = store.get_mailbox("alice", INBOX).id
    uids = [store.append(box, message(subject=f"m{i}")) for i in range(3)]
    cursors: dict[int, set[int]] = {}
    for _ in range(6):
        with store._cursor() as cur:
            cursors.setdefault(id(cur.connection), set()).add(id(cur))
            cur.execute("SELECT 1")  # left unread
    assert all(len(kept) == 1 for kept in cursors.values())
    with pytest.raises(psycopg.errors.DivisionByZero), store._cursor() as cur:
        cur.execute("SELECT 1 / 0")
    assert [i.uid for i in store.message_info(box, uids)] == uids
    store.summary_chunk = 1  # one row per list: the stream is left after its first
    chunks = store.message_summary_chunks(box, uids)
    assert [row.uid for row in next(iter(chunks))] == uids[:1]
    chunks.close()
    assert [i.uid for i in store.message_info(box, uids[1:])] == uids[1:]
