"""The PostgreSQL store's messages: reading, appending, flags, expunge, copy/move and search.

Semantics are the SQLite store's (:mod:`gateway.store.sqlite.messages`: \\Recent as a
per-row bit, system flags in canonical case, keywords compared case-insensitively), and
the flag arithmetic of STORE and COPY is shared with it (:mod:`gateway.store.rowdata`).
What differs is concurrency: every write locks the mailbox rows it changes before it
reads them (:meth:`~gateway.store.postgres.rows.PGRows._lock`), so a STORE or EXPUNGE
racing with a write on another node sees that write's result, never a stale row.
SEARCH is one SQL query built by :mod:`gateway.store.search` in the PostgreSQL dialect.
"""

from __future__ import annotations

import datetime
import threading
from array import array
from collections.abc import Iterator, Sequence
from contextlib import closing
from itertools import islice

import psycopg

from gateway.core.criteria import Criteria
from gateway.store import heads
from gateway.store.errors import MailboxNotFound
from gateway.store.heads import HeaderFieldReads, fields_cutter
from gateway.store.interfaces import (
    Changes,
    MailboxCounts,
    MessageHead,
    MessageInfo,
    MessageRow,
    MessageSummary,
    SelectionSummary,
)
from gateway.store.objectid import email_id
from gateway.store.postgres.appendwrite import PGAppendWrites
from gateway.store.postgres.flagwrite import PGFlagWrites
from gateway.store.postgres.rows import PGRows, uid_array
from gateway.store.rowdata import (
    SEEN_TOKEN,
)
from gateway.store.search import build_query
from gateway.store.steps import MessageSteps

SUMMARY_COLUMNS = "mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.envelope, m.bodystructure"
"""What :class:`MessageSummary` is built from, in its order (``flags`` and ``recent``
make its flags)."""

SUMMARY_JOIN = (
    "CROSS JOIN LATERAL (SELECT size, envelope, bodystructure FROM message"
    " WHERE id = mm.message_id OFFSET 0) m"
)
"""Each message row of a summary by its primary key (a LATERAL subquery kept apart by
OFFSET 0): a 500-UID batch is ~5% of a 10,000-message store, where a plain join's custom
plan hashes a sequential scan of all of ``message`` for every batch (9.2 ms against
1.0 ms) until the connection's generic plan takes over, and a streamed batch
(:meth:`PGMessages.message_summary_chunks`: ``stream`` never prepares) is planned
afresh every time."""

HEAD_COLUMNS = "mm.uid, mm.flags, mm.recent, mm.modseq, m.size"
"""What :class:`MessageHead` is built from besides its fields, in its order."""

HEAD_JOIN = "CROSS JOIN LATERAL (SELECT size FROM message WHERE id = mm.message_id OFFSET 0) m"
"""The size of each row's message by its primary key (see :data:`SUMMARY_JOIN`)."""

HEAD_INLINE_MAX = 256
"""Uncut messages whose header octets a list view's one statement brings at most
(:meth:`PGMessages.message_header_fields`): each row is tested against their UIDs."""

HEAD_SOURCE_JOIN = (
    "CROSS JOIN LATERAL (SELECT size, parts,"
    r" substring(parts FROM '^\[\d+,\d+,(\d+),')::int AS span"
    " FROM message WHERE id = mm.message_id OFFSET 0) m"
)
""":data:`HEAD_JOIN` with the part map and the header span it starts with (the octets
every whole-message header section needs, :func:`gateway.message.sections.header_span`;
NULL when the map does not start with the root offsets: then the whole message)."""

SUMMARY_CHUNK = 250
"""Rows per chunk of :meth:`PGMessages.message_summary_chunks` (libpq's chunked rows
mode): small enough that the first chunk reaches the caller while PostgreSQL still
produces the rest, large enough that each costs one result, not one per row."""

CHUNKED_ROWS = psycopg.capabilities.has_stream_chunked()
"""Whether this libpq has chunked rows mode (libpq 17: psycopg's ``stream(size=n)``);
psycopg-binary wheels ship one, a psycopg built on an older system libpq may not."""

INFO_COLUMNS = (
    "mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.internaldate, m.internaldate_tz,"
    " m.envelope, m.bodystructure, m.body, m.parts, mm.savedate, m.sha256"
)
"""What :class:`MessageInfo` is built from (:meth:`PGMessages._infos`), in its order."""


