"""The SQL stores' write algorithms, written once over the row steps each backend provides.

The SQLite and PostgreSQL stores make the same decisions in the same order for every
write that changes mailboxes or their messages: which mailboxes are checked (and, in
PostgreSQL, locked) first, when UIDs are allocated and in which order (RFC 4315 COPYUID:
the source UID order), which modseq a change is stamped with (RFC 7162 §3.1.1), what a
shared mailbox member's private \\Seen gets, and which mailboxes' listeners hear about
the change once it commits. Those algorithms live here; what differs between the two is
SQL dialect and concurrency, so each backend's ``rows`` module supplies the small steps
(:class:`RowSteps`) these call, and keeps all its SQL. Listeners are called by each
backend's transaction (:meth:`RowSteps._tx`) after the commit, for the ids collected in
its ``changed`` set.

Step names say what they guarantee, not how: :meth:`RowSteps._lock_mailboxes` makes sure
the mailboxes exist and that no other writer changes them until the commit (SQLite's
``BEGIN IMMEDIATE`` already holds the whole file, so it only checks; PostgreSQL takes
the row locks); :meth:`RowSteps._lock_owner` serialises changes to one user's tree.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from gateway.core.criteria import Criteria
from gateway.core.flags import SPECIAL_USES
from gateway.store.errors import MailboxExists, MailboxNotAllowed, MailboxNotFound, StoreError
from gateway.store.interfaces import (
    DELIMITER,
    INBOX,
    Mailbox,
    MessageFlags,
    MessageRow,
    NewMessage,
    StoreResult,
    is_shared_owner,
)
from gateway.store.rowdata import FlagPlan, copy_entries, plan_flags, split_seen
from gateway.store.rules import (
    DEFAULT_FOLDERS,
    MAX_UID,
    check_mailbox_name,
    flag_map,
    normalise_name,
    parent_names,
)
from gateway.store.search import build_query
from gateway.store.sorting import SORT_JOIN

Cursor = Any
"""The backend's handle inside a transaction (a ``sqlite3.Connection``, a psycopg cursor)."""


