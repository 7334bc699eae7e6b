"""The PostgreSQL store's row-level steps, run inside a transaction by the concern modules.

The same steps as :mod:`gateway.store.sqlite.rows`, written for several writers at once:

- a write that changes a mailbox's messages first locks that mailbox's row
  (:meth:`PGRows._lock`, ``SELECT ... FOR UPDATE``; several mailboxes in id order so two
  moves in opposite directions cannot deadlock), then reads; the UID and modseq counters
  are bumped with ``UPDATE ... RETURNING`` on that locked row, so two nodes appending to
  one mailbox never share a UID and modseqs rise strictly in commit order;
- a write that changes a user's mailbox tree (create, delete, rename, provisioning)
  holds that owner's advisory lock (:meth:`PGRows._lock_owner`) first;
- the UIDVALIDITY counter is one ``meta`` row, bumped with ``UPDATE ... RETURNING``.

Text going into PostgreSQL is cleaned of what ``text`` cannot hold (NUL, lone
surrogates) by :func:`pg_text`; search parameters are cleaned alike
(:data:`POSTGRESQL`, the search dialect).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from psycopg import Cursor

from gateway.message.analysis import Analysis
from gateway.store.errors import MailboxNotFound, StoreError
from gateway.store.interfaces import DELIMITER, Mailbox, is_shared_owner
from gateway.store.postgres.connection import PGConnection
from gateway.store.postgres.messagerows import INSERT_ONE, message_params
from gateway.store.postgres.text import pg_text
from gateway.store.rowdata import DELETED_TOKEN, internal_values
from gateway.store.rules import MAX_UID, check_message
from gateway.store.search import Dialect
from gateway.store.steps import RowSteps

OWNER_LOCK_CLASS = 0x706F_7067  # "popg": the advisory-lock namespace of mailbox trees


def _uid_ranges(ranges: list[tuple[int, int]], mailbox_id: int) -> tuple[str, list]:
    # Two array parameters unnested side by side: one primary-key range scan per range.
    return (
        "(mm.uid IN (SELECT x.uid FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi)"
        " JOIN mailbox_message x ON x.mailbox_id = %s AND x.uid BETWEEN r.lo AND r.hi))",
        [[low for low, _ in ranges], [high for _, high in ranges], mailbox_id],
    )


POSTGRESQL = Dialect(
    "postgresql", "%s", "TRUE", "FALSE", "strpos", _uid_ranges, pg_text, fence=" OFFSET 0"
)
"""The search dialect of PostgreSQL (:mod:`gateway.store.search`)."""

PRIVATE_SOURCE = (
    "(SELECT x.mailbox_id AS mailbox_id, x.uid AS uid, x.message_id AS message_id,"
    " CASE WHEN p.seen = 1 THEN trim(x.flags || ' \\Seen') ELSE x.flags END AS flags,"
    " greatest(x.modseq, coalesce(p.modseq, 0)) AS modseq, x.recent AS recent,"
    " x.savedate AS savedate"
    " FROM mailbox_message x LEFT JOIN private_flag p ON p.mailbox_id = x.mailbox_id"
    " AND p.uid = x.uid AND p.viewer = %s)"
)
"""``mailbox_message`` as one viewer sees a shared mailbox (one parameter: the viewer)."""

MAILBOX_COLUMNS = (
    "m.id, m.owner, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, m.special_use,"
    " s.name IS NOT NULL"
)
FLAG_ROWS = (
    "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, p.seen, p.modseq"
    " FROM mailbox_message mm LEFT JOIN private_flag p"
    " ON p.mailbox_id = mm.mailbox_id AND p.uid = mm.uid AND p.viewer = %s"
    " WHERE mm.mailbox_id = %s AND mm.uid = ANY(%s::bigint[]) ORDER BY mm.uid"
)
"""The rows a STORE plans from (``_flag_rows``): parameters (private viewer or None,
mailbox id, UIDs)."""

MAILBOX_FROM = "mailbox m LEFT JOIN subscription s ON s.owner = m.owner AND s.name = m.name"


def uid_array(uids: Iterable[int]) -> list[int]:
    """UIDs as one ``bigint[]`` parameter."""
    return [int(u) for u in uids]


def mailbox_of(row: Sequence[Any]) -> Mailbox:
    return Mailbox(*row[:7], subscribed=bool(row[7]))


class PGRows(PGConnection, RowSteps):
    """Steps that run inside a caller's transaction (``cur`` is its cursor): the
    :class:`~gateway.store.steps.RowSteps` the shared write algorithms call."""

    _private_source = PRIVATE_SOURCE

    # ---- transactions and locks (RowSteps) -----------------------------------------

    def _tx(self) -> AbstractContextManager[tuple[Cursor, set[int]]]:
        return self._pipelined_write()

    def _peek(self) -> AbstractContextManager[Cursor]:
        return self._cursor()

    def _lock_mailboxes(self, cur: Cursor, *mailbox_ids: int) -> None:
        self._lock(cur, *mailbox_ids)

    def _lock_existing(self, cur: Cursor, *mailbox_ids: int) -> None:
        self._lock(cur, *mailbox_ids)

    # ---- rows to change (RowSteps) --------------------------------------------------

    def _flag_rows(
        self, cur: Cursor, mailbox_id: int, uids: Sequence[int], private_of: str | None
    ) -> list[Any]:
        cur.execute(FLAG_ROWS, (private_of, mailbox_id, uid_array(uids)))
        return cur.fetchall()

    def _write_flags(self, cur: Cursor, rows: list[tuple[str, int, int, int]]) -> None:
        if rows:
            cur.executemany(
                "UPDATE mailbox_message SET flags = %s, modseq = %s"
                " WHERE mailbox_id = %s AND uid = %s",
                rows,
            )

    def _deleted_rows(self, cur: Cursor, mailbox_id: int, uids: Sequence[int] | None) -> list[Any]:
        sql = (
            "SELECT uid, message_id FROM mailbox_message WHERE mailbox_id = %s"
            " AND strpos(' ' || flags || ' ', %s) > 0"
        )
        params: list[object] = [mailbox_id, DELETED_TOKEN]
        if uids is not None:
            sql += " AND uid = ANY(%s::bigint[])"
            params.append(uid_array(uids))
        cur.execute(sql + " ORDER BY uid", params)
        return cur.fetchall()

    def _copy_rows(
        self, cur: Cursor, mailbox_id: int, uids: Sequence[int] | None, viewer: str | None
    ) -> list[Any]:
        source, params = self._source(cur, mailbox_id, viewer)
        sql = f"SELECT uid, message_id, flags FROM {source} src WHERE mailbox_id = %s"
        params = [*params, mailbox_id]
        if uids is not None:
            sql += " AND uid = ANY(%s::bigint[])"
            params.append(uid_array(uids))
        cur.execute(sql + " ORDER BY uid", params)
        return cur.fetchall()

    def _mailbox_message_ids(self, cur: Cursor, mailbox_id: int) -> list[int]:
        cur.execute("SELECT message_id FROM mailbox_message WHERE mailbox_id = %s", (mailbox_id,))
        return [r[0] for r in cur.fetchall()]

    def _delete_mailbox_row(self, cur: Cursor, mailbox_id: int) -> None:
        cur.execute("DELETE FROM mailbox WHERE id = %s", (mailbox_id,))

    def _family(self, cur: Cursor, user: str, name: str) -> list[tuple[int, str]]:
        prefix = name + DELIMITER
        cur.execute(
            "SELECT id, name FROM mailbox WHERE owner = %s"
            " AND (name = %s OR left(name, %s) = %s) ORDER BY name",
            (user, name, len(prefix), prefix),
        )
        return cur.fetchall()

    def _rename_row(self, cur: Cursor, user: str, mailbox_id: int, old: str, new: str) -> None:
        cur.execute("UPDATE mailbox SET name = %s WHERE id = %s", (new, mailbox_id))
        cur.execute(
            "DELETE FROM subscription WHERE owner = %s AND name = %s RETURNING 1", (user, old)
        )
        if cur.fetchall():
            cur.execute(
                "INSERT INTO subscription (owner, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (user, new),
            )

    _search_options = {"dialect": POSTGRESQL}

    def _largest_uid(self, cur: Cursor, mailbox_id: int) -> int | None:
        """Also the existence check of SEARCH/SORT/THREAD (raises MailboxNotFound): one
        round trip for both."""
        cur.execute(
            "SELECT (SELECT max(uid) FROM mailbox_message WHERE mailbox_id = %s)"
            " FROM mailbox WHERE id = %s",
            (mailbox_id, mailbox_id),
        )
        row = cur.fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return row[0]

    def _fetch_query(self, cur: Cursor, sql: str, params: Sequence[object]) -> list[Any]:
        cur.execute(sql, params)
        return cur.fetchall()

    def _subscribe_all(self, cur: Cursor, user: str, names: Sequence[str]) -> None:
        cur.executemany(
            "INSERT INTO subscription (owner, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(user, n) for n in names],
        )

    # ---- mailboxes, counters and rows -----------------------------------------------

    def _require(self, cur: Cursor, mailbox_id: int) -> None:
        cur.execute("SELECT 1 FROM mailbox WHERE id = %s", (mailbox_id,))
        if cur.fetchone() is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")

    def _lock(self, cur: Cursor, *mailbox_ids: int) -> None:
        """Lock mailbox rows (ascending id: a fixed order, so no deadlock) for the rest
        of the transaction; raises MailboxNotFound for a missing one."""
        for mailbox_id in sorted(set(mailbox_ids)):
            cur.execute("SELECT owner FROM mailbox WHERE id = %s FOR UPDATE", (mailbox_id,))
            row = cur.fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            self._shared_ids[mailbox_id] = is_shared_owner(row[0])

    def _lock_owner(self, cur: Cursor, owner: str) -> None:
        """Serialise changes to one owner's mailbox tree across nodes."""
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (OWNER_LOCK_CLASS, owner))

    def _is_shared(self, cur: Cursor, mailbox_id: int) -> bool:
        """Whether the mailbox belongs to a shared tree; raises MailboxNotFound."""
        known = self._shared_ids.get(mailbox_id)
        if known is None:
            cur.execute("SELECT owner FROM mailbox WHERE id = %s", (mailbox_id,))
            row = cur.fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            known = self._shared_ids[mailbox_id] = is_shared_owner(row[0])
        return known

    def _set_private(
        self,
        cur: Cursor,
        mailbox_id: int,
        viewer: str,
        entries: Iterable[tuple[int, bool]],
        modseq: int,
    ) -> None:
        """Record ``viewer``'s own \\Seen for (uid, seen) entries, stamped ``modseq``."""
        rows = [(mailbox_id, viewer, uid, int(seen), modseq) for uid, seen in entries]
        if rows:
            cur.executemany(
                "INSERT INTO private_flag (mailbox_id, viewer, uid, seen, modseq)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (mailbox_id, viewer, uid)"
                " DO UPDATE SET seen = excluded.seen, modseq = excluded.modseq",
                rows,
            )

    def _highestmodseq(self, cur: Cursor, mailbox_id: int) -> int:
        cur.execute("SELECT highestmodseq FROM mailbox WHERE id = %s", (mailbox_id,))
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def _find(self, cur: Cursor, user: str, name: str) -> Mailbox | None:
        cur.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {MAILBOX_FROM} WHERE m.owner = %s AND m.name = %s",
            (user, name),
        )
        row = cur.fetchone()
        return None if row is None else mailbox_of(row)

    def _bump(self, cur: Cursor, mailbox_id: int) -> int:
        """The mailbox's next modseq, recorded as its HIGHESTMODSEQ (RFC 7162 §3.1.1)."""
        cur.execute(
            "UPDATE mailbox SET highestmodseq = highestmodseq + 1 WHERE id = %s"
            " RETURNING highestmodseq",
            (mailbox_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return int(row[0])

    def _next_uidvalidity(self, cur: Cursor) -> int:
        """A UIDVALIDITY never handed out before in this store: a persistent counter that
        also keeps up with the clock (values look like Dovecot's creation times)."""
        cur.execute(
            "UPDATE meta SET value = greatest(value, %s, 1) + 1 WHERE key = 'uidvalidity'"
            " RETURNING value - 1",
            (int(self._clock()),),
        )
        row = cur.fetchone()
        assert row is not None
        value = int(row[0])
        if value > MAX_UID:
            raise StoreError("UIDVALIDITY space exhausted")
        return value

    def _create_tx(self, cur: Cursor, user: str, name: str, special_use: str | None) -> int:
        """Insert one mailbox row (no parent handling); returns its id."""
        cur.execute(
            "INSERT INTO mailbox (owner, name, uidvalidity, special_use)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (user, name, self._next_uidvalidity(cur), special_use),
        )
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def _target_mailbox(self, cur: Cursor, owner: str, mailbox: str) -> int:
        """The delivery target's id: the user and the mailbox (with parents) created if
        missing, under the owner lock."""
        self._lock_owner(cur, owner)
        self._ensure_user_tx(cur, owner)
        target = self._find(cur, owner, mailbox)
        if target is not None:
            return target.id
        self._create_parents_tx(cur, owner, mailbox)
        return self._create_tx(cur, owner, mailbox, None)

    def _ingest(self, raw: bytes, internaldate: Any) -> tuple[bytes, Analysis, tuple]:
        """Checks and computations done before the write transaction starts."""
        check_message(raw, self.max_message_size)
        return raw, self._analyze(raw), internal_values(internaldate, self._now())

    def _insert_message(
        self, cur: Cursor, raw: Any, analysis: Analysis, internal: tuple[int, int, int]
    ) -> int:
        """The message's rows in all five tables, one statement (:data:`INSERT_ONE`)."""
        cur.execute(INSERT_ONE, message_params(raw, analysis, internal))
        fetched = cur.fetchone()
        assert fetched is not None
        return int(fetched[0])

    def _alloc_uids(self, cur: Cursor, mailbox_id: int, count: int) -> tuple[int, int]:
        """The counters move in one ``UPDATE ... RETURNING`` on the mailbox row, which
        stays locked until commit."""
        cur.execute(
            "UPDATE mailbox SET highestmodseq = highestmodseq + 1, uidnext = uidnext + %s"
            " WHERE id = %s RETURNING highestmodseq, uidnext",
            (count, mailbox_id),
        )
        row = cur.fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return int(row[0]), int(row[1])

    def _insert_rows(self, cur: Cursor, rows: list[tuple], recent: bool = True) -> None:
        cur.executemany(
            "INSERT INTO mailbox_message"
            " (mailbox_id, uid, message_id, flags, modseq, recent, savedate)"
            f" VALUES (%s, %s, %s, %s, %s, {int(recent)}, %s)",
            rows,
        )

    def _remove_rows(self, cur: Cursor, mailbox_id: int, uids: Sequence[int], modseq: int) -> None:
        """Drop rows from a mailbox, remembering the UIDs for QRESYNC (RFC 7162 §3.2.10)."""
        wanted = uid_array(uids)
        cur.execute(
            "INSERT INTO expunged (mailbox_id, uid, modseq)"
            " SELECT %s, u, %s FROM unnest(%s::bigint[]) AS u"
            " ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = excluded.modseq",
            (mailbox_id, modseq, wanted),
        )
        cur.execute(
            "DELETE FROM mailbox_message WHERE mailbox_id = %s AND uid = ANY(%s::bigint[])",
            (mailbox_id, wanted),
        )
        cur.execute(
            "DELETE FROM private_flag WHERE mailbox_id = %s AND uid = ANY(%s::bigint[])",
            (mailbox_id, wanted),
        )

    def _collect(self, cur: Cursor, message_ids: Iterable[int]) -> None:
        """Delete messages (and, by cascade, their content) no mailbox refers to any more.

        The message rows are locked first (ascending id), and the DELETE is a later
        statement with a fresh READ COMMITTED snapshot: two writers dropping the last two
        references to one message from two mailboxes then take turns, and the second
        sees the first one's commit, so no unreferenced message is left behind."""
        ids = sorted({int(m) for m in message_ids})
        if not ids:
            return
        cur.execute(
            "SELECT id FROM message WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE", (ids,)
        )
        cur.execute(
            "DELETE FROM message WHERE id = ANY(%s::bigint[])"
            " AND NOT EXISTS (SELECT 1 FROM mailbox_message x WHERE x.message_id = message.id)",
            (ids,),
        )