CLAIM = (
    "UPDATE mailbox_message SET recent = 0 WHERE mailbox_id = %s AND recent = 1"
    " AND uid = ANY(%s::bigint[]) RETURNING uid"
)
"""The \\Recent claim (:meth:`PGMessages.clear_recent`): parameters (mailbox id, UIDs)."""

CLAIM_LAZY = (
    "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))"
    " UPDATE mailbox_message SET recent = 0 FROM lazy WHERE mailbox_id = %s AND recent = 1"
    " AND uid = ANY(%s::bigint[]) RETURNING uid"
)
""":data:`CLAIM` committed asynchronously (``flag_fsync = "optimized"``): the setting is
local to the statement's transaction (``is_local``), read by its commit."""

_pinned = threading.local()
"""The catch-up answer :meth:`PGMessages.pin_changes` took for this thread, if any."""


class PGMessages(PGAppendWrites, PGFlagWrites, PGRows, MessageSteps, HeaderFieldReads):
    """:class:`~gateway.store.interfaces.Messages` on PostgreSQL: the reads here, the
    writes (expunge, copy/move, MULTIAPPEND) in :class:`~gateway.store.steps.MessageSteps`,
    STORE in :class:`~gateway.store.postgres.flagwrite.PGFlagWrites` (one round trip, two in
    a shared mailbox),
    APPEND of one message in :class:`~gateway.store.postgres.appendwrite.PGAppendWrites`
    (one statement)."""

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        with self._read() as cur:
            cur.execute(
                "SELECT uidvalidity, uidnext, highestmodseq FROM mailbox WHERE id = %s",
                (mailbox_id,),
            )
            head = cur.fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                "SELECT count(*), coalesce(sum(mm.recent), 0),"
                " count(*) FILTER (WHERE strpos(' ' || mm.flags || ' ', %s) = 0),"
                " coalesce(sum(m.size), 0)"
                f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                " WHERE mm.mailbox_id = %s",
                (SEEN_TOKEN, *source_params, mailbox_id),
            )
            row = cur.fetchone()
        assert row is not None
        messages, recent, unseen, size = row
        uidvalidity, uidnext, highestmodseq = head
        return MailboxCounts(
            messages=int(messages),
            recent=int(recent),
            unseen=int(unseen),
            uidnext=int(uidnext),
            uidvalidity=int(uidvalidity),
            highestmodseq=int(highestmodseq),
            size=int(size),
        )

    # ---- messages in a mailbox -----------------------------------------------------

    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        with self._read() as cur:
            self._require(cur, mailbox_id)
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                f"SELECT uid, flags, recent, modseq FROM {source} src WHERE mailbox_id = %s"
                " ORDER BY uid",
                (*source_params, mailbox_id),
            )
            rows = cur.fetchall()
        flags = self._flags
        return [MessageRow(uid, flags(text, recent), modseq) for uid, text, recent, modseq in rows]

    def message_uids(self, mailbox_id: int) -> array:
        """One statement in autocommit (SELECT's read): the UIDs as one ``bigint[]``
        value in binary (built in index order, no sort), where a row per UID cost a
        Python tuple and an iteration each (~3x the CPU for 200 UIDs); the mailbox is
        looked up only when it has no message, to tell "gone" from "empty"."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT ARRAY(SELECT uid FROM mailbox_message WHERE mailbox_id = %s"
                " ORDER BY uid)",
                (mailbox_id,),
                binary=True,
            )
            row = cur.fetchone()
            uids = array("I", row[0] if row is not None else ())
            if not uids:
                self._require(cur, mailbox_id)
        return uids

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        """One statement in autocommit (one snapshot, one round trip, where a
        REPEATABLE READ transaction took five): the existence check, the \\Recent UIDs,
        the first unseen UID and the flag texts in use, as subqueries of one row."""
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            # Keywords are never private, so the shared column has them all.
            cur.execute(
                "SELECT (SELECT 1 FROM mailbox WHERE id = %s),"
                " ARRAY(SELECT uid FROM mailbox_message WHERE mailbox_id = %s AND recent = 1"
                " ORDER BY uid),"
                f" (SELECT min(uid) FROM {source} src"
                " WHERE mailbox_id = %s AND strpos(' ' || flags || ' ', %s) = 0),"
                " ARRAY(SELECT DISTINCT flags FROM mailbox_message"
                " WHERE mailbox_id = %s AND flags <> '')",
                (mailbox_id, mailbox_id, *source_params, mailbox_id, SEEN_TOKEN, mailbox_id),
            )
            found = cur.fetchone()
        if found is None or found[0] is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        _exists, recent, first, texts = found
        keywords = {f for text in texts for f in text.split() if not f.startswith("\\")}
        return SelectionSummary(
            recent=array("I", recent),
            first_unseen_uid=None if first is None else int(first),
            keywords=tuple(sorted(keywords)),
        )

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        """Every command's catch-up: from this node's change log of the mailbox when it
        knows nothing changed since that log was read
        (:mod:`gateway.store.postgres.catchup`), else one statement in autocommit (one
        snapshot, one round trip): the head row, then the changed rows and the expunged
        UIDs, whose scans are skipped when HIGHESTMODSEQ has not moved (every row,
        private \\Seen and expunge record is stamped from ``_bump``, RFC 7162 §3.1.1)."""
        held = getattr(_pinned, "held", None)
        if held is not None and held[0] is self and held[1] == (mailbox_id, modseq, viewer):
            return held[2]
        key = self._log_key(mailbox_id, viewer)
        plan = self.change_logs.plan(key, modseq)
        if plan.answer is not None:
            return plan.answer
        since = plan.ask
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                "WITH head AS (SELECT highestmodseq FROM mailbox WHERE id = %s)"
                " SELECT 0, highestmodseq, NULL::text, 0, 0::bigint FROM head"
                " UNION ALL SELECT 1, uid, flags, recent, modseq"
                f" FROM {source} src WHERE mailbox_id = %s AND modseq > %s"
                " AND (SELECT highestmodseq FROM head) > %s"
                " UNION ALL SELECT 2, uid, NULL, 0, modseq FROM expunged"
                " WHERE mailbox_id = %s AND modseq > %s"
                " AND (SELECT highestmodseq FROM head) > %s"
                " ORDER BY 1, 2",
                (mailbox_id, *source_params, mailbox_id, since, since) + (mailbox_id, since, since),
            )
            rows = cur.fetchall()
        if not rows or rows[0][0] != 0:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        flags = self._flags
        return self.change_logs.record(
            key,
            plan,
            modseq,
            int(rows[0][1]),
            [MessageRow(u, flags(t, r), m) for k, u, t, r, m in rows if k == 1],
            [(u, m) for k, u, _t, _r, m in rows if k == 2],
        )

    def pin_changes(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> bool:
        """Whether :meth:`changes_since` with these arguments can be answered from the
        node's change log now; if so the answer is held for this thread, so that the
        call, made on the reactor thread right after, needs no query even if a store
        thread's commit outdates the log in between (the answer is then the state as it
        was when the command began, which is all RFC 3501 §7 asks of a catch-up). Held
        until :meth:`unpin_changes`. An answer holding \\Recent is never in a log."""
        answer = self.change_logs.known(self._log_key(mailbox_id, viewer), modseq)
        if answer is None:
            return False
        _pinned.held = (self, (mailbox_id, modseq, viewer), answer)
        return True

    def unpin_changes(self) -> None:
        """Forget this thread's :meth:`pin_changes` answer."""
        _pinned.held = None

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        rows = self._uid_rows(
            mailbox_id, uids, viewer, INFO_COLUMNS, "JOIN message m ON m.id = mm.message_id"
        )
        return self._infos(rows)

    def _uid_rows(
        self, mailbox_id: int, uids: Sequence[int], viewer: str | None, columns: str, join: str
    ) -> list[tuple]:
        """``columns`` of ``viewer``'s rows for ``uids`` (``mm``, plus what ``join`` adds),
        in UID order: one statement in autocommit (one round trip, one snapshot), in
        binary format (bytea as bytes, not hex text); the mailbox is looked up only when
        no row came back, to tell "gone" from "none of these UIDs"."""
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            where, params = _uid_range(uids)
            cur.execute(
                f"SELECT {columns} FROM {source} mm {join}"
                f" WHERE mm.mailbox_id = %s AND {where} ORDER BY mm.uid",
                (*source_params, mailbox_id, *params),
                binary=True,
            )
            rows = cur.fetchall()
            if not rows:
                self._require(cur, mailbox_id)
        return rows

    def message_info_with_bytes(
        self, mailbox_id: int, uids: Sequence[int], budget: int, *, viewer: str | None = None
    ) -> tuple[list[MessageInfo], dict[int, bytes]]:
        """One statement, one round trip (autocommit: one snapshot). One UID (mbsync's
        ``UID FETCH n (BODY.PEEK[])``, once per message) is a plain primary-key lookup
        joined to its content, a shape whose generic plan PostgreSQL keeps once psycopg
        has prepared it, so it is not planned again on every call; several UIDs take the
        bodies of a leading run whose sizes fit in ``budget`` (a running sum, the rule
        of :func:`~gateway.store.rules.leading_uids`), the others' content untouched."""
        wanted = sorted(set(uid_array(uids)))
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            if len(wanted) == 1:
                cur.execute(
                    f"SELECT {INFO_COLUMNS}, c.raw FROM {source} mm"
                    " JOIN message m ON m.id = mm.message_id"
                    " JOIN content c ON c.message_id = mm.message_id"
                    " WHERE mm.mailbox_id = %s AND mm.uid = %s",
                    (*source_params, mailbox_id, wanted[0]),
                    binary=True,
                )
            else:
                where, params = _uid_range(wanted)
                cur.execute(
                    f"SELECT {INFO_COLUMNS}, CASE WHEN row_number() OVER w = 1"
                    " OR sum(m.size) OVER w <= %s THEN"
                    " (SELECT c.raw FROM content c WHERE c.message_id = mm.message_id) END"
                    f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                    f" WHERE mm.mailbox_id = %s AND {where}"
                    " WINDOW w AS (ORDER BY mm.uid ROWS UNBOUNDED PRECEDING) ORDER BY mm.uid",
                    (budget, *source_params, mailbox_id, *params),
                    binary=True,
                )
            rows = cur.fetchall()
            if not rows:
                self._require(cur, mailbox_id)
        bodies = {row[0]: row[13] for row in rows if row[13] is not None}
        return self._infos([row[:13] for row in rows]), bodies

    def _infos(self, rows: Sequence[Sequence]) -> list[MessageInfo]:
        """Rows of :data:`INFO_COLUMNS` (binary results: bytea as bytes)."""
        return [
            MessageInfo(
                uid=uid,
                flags=self._flags(text, recent),
                modseq=modseq,
                size=size,
                internaldate=datetime.datetime.fromtimestamp(epoch, self._zone(minutes)),
                envelope=envelope,
                bodystructure=bodystructure,
                body=body,
                parts=parts,
                savedate=datetime.datetime.fromtimestamp(saved, datetime.UTC),
                emailid=email_id(digest),
            )
            for (
                uid,
                text,
                recent,
                modseq,
                size,
                epoch,
                minutes,
                envelope,
                bodystructure,
                body,
                parts,
                saved,
                digest,
            ) in rows
        ]

    def message_summaries(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageSummary]:
        rows = self._uid_rows(mailbox_id, uids, viewer, SUMMARY_COLUMNS, SUMMARY_JOIN)
        flags, new = self._flags, tuple.__new__
        return [
            new(
                MessageSummary,
                (uid, flags(text, recent), modseq, size, bytes(envelope), bytes(structure)),
            )
            for uid, text, recent, modseq, size, envelope, structure in rows
        ]

    def message_header_fields(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        names: tuple[str, ...],
        *,
        viewer: str | None = None,
    ) -> list[MessageHead]:
        """A list view's read in one statement (autocommit: one snapshot): the rows
        without the envelope and body structure a summary carries, the fields as kept
        (:mod:`gateway.store.heads`), and for the messages not cut yet their part map
        and the header section's octets (``substring`` of the content: PostgreSQL
        decompresses and sends only that prefix) in the same round trip, where the
        shared reads took three (summaries, infos, bodies). The octets come for a
        leading run of the uncut messages within ``HEAD_SOURCE_BYTES`` (at least one,
        as :meth:`HeaderFieldReads._head_sources` reads them); any others are read as
        that method reads them. More than :data:`HEAD_INLINE_MAX` uncut messages (a
        first sync's ``FETCH 1:*``) take the rows alone and then the shared reads: the
        statement tests each row against the uncut UIDs, a linear search per row."""
        cache = self._head_cache()
        table = cache.known(names, mailbox_id)
        missing = [uid for uid in sorted(set(uid_array(uids))) if uid not in table]
        if not missing:
            rows = self._uid_rows(mailbox_id, uids, viewer, HEAD_COLUMNS, HEAD_JOIN)
            get = table.get
        else:
            cut = fields_cutter(names)
            if len(missing) <= HEAD_INLINE_MAX:
                rows = self._head_rows(mailbox_id, uids, viewer, missing)
                fresh = {row[0]: cut(row[6], row[5]) for row in rows if row[6] is not None}
            else:
                rows = self._uid_rows(mailbox_id, uids, viewer, HEAD_COLUMNS, HEAD_JOIN)
                fresh = {}
            left = [row[0] for row in rows if row[0] not in table and row[0] not in fresh]
            if left:
                fresh.update(
                    (uid, cut(raw, parts))
                    for uid, raw, parts in self._head_sources(mailbox_id, left)
                )
            cache.keep(names, mailbox_id, fresh)
            fresh.update((row[0], table[row[0]]) for row in rows if row[0] in table)
            get = fresh.get
        flags, new = self._flags, tuple.__new__
        # A message expunged before its octets were read has no fields: it is left out,
        # as a UID that no longer exists (the caller's EXPUNGEISSUED).
        return [
            new(MessageHead, (row[0], flags(row[1], row[2]), row[3], row[4], data))
            for row in rows
            if (data := get(row[0])) is not None
        ]

    def _head_rows(
        self, mailbox_id: int, uids: Sequence[int], viewer: str | None, missing: list[int]
    ) -> list[tuple]:
        """:data:`HEAD_COLUMNS` of ``uids``, then the part map and header octets of a
        leading run of the ``missing`` ones (None for the rest)."""
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            where, params = _uid_range(uids)
            cur.execute(
                "SELECT uid, flags, recent, modseq, size, CASE WHEN take THEN parts END,"
                " CASE WHEN take THEN"
                " (SELECT CASE WHEN span IS NULL THEN c.raw"
                " ELSE substring(c.raw FROM 1 FOR span) END"
                " FROM content c WHERE c.message_id = t.message_id) END"
                " FROM (SELECT mm.uid, mm.flags, mm.recent, mm.modseq, mm.message_id,"
                " m.size, m.parts, m.span, mm.uid = ANY(%s::bigint[])"
                " AND (count(*) FILTER (WHERE mm.uid = ANY(%s::bigint[])) OVER w = 1"
                " OR sum(coalesce(m.span, m.size)) FILTER (WHERE mm.uid = ANY(%s::bigint[]))"
                " OVER w <= %s) AS take"
                f" FROM {source} mm {HEAD_SOURCE_JOIN}"
                f" WHERE mm.mailbox_id = %s AND {where}"
                " WINDOW w AS (ORDER BY mm.uid ROWS UNBOUNDED PRECEDING)) t ORDER BY uid",
                (
                    missing,
                    missing,
                    missing,
                    heads.HEAD_SOURCE_BYTES,
                    *source_params,
                    mailbox_id,
                    *params,
                ),
                binary=True,
            )
            rows = cur.fetchall()
            if not rows:
                self._require(cur, mailbox_id)
        return rows

    summary_chunk = SUMMARY_CHUNK
    """Rows per list of :meth:`message_summary_chunks` (a test may set a small one)."""

    def message_summary_chunks(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> Iterator[list[MessageSummary]]:
        """One statement in autocommit (one snapshot) whose rows come in libpq's chunked
        rows mode (``cursor.stream``): PostgreSQL goes on producing rows into the
        socket while the caller formats the list it was given, where a statement per
        batch (:meth:`message_summaries`) leaves the database idle while Python works
        and Python idle while the database works. Closing the iterator early cancels
        the statement (psycopg's ``stream``) and gives the connection back. A libpq
        older than 17 has no chunked rows mode: the batch is then read whole, as
        :meth:`message_summaries` reads it."""
        if not CHUNKED_ROWS:
            if rows := self.message_summaries(mailbox_id, uids, viewer=viewer):
                yield rows
            return
        size = self.summary_chunk
        flags, new = self._flags, tuple.__new__
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            where, params = _uid_range(uids)
            stream = cur.stream(
                f"SELECT {SUMMARY_COLUMNS} FROM {source} mm {SUMMARY_JOIN}"
                f" WHERE mm.mailbox_id = %s AND {where} ORDER BY mm.uid",
                (*source_params, mailbox_id, *params),
                binary=True,
                size=size,
            )
            found = False
            with closing(stream):
                # A list of rows pulled by islice (in C), then the summaries built by one
                # comprehension: ~10% less CPU than a loop counting each row.
                while rows := list(islice(stream, size)):
                    found = True
                    yield [
                        new(MessageSummary, (uid, flags(text, recent), modseq, octets, env, bs))
                        for uid, text, recent, modseq, octets, env, bs in rows
                    ]
            if not found:
                self._require(cur, mailbox_id)

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        with self._cursor() as cur:
            cur.execute(
                "SELECT c.raw FROM mailbox_message mm JOIN content c"
                " ON c.message_id = mm.message_id WHERE mm.mailbox_id = %s AND mm.uid = %s",
                (mailbox_id, uid),
                binary=True,
            )
            row = cur.fetchone()
            if row is None:
                self._require(cur, mailbox_id)
                raise KeyError(uid)
        return row[0]

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        wanted = sorted(set(uid_array(uids)))
        with self._cursor() as cur:
            if not wanted:
                self._require(cur, mailbox_id)
                return {}
            if wanted[-1] - wanted[0] + 1 == len(wanted):
                where, params = "mm.uid BETWEEN %s AND %s", [wanted[0], wanted[-1]]
            else:
                where, params = "mm.uid = ANY(%s::bigint[])", [wanted]
            cur.execute(
                "SELECT mm.uid, c.raw FROM mailbox_message mm JOIN content c"
                f" ON c.message_id = mm.message_id WHERE mm.mailbox_id = %s AND {where}",
                (mailbox_id, *params),
                binary=True,
            )
            rows = cur.fetchall()
            if len(rows) < len(wanted):
                self._require(cur, mailbox_id)
        return dict(rows)

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3501 §6.4.4, answered by one SQL query (see :mod:`gateway.store.search`);
        in a shared mailbox SEEN/UNSEEN and MODSEQ are ``viewer``'s own. Criteria without
        a ``*`` UID set need no largest UID: one statement in autocommit, the mailbox
        looked up only when nothing matched (one round trip where a REPEATABLE READ
        transaction took four); with one, the largest UID and the query share a snapshot."""
        with self._cursor() as cur:
            source, source_params = self._source(cur, mailbox_id, viewer)
            query = build_query(
                mailbox_id,
                criteria,
                0,
                source=source,
                source_params=source_params,
                **self._search_options,
            )
            if not query.uses_largest:
                rows = self._fetch_query(cur, query.sql, query.params)
                if not rows:
                    self._require(cur, mailbox_id)
                return [r[0] for r in rows]
        with self._read() as cur:  # _largest_uid checks that the mailbox exists
            rows = self._query_rows(cur, mailbox_id, criteria, viewer)
        return [r[0] for r in rows]

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """The row lock of UPDATE makes the claim atomic (RFC 3501 §2.3.2): a concurrent
        claim of the same row waits, then finds recent = 0 and returns nothing for it.
        One statement in autocommit, one round trip; a flag-only commit, asynchronous
        under flag_fsync = "optimized" (connection.py) through ``set_config(...,
        true)``, which lasts to the end of the statement's own transaction, its commit
        included (``SET LOCAL`` in a BEGIN ... COMMIT took two round trips). Afterwards
        none of the rows is \\Recent, whoever claimed it: the node's change logs forget
        it (``ChangeLogs.claimed``)."""
        with self._cursor() as cur:
            cur.execute(CLAIM_LAZY if self.lazy_flags else CLAIM, (mailbox_id, uid_array(uids)))
            claimed = sorted(row[0] for row in cur.fetchall())
        self.change_logs.claimed(mailbox_id, uids)
        return claimed


def _uid_range(uids: Sequence[int]) -> tuple[str, list]:
    """The WHERE term (on ``mm.uid``) and its parameters for a set of UIDs."""
    wanted = sorted(set(uid_array(uids)))
    if wanted and wanted[-1] - wanted[0] + 1 == len(wanted):
        return "mm.uid BETWEEN %s AND %s", [wanted[0], wanted[-1]]
    return "mm.uid = ANY(%s::bigint[])", [wanted]
