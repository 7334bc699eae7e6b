"""The SQLite :class:`~gateway.store.queue.OutboundQueue`: the outbound queue in its own
tables, created idempotently (:data:`QUEUE_DDL`), on a path or on a connection shared
with the mail store.

Every write is one ``BEGIN IMMEDIATE`` transaction with ``synchronous = FULL`` when the
queue opens its own file (as the mail store does), so :meth:`enqueue` returning means
the message survives SIGKILL and power loss, and :meth:`mark_sent` records the
upstream's reply and the state change together. On a shared connection the caller's
pragmas apply; the queue only refuses to start a write inside another transaction.
Integration folds :data:`QUEUE_DDL` into the store's migrations.

The SQL is portable on purpose (``?`` markers, ``RETURNING``, ``"user"`` quoted): the
PostgreSQL queue (:mod:`gateway.store.postgres.queue`) runs these same methods over its
own connections, so the two cannot drift apart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.store.queue import (
    EXPIRED,
    FAILED,
    QUEUED,
    SENT,
    NewOutbound,
    QueueError,
    QueueItem,
    QueueItemNotFound,
    QueueStateError,
    RouteStatus,
    validate_new,
)

QUEUE_DDL = """
CREATE TABLE IF NOT EXISTS outbound_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "user" TEXT NOT NULL,
    route TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL,          -- one address per line
    size INTEGER NOT NULL,
    message_id TEXT,
    content BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed', 'expired')),
    queued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_reply TEXT,
    finished_at REAL,
    bounced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbound_queue_due
    ON outbound_queue (state, next_attempt);
CREATE TABLE IF NOT EXISTS outbound_routes (
    route TEXT PRIMARY KEY,
    last_error TEXT
);
"""
"""The queue's whole schema, safe to run on every open."""

_COLUMNS = (
    'id, "user", route, mail_from, recipients, size, message_id, state, queued_at, '
    "expires_at, next_attempt, attempts, last_error, last_reply, finished_at, bounced"
)


def _row(values: tuple) -> QueueItem:
    (
        item_id,
        user,
        route,
        mail_from,
        recipients,
        size,
        message_id,
        state,
        queued_at,
        expires_at,
        next_attempt,
        attempts,
        last_error,
        last_reply,
        finished_at,
        bounced,
    ) = values
    return QueueItem(
        id=item_id,
        user=user,
        route=route,
        mail_from=mail_from,
        recipients=tuple(recipients.split("\n")) if recipients else (),
        size=size,
        message_id=message_id,
        state=state,
        queued_at=queued_at,
        expires_at=expires_at,
        next_attempt=next_attempt,
        attempts=attempts,
        last_error=last_error,
        last_reply=last_reply,
        finished_at=finished_at,
        bounced=bool(bounced),
    )


def _recipients(addresses: Sequence[str]) -> str:
    if any("\n" in a or "\r" in a for a in addresses):
        raise QueueError("an envelope address holds a line break")
    return "\n".join(addresses)


def insert_queued(conn: Any, item: NewOutbound, *, now: float, lifetime: float) -> int:
    """Insert one queued row on an open transaction (the caller commits): what
    :meth:`SQLiteOutboundQueue.enqueue` does, and what the store's routed delivery does for
    Sieve's outbound mail in the delivery's own transaction. Returns the new id."""
    validate_new(item)
    cursor = conn.execute(
        'INSERT INTO outbound_queue ("user", route, mail_from, recipients, size, '
        "message_id, content, state, queued_at, expires_at, next_attempt) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            item.user,
            item.route,
            item.mail_from,
            _recipients(item.recipients),
            len(item.content),
            item.message_id,
            item.content,
            QUEUED,
            now,
            now + lifetime,
            now,
        ),
    )
    (item_id,) = cursor.fetchone()
    return int(item_id)


