"""The SQLite store's partial flag indexes (gateway/store/sqlite_flagindex.py): the queries
that should use them do, they hold exactly the rows their test selects after any write, and
the migration builds them for mail stored before it. What the reads return is the store
contract's (tests/test_store_contract.py, every backend)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.core.criteria import And, Flag, Header, Not
from gateway.store.schema import _V13_FLAG_INDEXES, MIGRATIONS
from gateway.store.search import build_query
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_flagindex import (
    FLAG_INDEX_DDL,
    FLAG_TEXT_INDEX,
    INDEXED_FLAGS,
    RECENT_INDEX,
    flag_term,
)
from gateway.testing.messages import message

CHOICES = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Label1", "Work"]

INDEX_TESTS = {
    **{name: flag_term(flag, present, "flags") for (flag, present), name in INDEXED_FLAGS.items()},
    RECENT_INDEX: "recent = 1",
    FLAG_TEXT_INDEX: "flags != ''",
}
"""Each partial index and the WHERE test its rows must pass."""


def _store(path: Path) -> tuple[SQLiteStore, int, int]:
    store = SQLiteStore(path / "store.db")
    store.ensure_user("alice")
    inbox = store.get_mailbox("alice", "INBOX").id
    other = store.create_mailbox("alice", "Other").id
    return store, inbox, other


def _churn(store: SQLiteStore, box: int, other: int, seed: int, steps: int = 80) -> None:
    """Every kind of write that changes flags, \\Recent or the rows of a mailbox."""
    rng = random.Random(seed)
    for i in range(10):
        store.append(box, message(subject=f"m{i}"), tuple(rng.sample(CHOICES, rng.randint(0, 2))))
    for _ in range(steps):
        present = [r.uid for r in store.message_rows(box)]
        kind = rng.choice(["store", "store", "append", "copy", "move", "expunge", "recent"])
        if kind == "store" and present:
            picked = rng.sample(present, rng.randint(1, min(3, len(present))))
            store.store_flags(
                box, picked, rng.choice(["+", "-", ""]), rng.sample(CHOICES, rng.randint(1, 3))
            )
        elif kind == "append":
            store.append(box, message(subject="new"), tuple(rng.sample(CHOICES, 1)))
        elif kind == "copy" and present:
            store.copy(box, rng.sample(present, 1), other)
        elif kind == "move" and present:
            store.copy(box, rng.sample(present, 1), other, move=True)
        elif kind == "expunge":
            store.expunge(rng.choice([box, other]))
        elif kind == "recent" and present:
            store.clear_recent(box, rng.sample(present, min(3, len(present))))


def _index_matches_table(store: SQLiteStore) -> None:
    db = store.db
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for name, test in INDEX_TESTS.items():
        indexed = db.execute(
            f"SELECT mailbox_id, uid FROM mailbox_message INDEXED BY {name}"
            f" WHERE mailbox_id > 0 AND {test} ORDER BY 1, 2"
        ).fetchall()
        scanned = db.execute(
            "SELECT mailbox_id, uid FROM mailbox_message NOT INDEXED" f" WHERE {test} ORDER BY 1, 2"
        ).fetchall()
        assert indexed == scanned, name


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indexes_hold_exactly_their_rows_after_every_kind_of_write(
    tmp_path: Path, seed: int
) -> None:
    store, box, other = _store(tmp_path)
    try:
        _churn(store, box, other, seed)
        _index_matches_table(store)
        store.delete_mailbox("alice", "Other")
        _index_matches_table(store)
    finally:
        store.close()


def _plan(store: SQLiteStore, sql: str, params: tuple | list = ()) -> str:
    return " | ".join(row[-1] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_search_by_an_indexed_flag_walks_its_index(tmp_path: Path) -> None:
    """The literal in the SQL matches the index's own WHERE text: a drift between the two
    would leave SQLite scanning the mailbox (the results would stay right, only slow)."""
    store, box, _ = _store(tmp_path)
    try:
        for (flag, present), name in INDEXED_FLAGS.items():
            for criteria in (
                Flag(flag, present),
                And((Flag(flag, present), Header("from", "alice", address=True))),
            ):
                query = build_query(box, criteria, 10, text_index=True)
                assert f"COVERING INDEX {name}" in _plan(store, query.sql, query.params)
        query = build_query(box, Not(Flag("\\Seen")), 10)
        assert "INDEX" not in _plan(store, query.sql, query.params)  # not one of the indexed
    finally:
        store.close()


def test_select_expunge_reads_walk_their_indexes(tmp_path: Path) -> None:
    """SELECT's summary (\\Recent, first unseen, keywords) and EXPUNGE's \\Deleted rows."""
    store, box, _ = _store(tmp_path)
    try:
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        store.selection_summary(box)
        store.expunge(box)
        store.db.set_trace_callback(None)
        plans = " || ".join(
            _plan(store, sql)
            for sql in statements
            if sql.lstrip().upper().startswith(("SELECT", "WITH"))
        )
        for name in (RECENT_INDEX, INDEXED_FLAGS[("\\Seen", False)], FLAG_TEXT_INDEX):
            assert name in plans
        assert INDEXED_FLAGS[("\\Deleted", True)] in plans
    finally:
        store.close()


def test_migration_indexes_mail_stored_before_it(tmp_path: Path) -> None:
    """A file at the previous version, with flagged mail in it, gets the indexes when it
    is opened, holding the rows already there."""
    store, box, other = _store(tmp_path)
    _churn(store, box, other, seed=7, steps=30)
    expected = store.search(box, Flag("\\Seen", False))
    for statement in FLAG_INDEX_DDL:
        name = statement.split("EXISTS ")[1].split()[0]
        store.db.execute(f"DROP INDEX {name}")
    # The version before the flag indexes (later migrations run again: they are idempotent).
    store.db.execute(f"PRAGMA user_version = {MIGRATIONS.index(_V13_FLAG_INDEXES)}")
    store.close()
    store = SQLiteStore(tmp_path / "store.db")
    try:
        names = {
            r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert set(INDEX_TESTS) <= names
        _index_matches_table(store)
        assert store.search(box, Flag("\\Seen", False)) == expected
    finally:
        store.close()


def test_flag_term_takes_system_flags_only() -> None:
    """The flag goes into the SQL text as a literal, so only a fixed system flag may."""
    assert flag_term("\\Seen", False) == "instr(' ' || mm.flags || ' ', ' \\Seen ') = 0"
    for bad in ("$Label1", "\\Seen') OR 1 OR ('", "Seen"):
        with pytest.raises(ValueError):
            flag_term(bad, True)
