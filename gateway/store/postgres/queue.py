"""The :class:`~gateway.store.queue.OutboundQueue` on PostgreSQL: the ``outbound_queue`` and
``outbound_routes`` tables (schema version 3) in the store's database.

The queue's SQL is the SQLite queue's, written portably for this
(:mod:`gateway.store.sqlite_queue`); this module only supplies the connections: reads
take a pooled connection for one statement, writes one READ COMMITTED transaction whose
first statement locks the row it checks (``FOR UPDATE``), so two nodes marking one item
take turns. Results are fetched before the connection goes back to the pool. Calls are
round trips: make them off the reactor thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from psycopg import Cursor

from gateway.store.postgres.connection import PGConnection
from gateway.store.sqlite_queue import SQLiteOutboundQueue


class _Result:
    """A statement's rows and row count, read before its connection went back."""

    def __init__(self, rows: list[tuple], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.rows)


def _pg(sql: str) -> str:
    """The queue's ``?`` markers as psycopg's ``%s`` (its SQL has no other ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class Statements:
    """The ``execute``/``executemany`` the SQLite queue's methods call, on one cursor."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        self.cur.execute(_pg(sql), params)
        rows = self.cur.fetchall() if self.cur.description is not None else []
        return _Result(rows, self.cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> _Result:
        if rows:
            self.cur.executemany(_pg(sql), rows)
        return _Result([], len(rows))


class _Autocommit:
    """Reads outside a transaction: one pooled connection per statement."""

    def __init__(self, store: PGConnection) -> None:
        self.store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        with self.store._cursor() as cur:
            return Statements(cur).execute(sql, params)


class PGOutboundQueue(SQLiteOutboundQueue):
    """The outbound queue on ``store``'s connections (close the store, not this)."""

    LOCK_ROW = " FOR UPDATE"
    """The state check of a write locks the item's row: a second node marking the same
    item waits, then sees the first one's outcome (READ COMMITTED re-reads it)."""

    def __init__(self, store: PGConnection) -> None:  # no super(): no SQLite connection
        self._store = store
        self._conn = _Autocommit(store)  # type: ignore[assignment]
        self._owned = False

    def close(self) -> None:
        """Nothing to do: the store owns the connections."""

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._store._write() as (cur, _changed):
            yield Statements(cur)