class RowSteps:
    """The steps a SQL backend provides, run inside a caller's transaction (``cur``),
    and the mailbox-tree steps written over them. The backend's ``rows`` class overrides
    every step that raises :class:`NotImplementedError` here."""

    # ---- transactions ----------------------------------------------------------------

    def _tx(self) -> AbstractContextManager[tuple[Cursor, set[int]]]:
        """One write transaction: yields (cur, changed mailbox ids); the ids' listeners
        are called after the commit."""
        raise NotImplementedError

    def _peek(self) -> AbstractContextManager[Cursor]:
        """A handle for one read outside any write transaction."""
        raise NotImplementedError

    # ---- locks -----------------------------------------------------------------------

    def _lock_mailboxes(self, cur: Cursor, *mailbox_ids: int) -> None:
        """Make sure the mailboxes exist (MailboxNotFound otherwise) and are this
        transaction's until it ends."""
        raise NotImplementedError

    def _lock_existing(self, cur: Cursor, *mailbox_ids: int) -> None:
        """Make mailboxes known to exist this transaction's until it ends."""
        raise NotImplementedError

    def _lock_owner(self, cur: Cursor, owner: str) -> None:
        """Serialise changes to one owner's mailbox tree."""
        raise NotImplementedError

    # ---- reading rows to change ------------------------------------------------------

    def _flag_rows(
        self, cur: Cursor, mailbox_id: int, uids: Sequence[int], private_of: str | None
    ) -> list[Any]:
        """(uid, flags, recent, modseq, private seen, private modseq) of the given UIDs
        in UID order, the private columns ``private_of``'s (None: no private row)."""
        raise NotImplementedError

    def _write_flags(self, cur: Cursor, rows: list[tuple[str, int, int, int]]) -> None:
        """Set (flags text, modseq, mailbox id, uid) on the shared rows."""
        raise NotImplementedError

    def _deleted_rows(self, cur: Cursor, mailbox_id: int, uids: Sequence[int] | None) -> list[Any]:
        """(uid, message id) of the rows flagged \\Deleted (among ``uids`` if given),
        in UID order."""
        raise NotImplementedError

    def _copy_rows(
        self,
        cur: Cursor,
        mailbox_id: int,
        uids: Sequence[int] | None,
        viewer: str | None,
    ) -> list[Any]:
        """(uid, message id, flags text as ``viewer`` sees them) of the rows (among
        ``uids`` if given), in UID order."""
        raise NotImplementedError

    def _mailbox_message_ids(self, cur: Cursor, mailbox_id: int) -> list[int]:
        raise NotImplementedError

    def _delete_mailbox_row(self, cur: Cursor, mailbox_id: int) -> None:
        """Delete the mailbox row (its ``mailbox_message`` rows go by cascade)."""
        raise NotImplementedError

    def _family(self, cur: Cursor, user: str, name: str) -> list[tuple[int, str]]:
        """(id, name) of the mailbox ``name`` and its descendants, by name."""
        raise NotImplementedError

    def _rename_row(self, cur: Cursor, user: str, mailbox_id: int, old: str, new: str) -> None:
        """Rename one mailbox row; its subscription, if any, moves along."""
        raise NotImplementedError

    def _subscribe_all(self, cur: Cursor, user: str, names: Sequence[str]) -> None:
        """Subscribe ``user`` to ``names`` (already subscribed ones stay)."""
        raise NotImplementedError

    # ---- queries -----------------------------------------------------------------------

    _search_options: dict[str, Any] = {}
    """What :func:`~gateway.store.search.build_query` needs to know of the backend
    (its SQL dialect)."""

    def _largest_uid(self, cur: Cursor, mailbox_id: int) -> int | None:
        """The mailbox's largest UID in use, None when it is empty."""
        raise NotImplementedError

    def _fetch_query(self, cur: Cursor, sql: str, params: Sequence[object]) -> list[Any]:
        raise NotImplementedError

    def _query_rows(
        self, cur: Cursor, mailbox_id: int, criteria: Criteria, viewer: str | None, **options: Any
    ) -> list[Any]:
        """SEARCH (RFC 3501 §6.4.4), SORT and THREAD (RFC 5256): ``criteria`` compiled to
        one SQL query (:func:`~gateway.store.search.build_query`, with ``options``) over
        the rows ``viewer`` sees. The query is built even for an empty mailbox, which then
        runs none, so criteria too complex to compile are refused alike."""
        largest = self._largest_uid(cur, mailbox_id)
        source, source_params = self._source(cur, mailbox_id, viewer)
        query = build_query(
            mailbox_id,
            criteria,
            largest or 0,
            source=source,
            source_params=source_params,
            **self._search_options,
            **options,
        )
        if largest is None:
            return []
        return self._fetch_query(cur, query.sql, query.params)

    def _sorted_in(
        self,
        cur: Cursor,
        mailbox_id: int,
        criteria: Criteria,
        columns: str,
        order: str,
        viewer: str | None,
    ) -> list[Any]:
        """SORT/THREAD's rows: ``columns`` of the matching messages, in ``order``."""
        return self._query_rows(
            cur, mailbox_id, criteria, viewer, columns=columns, extra_join=SORT_JOIN, order=order
        )

    # ---- mailboxes, counters and rows -------------------------------------------------

    def _find(self, cur: Cursor, user: str, name: str) -> Mailbox | None:
        raise NotImplementedError

    def _create_tx(self, cur: Cursor, user: str, name: str, special_use: str | None) -> int:
        """Insert one mailbox row (no parent handling); returns its id."""
        raise NotImplementedError

    def _is_shared(self, cur: Cursor, mailbox_id: int) -> bool:
        """Whether the mailbox belongs to a shared tree; raises MailboxNotFound."""
        raise NotImplementedError

    _private_source: str
    """``mailbox_message`` as one viewer sees a shared mailbox: a subquery with the same
    columns and one parameter, the viewer (the backend's ``PRIVATE_SOURCE``)."""

    def _source(self, cur: Cursor, mailbox_id: int, viewer: str | None) -> tuple[str, list]:
        """The rows to read for ``viewer``: the table itself, or its private view."""
        if viewer is not None and self._is_shared(cur, mailbox_id):
            return self._private_source, [viewer]
        return "mailbox_message", []

    def _bump(self, cur: Cursor, mailbox_id: int) -> int:
        """The mailbox's next modseq, recorded as its HIGHESTMODSEQ (RFC 7162 §3.1.1)."""
        raise NotImplementedError

    def _highestmodseq(self, cur: Cursor, mailbox_id: int) -> int:
        raise NotImplementedError

    def _set_private(
        self,
        cur: Cursor,
        mailbox_id: int,
        viewer: str,
        entries: Iterable[tuple[int, bool]],
        modseq: int,
    ) -> None:
        """Record ``viewer``'s own \\Seen for (uid, seen) entries, stamped ``modseq``."""
        raise NotImplementedError

    def _alloc_uids(self, cur: Cursor, mailbox_id: int, count: int) -> tuple[int, int]:
        """Take ``count`` UIDs and one new modseq in the mailbox: (modseq, the new
        UIDNEXT), the UIDs being the ``count`` values below it (RFC 3501 §2.3.1.1)."""
        raise NotImplementedError

    def _insert_rows(self, cur: Cursor, rows: list[tuple], recent: bool = True) -> None:
        """Insert ``mailbox_message`` rows, \\Recent unless ``recent`` is false: (mailbox
        id, uid, message id, flags text, modseq, savedate), one mailbox and modseq."""
        raise NotImplementedError

    def _add_rows(
        self,
        cur: Cursor,
        mailbox_id: int,
        entries: Sequence[tuple[int, str]],
        recent: bool = True,
    ) -> list[int]:
        """Give (message id, flags text) entries consecutive new UIDs in a mailbox, in
        their order (COPYUID, RFC 4315 §3), all \\Recent (unless ``recent`` is false)
        and stamped with one new modseq; returns the UIDs."""
        count = len(entries)
        modseq, end = self._alloc_uids(cur, mailbox_id, count)
        if end - 1 > MAX_UID:
            raise StoreError("UID space of the mailbox exhausted")
        uids = list(range(end - count, end))
        saved = int(self._clock())  # RFC 8514 §3: when the row entered this mailbox
        self._insert_rows(
            cur,
            [
                (mailbox_id, uid, message_id, flags, modseq, saved)
                for uid, (message_id, flags) in zip(uids, entries, strict=True)
            ],
            recent,
        )
        return uids

    def _remove_rows(self, cur: Cursor, mailbox_id: int, uids: Sequence[int], modseq: int) -> None:
        """Drop rows from a mailbox, remembering the UIDs for QRESYNC (RFC 7162 §3.2.10)."""
        raise NotImplementedError

    def _collect(self, cur: Cursor, message_ids: Iterable[int]) -> None:
        """Delete messages no mailbox refers to any more."""
        raise NotImplementedError

    def _ingest(self, raw: Any, internaldate: datetime.datetime | None) -> tuple[Any, Any, Any]:
        """Checks and computations done before the write transaction starts."""
        raise NotImplementedError

    def _insert_message(self, cur: Cursor, raw: Any, analysis: Any, internal: Any) -> int:
        raise NotImplementedError

    def _flags(self, text: str, recent: int) -> frozenset[str]:
        raise NotImplementedError

    def _uid_rows(
        self, mailbox_id: int, uids: Sequence[int], viewer: str | None, columns: str, join: str
    ) -> list[tuple]:
        """``columns`` of ``viewer``'s rows of ``uids`` (``mm``, plus what ``join`` adds)
        in UID order, in one statement outside any write transaction (MailboxNotFound
        when the mailbox is gone)."""
        raise NotImplementedError

    _clock: Callable[[], float]

    # ---- mailbox tree steps ----------------------------------------------------------

    def _create_parents_tx(self, cur: Cursor, user: str, name: str) -> None:
        """RFC 3501 §6.3.3: create the superior names a new name needs."""
        for parent in parent_names(name):
            if self._find(cur, user, parent) is None:
                self._create_tx(cur, user, parent, None)

    def _ensure_user_tx(self, cur: Cursor, user: str) -> None:
        """Provision a user's tree (INBOX and the default special-use folders, all
        subscribed) unless it has an INBOX; a shared tree gets its INBOX only."""
        find, create = self._find, self._create_tx
        if find(cur, user, INBOX) is not None:
            return
        create(cur, user, INBOX, None)
        if is_shared_owner(user):
            return  # a shared tree starts with its INBOX only; members subscribe themselves
        names = [INBOX]
        for name, use in DEFAULT_FOLDERS:
            if find(cur, user, name) is None:
                create(cur, user, name, use)
            names.append(name)
        self._subscribe_all(cur, user, names)