class SQLiteOutboundQueue:
    LOCK_ROW = ""
    """Appended to the SELECT that checks an item's state inside a write: nothing here
    (``BEGIN IMMEDIATE`` already excludes other writers); ``FOR UPDATE`` on PostgreSQL."""

    def __init__(self, target: str | Path | sqlite3.Connection) -> None:
        if isinstance(target, sqlite3.Connection):
            self._conn = target
            self._owned = False
        else:
            self._conn = sqlite3.connect(str(target), isolation_level=None)
            self._owned = True
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
        if self._conn.isolation_level is not None:
            raise QueueError("the queue needs a connection opened with isolation_level=None")
        self._conn.executescript(QUEUE_DDL)

    def close(self) -> None:
        if self._owned:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        if conn.in_transaction:
            raise RuntimeError("queue write started inside another transaction")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _select(self, where: str, args: tuple = ()) -> list[QueueItem]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM outbound_queue {where}", args)
        return [_row(r) for r in rows.fetchall()]

    def enqueue(self, item: NewOutbound, *, now: float, lifetime: float) -> QueueItem:
        with self._write() as conn:
            item_id = insert_queued(conn, item, now=now, lifetime=lifetime)
        return self.get(item_id)

    def get(self, item_id: int) -> QueueItem:
        rows = self._select("WHERE id = ?", (item_id,))
        if not rows:
            raise QueueItemNotFound(f"no queue item {item_id}")
        return rows[0]

    def content(self, item_id: int) -> bytes:
        row = self._conn.execute(
            "SELECT content FROM outbound_queue WHERE id = ?", (item_id,)
        ).fetchone()
        if row is None:
            raise QueueItemNotFound(f"no queue item {item_id}")
        return bytes(row[0])

    def due(self, now: float, limit: int = 100) -> list[QueueItem]:
        return self._select(
            "WHERE state = ? AND next_attempt <= ? AND expires_at > ? "
            "ORDER BY next_attempt, id LIMIT ?",
            (QUEUED, now, now, limit),
        )

    def _check_queued(self, conn: sqlite3.Connection, item_id: int) -> str:
        row = conn.execute(
            "SELECT state, route FROM outbound_queue WHERE id = ?" + self.LOCK_ROW, (item_id,)
        ).fetchone()
        if row is None:
            raise QueueItemNotFound(f"no queue item {item_id}")
        if row[0] != QUEUED:
            raise QueueStateError(f"queue item {item_id} is {row[0]}, not queued")
        return str(row[1])

    @staticmethod
    def _route_error(conn: sqlite3.Connection, route: str, error: str | None) -> None:
        conn.execute(
            "INSERT INTO outbound_routes (route, last_error) VALUES (?, ?) "
            "ON CONFLICT (route) DO UPDATE SET last_error = excluded.last_error",
            (route, error),
        )

    def mark_deferred(
        self,
        item_id: int,
        *,
        error: str,
        next_attempt: float,
        now: float,
        remaining: Sequence[str] | None = None,
    ) -> QueueItem:
        with self._write() as conn:
            route = self._check_queued(conn, item_id)
            conn.execute(
                "UPDATE outbound_queue SET attempts = attempts + 1, last_error = ?, "
                "next_attempt = ?, recipients = COALESCE(?, recipients) WHERE id = ?",
                (error, next_attempt, _recipients(remaining) if remaining else None, item_id),
            )
            self._route_error(conn, route, error)
        return self.get(item_id)

    def mark_sent(
        self,
        item_id: int,
        *,
        reply: str,
        now: float,
        remaining: Sequence[str] = (),
        next_attempt: float | None = None,
        error: str | None = None,
    ) -> QueueItem:
        with self._write() as conn:
            route = self._check_queued(conn, item_id)
            if remaining:
                conn.execute(
                    "UPDATE outbound_queue SET recipients = ?, attempts = attempts + 1, "
                    "last_error = ?, last_reply = ?, next_attempt = ? WHERE id = ?",
                    (
                        _recipients(remaining),
                        error,
                        reply,
                        next_attempt if next_attempt is not None else now,
                        item_id,
                    ),
                )
                self._route_error(conn, route, error)
            else:
                conn.execute(
                    "UPDATE outbound_queue SET state = ?, attempts = attempts + 1, "
                    "last_reply = ?, finished_at = ? WHERE id = ?",
                    (SENT, reply, now, item_id),
                )
                self._route_error(conn, route, None)
        return self.get(item_id)

    def mark_failed(self, item_id: int, *, error: str, now: float) -> QueueItem:
        with self._write() as conn:
            route = self._check_queued(conn, item_id)
            conn.execute(
                "UPDATE outbound_queue SET state = ?, attempts = attempts + 1, "
                "last_error = ?, finished_at = ? WHERE id = ?",
                (FAILED, error, now, item_id),
            )
            self._route_error(conn, route, error)
        return self.get(item_id)

    def expire(self, now: float) -> list[QueueItem]:
        with self._write() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM outbound_queue WHERE state = ? AND expires_at <= ? "
                    "ORDER BY id",
                    (QUEUED, now),
                ).fetchall()
            ]
            conn.executemany(
                "UPDATE outbound_queue SET state = ?, finished_at = ? WHERE id = ?",
                [(EXPIRED, now, i) for i in ids],
            )
        return [self.get(i) for i in ids]

    def unbounced(self) -> list[QueueItem]:
        return self._select("WHERE state IN (?, ?) AND bounced = 0 ORDER BY id", (FAILED, EXPIRED))

    def mark_bounced(self, item_id: int) -> None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT state FROM outbound_queue WHERE id = ?" + self.LOCK_ROW, (item_id,)
            ).fetchone()
            if row is None:
                raise QueueItemNotFound(f"no queue item {item_id}")
            if row[0] not in (FAILED, EXPIRED):
                raise QueueStateError(f"queue item {item_id} is {row[0]}; nothing to bounce")
            conn.execute("UPDATE outbound_queue SET bounced = 1 WHERE id = ?", (item_id,))

    def pending(self, route: str | None = None) -> list[QueueItem]:
        if route is None:
            return self._select("WHERE state = ? ORDER BY id", (QUEUED,))
        return self._select("WHERE state = ? AND route = ? ORDER BY id", (QUEUED, route))

    def status(self) -> list[RouteStatus]:
        rows = self._conn.execute(
            "SELECT r.route, COUNT(q.id), MIN(q.queued_at), e.last_error FROM "
            "(SELECT route FROM outbound_queue WHERE state = ? "
            " UNION SELECT route FROM outbound_routes WHERE last_error IS NOT NULL) r "
            "LEFT JOIN outbound_queue q ON q.route = r.route AND q.state = ? "
            "LEFT JOIN outbound_routes e ON e.route = r.route "
            "GROUP BY r.route, e.last_error ORDER BY r.route",
            (QUEUED, QUEUED),
        ).fetchall()
        return [RouteStatus(route, count, oldest, error) for route, count, oldest, error in rows]

    def purge(self, before: float) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM outbound_queue WHERE finished_at IS NOT NULL AND finished_at < ? "
                "AND (state = ? OR bounced = 1)",
                (before, SENT),
            )
        return cursor.rowcount