class MailboxSteps(RowSteps):
    """CREATE, DELETE and RENAME (RFC 3501 §6.3.3-§6.3.5) over :class:`RowSteps`."""

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxExists(name)
        check_mailbox_name(name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailboxNotAllowed(f"unknown special-use attribute {special_use!r}")
        find = self._find
        with self._tx() as (cur, _changed):
            self._lock_owner(cur, user)
            if find(cur, user, name) is not None:
                raise MailboxExists(name)
            self._create_parents_tx(cur, user, name)
            self._create_tx(cur, user, name, special_use)
            mailbox = find(cur, user, name)
        assert mailbox is not None
        return mailbox

    def delete_mailbox(self, user: str, name: str) -> None:
        """RFC 3501 §6.3.4. The mailbox and its messages go; children, if any, stay
        (the parent then shows as \\NonExistent); subscriptions stay (§6.3.6)."""
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        with self._tx() as (cur, changed):
            self._lock_owner(cur, user)
            mailbox = self._find(cur, user, name)
            if mailbox is None:
                raise MailboxNotFound(name)
            self._lock_existing(cur, mailbox.id)
            message_ids = self._mailbox_message_ids(cur, mailbox.id)
            self._delete_mailbox_row(cur, mailbox.id)
            self._collect(cur, message_ids)
            changed.add(mailbox.id)

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        """RFC 3501 §6.3.5: the mailbox and its descendants move, with their
        subscriptions; renaming INBOX moves its messages instead."""
        old, new = normalise_name(old), normalise_name(new)
        if new == INBOX:
            raise MailboxExists(new)
        check_mailbox_name(new)
        find = self._find
        with self._tx() as (cur, changed):
            self._lock_owner(cur, user)
            source = find(cur, user, old)
            if source is None:
                raise MailboxNotFound(old)
            if find(cur, user, new) is not None:
                raise MailboxExists(new)
            if old == INBOX:
                self._rename_inbox(cur, user, source, new, changed)
                return
            if new.startswith(old + DELIMITER):
                raise MailboxNotAllowed("cannot rename a mailbox into its own child")
            moves = [
                (mid, name, new + name[len(old) :]) for mid, name in self._family(cur, user, old)
            ]
            for _mid, _name, target in moves:
                check_mailbox_name(target)
                if find(cur, user, target) is not None:
                    raise MailboxExists(target)
            for mid, name, target in moves:
                self._rename_row(cur, user, mid, name, target)
                changed.add(mid)
            self._create_parents_tx(cur, user, new)

    def _rename_inbox(
        self, cur: Cursor, user: str, inbox: Mailbox, new: str, changed: set[int]
    ) -> None:
        """RFC 3501 §6.3.5: move every INBOX message to a new mailbox, leave INBOX empty;
        INBOX's children are not renamed."""
        self._create_parents_tx(cur, user, new)
        target = self._create_tx(cur, user, new, None)
        self._lock_existing(cur, inbox.id, target)
        rows = self._copy_rows(cur, inbox.id, None, None)
        changed.add(target)
        if rows:
            self._add_rows(cur, target, [(mid, flags) for _uid, mid, flags in rows])
            bump = self._bump(cur, inbox.id)
            self._remove_rows(cur, inbox.id, [r[0] for r in rows], bump)
            changed.add(inbox.id)


class MessageSteps(RowSteps):
    """APPEND, STORE, EXPUNGE, COPY and MOVE over :class:`RowSteps`, and the one read
    both backends answer with the same statement (:meth:`message_flags`)."""

    def message_flags(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageFlags]:
        # No join to message (issue 19: the flag resync of every client).
        rows = self._uid_rows(
            mailbox_id, uids, viewer, "mm.uid, mm.flags, mm.recent, mm.modseq", ""
        )
        flags, new = self._flags, tuple.__new__
        return [
            new(MessageFlags, (uid, flags(text, recent), modseq))
            for uid, text, recent, modseq in rows
        ]

    def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
        *,
        viewer: str | None = None,
    ) -> int:
        """RFC 3501 §6.3.11. The new message is \\Recent in this mailbox."""
        flag_map(flags)  # validates (a lone str is refused) before the tuple() below
        (uid,) = self.append_many(
            mailbox_id, [NewMessage(raw, tuple(flags), internaldate)], viewer=viewer
        )
        return uid

    def append_many(
        self,
        mailbox_id: int,
        messages: Sequence[NewMessage],
        *,
        viewer: str | None = None,
        claim_recent: bool = False,
    ) -> list[int]:
        """RFC 3502 MULTIAPPEND: every message is checked and analysed first, then all
        are inserted in one transaction with consecutive UIDs and one modseq (not
        \\Recent with ``claim_recent``: :meth:`~gateway.store.interfaces.Messages.append_many`)."""
        if isinstance(messages, NewMessage):
            raise TypeError("messages must be a sequence of NewMessage")
        checked = [flag_map(item.flags) for item in messages]
        with self._peek() as cur:
            shared = self._is_shared(cur, mailbox_id)
        prepared = []
        for item, flags in zip(messages, checked, strict=True):
            text, seen = split_seen(flags, shared)
            raw, analysis, internal = self._ingest(item.raw, item.internaldate)
            prepared.append((raw, analysis, internal, text, seen))
        if not prepared:
            return []
        insert = self._insert_message
        with self._tx() as (cur, changed):
            self._lock_mailboxes(cur, mailbox_id)
            entries = [
                (insert(cur, raw, analysis, internal), text)
                for raw, analysis, internal, text, _seen in prepared
            ]
            uids = self._add_rows(cur, mailbox_id, entries, not claim_recent)
            if shared and viewer is not None:
                seen_uids = [(u, True) for u, p in zip(uids, prepared, strict=True) if p[4]]
                self._mark_seen(cur, mailbox_id, viewer, seen_uids)
            changed.add(mailbox_id)
        return uids

    def _mark_seen(
        self, cur: Cursor, mailbox_id: int, viewer: str, seen: list[tuple[int, bool]]
    ) -> None:
        """New rows of a shared mailbox that arrived \\Seen: ``viewer``'s own \\Seen,
        stamped with the modseq the rows were added with."""
        if seen:
            modseq = self._highestmodseq(cur, mailbox_id)
            self._set_private(cur, mailbox_id, viewer, seen, modseq)

    def _write_flag_plan(
        self, cur: Any, mailbox_id: int, plan: FlagPlan, modseq: int, viewer: str | None
    ) -> None:
        """The rows a STORE's plan changes, stamped ``modseq``: the stored flags, and in a
        shared mailbox ``viewer``'s private ones (the generic algorithm and PostgreSQL's
        two-round-trip STORE write the same rows)."""
        self._write_flags(
            cur,
            [(t, modseq, mailbox_id, uid) for uid, t, _p, _e, _r in plan.writes if t is not None],
        )
        if viewer is not None:
            private = [(uid, p) for uid, _t, p, _e, _r in plan.writes if p is not None]
            self._set_private(cur, mailbox_id, viewer, private, modseq)

    def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Iterable[str],
        unchangedsince: int | None = None,
        *,
        viewer: str | None = None,
    ) -> StoreResult:
        """RFC 3501 §6.4.6 with RFC 7162 §3.1.3 UNCHANGEDSINCE. All rows changed by one
        call share one new modseq; \\Recent in ``flags`` is ignored. In a shared mailbox
        \\Seen is ``viewer``'s own (and left alone without a viewer); UNCHANGEDSINCE and
        the returned modseqs are the viewer's (RFC 7162 §3.1.3 per member)."""
        if mode not in ("", "+", "-"):
            raise ValueError(f"unknown STORE mode {mode!r}")
        given = flag_map(flags)
        updated: list[MessageRow] = []
        with self._tx() as (cur, changed):
            self._lock_mailboxes(cur, mailbox_id)
            shared = self._is_shared(cur, mailbox_id)
            rows = self._flag_rows(cur, mailbox_id, uids, viewer if shared else None)
            plan = plan_flags(rows, mode, given, unchangedsince, shared, viewer)
            if plan.writes:
                modseq = self._bump(cur, mailbox_id)
                self._write_flag_plan(cur, mailbox_id, plan, modseq, viewer)
                updated = plan.rows(modseq, self._flags)
                changed.add(mailbox_id)
                if not shared:
                    self._flags_written(mailbox_id, modseq, updated)
        unchanged = None if shared else plan.unchanged(rows, self._flags)
        return StoreResult(updated=updated, modified=plan.modified, unchanged=unchanged)

    def _flags_written(self, mailbox_id: int, modseq: int, rows: list[MessageRow]) -> None:
        """Inside a STORE's write, after its rows of a mailbox that is not shared were
        written with ``modseq``: a backend that answers catch-ups from memory keeps them
        (SQLite: :mod:`gateway.store.sqlite.quiet`). Nothing by default."""

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """RFC 3501 §6.4.3 EXPUNGE and RFC 4315 §2.1 UID EXPUNGE (when ``uids`` is given)."""
        with self._tx() as (cur, changed):
            self._lock_mailboxes(cur, mailbox_id)
            rows = self._deleted_rows(cur, mailbox_id, uids)
            if not rows:
                return []
            gone = [r[0] for r in rows]
            modseq = self._bump(cur, mailbox_id)
            self._remove_rows(cur, mailbox_id, gone, modseq)
            self._collect(cur, [r[1] for r in rows])
            changed.add(mailbox_id)
        return gone

    def copy(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        move: bool = False,
        *,
        viewer: str | None = None,
    ) -> list[tuple[int, int]]:
        """RFC 3501 §6.4.7 COPY / RFC 6851 MOVE: new UIDs follow source UID order
        (RFC 4315 COPYUID), flags go along, the copies are \\Recent; the message content
        is shared, not duplicated. A move is one transaction."""
        with self._tx() as (cur, changed):
            self._lock_mailboxes(cur, src_mailbox_id, dst_mailbox_id)
            rows = self._copy_rows(cur, src_mailbox_id, uids, viewer)
            if not rows:
                return []
            dst_shared = self._is_shared(cur, dst_mailbox_id)
            entries, seen_flags = copy_entries(rows, dst_shared)
            new_uids = self._add_rows(cur, dst_mailbox_id, entries)
            if dst_shared and viewer is not None:
                seen = [(u, True) for u, s in zip(new_uids, seen_flags, strict=True) if s]
                self._mark_seen(cur, dst_mailbox_id, viewer, seen)
            changed.add(dst_mailbox_id)
            old_uids = [r[0] for r in rows]
            if move:
                modseq = self._bump(cur, src_mailbox_id)
                self._remove_rows(cur, src_mailbox_id, old_uids, modseq)
                changed.add(src_mailbox_id)
        return list(zip(old_uids, new_uids, strict=True))
