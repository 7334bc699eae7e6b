"""The default store: one SQLite file in WAL mode implementing :class:`~gateway.store.interfaces.Store`.

Durability comes first: every write is one ``BEGIN IMMEDIATE`` transaction committed
with ``synchronous=FULL``, so when :meth:`SQLiteStore.deliver` returns, the message and
its POP3 ledger row are on disk together and the fetcher may DELE it upstream.
Listeners hear about a change only after its commit, never from inside a transaction.

Decisions the contract leaves open, made here:

* \\Recent is a per-row bit set at insertion (APPEND, delivery, COPY/MOVE destination)
  and cleared by :meth:`~SQLiteStore.clear_recent`; it appears in ``MessageRow.flags``
  and ``MessageInfo.flags`` while set, so a session needs no second source. STORE
  ignores it (RFC 3501 §2.3.2: it cannot be altered by the client). Clearing it is not
  a mailbox change: no modseq, no listener call.
* Flags: system flags are stored in canonical case; keywords keep the spelling first
  used and compare case-insensitively (ASCII). A flag must be an IMAP atom (optionally
  after one backslash), otherwise :class:`ValueError`.
* :meth:`~SQLiteStore.ensure_user` provisions INBOX and the default special-use folders
  the first time a user is seen (no INBOX yet); folders the user later deletes are not
  brought back.
* DELETE of a mailbox with children removes the mailbox and its messages and leaves the
  children in place (as Dovecot does); the parent is then \\NonExistent in LIST.
* RENAME moves subscriptions along with the renamed mailboxes; DELETE keeps them
  (RFC 3501 §6.3.6: a server must not remove a subscription on its own).
* Listeners are called, once per mailbox per write, for content changes (append,
  delivery, STORE that changed something, expunge, copy/move) and for DELETE and
  RENAME; not for CREATE, subscriptions or clear_recent.
* Search by sent date falls back to INTERNALDATE when a message has no usable Date:
  header, as RFC 5256 §2.2 does for SORT.
* Shared mailboxes (owner ``shared:NAME``, households): \\Seen lives in ``private_flag``
  per viewer, never in the shared ``flags`` column; reads with a ``viewer`` go through
  :data:`_PRIVATE_SOURCE`, a subquery with the same columns as ``mailbox_message`` that
  merges the viewer's \\Seen and modseq in. A shared tree is provisioned with INBOX only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from gateway.core.criteria import Criteria
from gateway.core.flags import RECENT, SPECIAL_USES, canonical_flag
from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.message.mime import Analysis, analyze
from gateway.store.interfaces import (
    DELIMITER,
    INBOX,
    ChangeListener,
    Changes,
    Delivery,
    LedgerEntry,
    Mailbox,
    MailboxCounts,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageInfo,
    MessageRow,
    MessageTooLarge,
    NewMessage,
    SelectionSummary,
    StoreError,
    StoreResult,
    is_shared_owner,
)
from gateway.store.schema import migrate, schema_version
from gateway.store.search import build_query

log = structlog.get_logger(__name__)

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another process's lock before failing."""

MMAP_SIZE = 256 * 1024 * 1024
"""Bytes of the database file SQLite reads through a memory map instead of ``read()``
(``PRAGMA mmap_size``): a message body then comes straight from the OS page cache
with one copy fewer (UID FETCH of 33 MB: ~18 ms -> ~12 ms of store time). The mapped
pages are the kernel's page cache, shared and reclaimable, though they count in the
process's RSS while mapped; beyond this size SQLite reads as before."""

MAX_MAILBOX_NAME_LENGTH = 512
"""Longest mailbox name, in characters."""

MAX_MAILBOX_DEPTH = 32
"""Most hierarchy levels in one mailbox name."""

MAX_UID = 2**32 - 1
"""UIDs and UIDVALIDITY are 32-bit unsigned (RFC 3501 §2.3.1.1, nz-number)."""

FLAG_CACHE_SIZE = 4096
"""Distinct (flags text, recent) pairs whose frozenset is kept; mailboxes reuse few."""

DEFAULT_FOLDERS: tuple[tuple[str, str], ...] = (
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
"""Folders every new user gets, with their RFC 6154 special-use attribute."""

_ATOM_SPECIALS = frozenset('(){ %*"\\]')
_SEEN_TOKEN = " \\Seen "
_DELETED_TOKEN = " \\Deleted "

_PRIVATE_SOURCE = (
    "(SELECT x.mailbox_id AS mailbox_id, x.uid AS uid, x.message_id AS message_id,"
    " CASE WHEN p.seen = 1 THEN trim(x.flags || ' \\Seen') ELSE x.flags END AS flags,"
    " max(x.modseq, coalesce(p.modseq, 0)) AS modseq, x.recent AS recent"
    " FROM mailbox_message x LEFT JOIN private_flag p ON p.mailbox_id = x.mailbox_id"
    " AND p.uid = x.uid AND p.user = ?)"
)
"""``mailbox_message`` as one viewer sees a shared mailbox (one parameter: the viewer)."""

_SEEN_KEY = "\\seen"

_MAILBOX_COLUMNS = (
    "m.id, m.owner, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, m.special_use,"
    " s.name IS NOT NULL"
)
_MAILBOX_FROM = "mailbox m LEFT JOIN subscription s ON s.owner = m.owner AND s.name = m.name"


def check_message(raw: bytes, limit: int) -> None:
    """What every backend checks before storing a message: bytes, and not over ``limit``."""
    if not isinstance(raw, bytes):
        raise TypeError("raw message must be bytes")
    if len(raw) > limit:
        raise MessageTooLarge(f"message of {len(raw)} bytes exceeds the limit of {limit}")


def stored_internaldate(
    when: datetime.datetime | None, now: datetime.datetime
) -> datetime.datetime:
    """INTERNALDATE as every backend keeps it: aware (a naive value is taken as UTC),
    whole seconds, in its own offset rounded to minutes; ``now`` when not given."""
    if when is None:
        when = now
    elif when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=datetime.UTC)
    offset = when.utcoffset()
    assert offset is not None
    zone = datetime.timezone(datetime.timedelta(minutes=int(offset.total_seconds() // 60)))
    return when.replace(microsecond=0).astimezone(zone)


def normalise_name(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1), and so is it as the first level of a
    hierarchical name: "inbox/x" is "INBOX/x", never a second, shadow inbox."""
    head, sep, rest = name.partition(DELIMITER)
    if head != INBOX and head.upper() == INBOX:
        return INBOX + sep + rest
    return name


def check_mailbox_name(name: str) -> None:
    """Raise :class:`MailboxNotAllowed` unless ``name`` can name a mailbox here.

    Refused: empty names or levels ("a//b"), a leading or trailing delimiter, control
    characters, more than :data:`MAX_MAILBOX_NAME_LENGTH` characters or
    :data:`MAX_MAILBOX_DEPTH` levels.
    """
    if not name:
        raise MailboxNotAllowed("empty mailbox name")
    if len(name) > MAX_MAILBOX_NAME_LENGTH:
        raise MailboxNotAllowed(f"mailbox name longer than {MAX_MAILBOX_NAME_LENGTH}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise MailboxNotAllowed("control character in mailbox name")
    levels = name.split(DELIMITER)
    if len(levels) > MAX_MAILBOX_DEPTH:
        raise MailboxNotAllowed(f"mailbox name deeper than {MAX_MAILBOX_DEPTH} levels")
    if any(level == "" for level in levels):
        raise MailboxNotAllowed("empty hierarchy level in mailbox name")


def parent_names(name: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def _check_flag(flag: str) -> None:
    if not isinstance(flag, str):
        raise TypeError(f"flag must be str, not {type(flag).__name__}")
    body = flag[1:] if flag.startswith("\\") else flag
    if not body or any(c in _ATOM_SPECIALS or not ("\x21" <= c <= "\x7e") for c in body):
        raise ValueError(f"not a valid IMAP flag: {flag!r}")


def flag_map(flags: Iterable[str]) -> dict[str, str]:
    """Validated flags keyed by their lower-case form, \\Recent dropped (not settable)."""
    if isinstance(flags, str):
        raise TypeError("flags must be an iterable of str, not one str")
    out: dict[str, str] = {}
    for flag in flags:
        _check_flag(flag)
        flag = canonical_flag(flag)
        if flag != RECENT:
            out.setdefault(flag.lower(), flag)
    return out


def _stored_map(text: str) -> dict[str, str]:
    return {f.lower(): f for f in text.split()}


def _flags_text(flags: dict[str, str]) -> str:
    return " ".join(sorted(flags.values()))


def _split_seen(flags: dict[str, str], shared: bool) -> tuple[str, bool]:
    """(flags text for ``mailbox_message``, whether \\Seen is set): in a shared mailbox
    \\Seen is private and never written to the shared column."""
    if not shared:
        return _flags_text(flags), _SEEN_KEY in flags
    rest = {k: v for k, v in flags.items() if k != _SEEN_KEY}
    return _flags_text(rest), _SEEN_KEY in flags


def _uid_list(uids: Iterable[int]) -> str:
    """UIDs as one JSON parameter for ``json_each``: any count, one bound value."""
    return json.dumps([int(u) for u in uids])


class SQLiteStore:
    """The :class:`~gateway.store.interfaces.Store` on one SQLite file.

    Used from the reactor thread only; it holds one connection. ``clock`` gives the
    current time (epoch seconds) for default INTERNALDATEs, ledger timestamps and the
    UIDVALIDITY sequence; ``analyze`` computes a message's IMAP facts at ingest.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
        analyze: Callable[[bytes], Analysis] = analyze,
    ) -> None:
        self.path = Path(path)
        self.max_message_size = max_message_size
        self._clock = clock
        self._analyze = analyze
        self._listeners: list[ChangeListener] = []
        self._flag_cache: dict[tuple[str, int], frozenset[str]] = {}
        self._shared_ids: dict[int, bool] = {}  # mailbox id → owner is shared (ids never reused)
        self._zones: dict[int, datetime.timezone] = {}
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), isolation_level=None
        )
        try:
            self._configure()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> SQLiteStore:
        """Open (creating and migrating if needed) the store at ``path``."""
        return cls(path, max_message_size=max_message_size, clock=clock)

    def _configure(self) -> None:
        conn = self.db
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA mmap_size = {int(MMAP_SIZE)}")
        ran = migrate(conn)
        # Seed the UIDVALIDITY sequence from the clock once, when the store is created.
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('uidvalidity', ?)",
            (max(1, int(self._clock())),),
        )
        log.info(
            "store.opened",
            path=str(self.path),
            journal_mode=mode,
            schema_version=schema_version(conn),
            migrations_run=ran,
        )

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions and notification -------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[set[int]]:
        """One ``BEGIN IMMEDIATE`` transaction; yields the set of changed mailbox ids,
        whose listeners are called once the commit has succeeded."""
        conn = self.db
        if conn.in_transaction:
            raise RuntimeError("store write started inside another transaction")
        changed: set[int] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield changed
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._notify(changed)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so several SELECTs see one snapshot."""
        conn = self.db
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _notify(self, mailbox_ids: set[int]) -> None:
        for mailbox_id in sorted(mailbox_ids):
            for listener in list(self._listeners):
                try:
                    listener(mailbox_id)
                except Exception:
                    log.exception("store.listener_failed", mailbox_id=mailbox_id)

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA optimize")
            finally:
                self._conn.close()
                self._conn = None

    # ---- small helpers -------------------------------------------------------------

    def _flags(self, text: str, recent: int) -> frozenset[str]:
        key = (text, recent)
        flags = self._flag_cache.get(key)
        if flags is None:
            if len(self._flag_cache) >= FLAG_CACHE_SIZE:
                self._flag_cache.clear()
            items = text.split()
            if recent:
                items.append(RECENT)
            flags = self._flag_cache[key] = frozenset(items)
        return flags

    def _zone(self, minutes: int) -> datetime.timezone:
        zone = self._zones.get(minutes)
        if zone is None:
            zone = self._zones[minutes] = datetime.timezone(datetime.timedelta(minutes=minutes))
        return zone

    def _now(self) -> datetime.datetime:
        """The current time in the server's local zone (INTERNALDATE default)."""
        return datetime.datetime.fromtimestamp(int(self._clock())).astimezone()

    def _require(self, cur: sqlite3.Connection, mailbox_id: int) -> None:
        if cur.execute("SELECT 1 FROM mailbox WHERE id = ?", (mailbox_id,)).fetchone() is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")

    def _is_shared(self, cur: sqlite3.Connection, mailbox_id: int) -> bool:
        """Whether the mailbox belongs to a shared tree; raises MailboxNotFound."""
        known = self._shared_ids.get(mailbox_id)
        if known is None:
            row = cur.execute("SELECT owner FROM mailbox WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            known = self._shared_ids[mailbox_id] = is_shared_owner(row[0])
        return known

    def _source(
        self, cur: sqlite3.Connection, mailbox_id: int, viewer: str | None
    ) -> tuple[str, list[object]]:
        """The rows to read for ``viewer``: the table itself, or its private view."""
        if viewer is not None and self._is_shared(cur, mailbox_id):
            return _PRIVATE_SOURCE, [viewer]
        return "mailbox_message", []

    def _set_private(
        self,
        cur: sqlite3.Connection,
        mailbox_id: int,
        viewer: str,
        entries: Iterable[tuple[int, bool]],
        modseq: int,
    ) -> None:
        """Record ``viewer``'s own \\Seen for (uid, seen) entries, stamped ``modseq``."""
        cur.executemany(
            "INSERT INTO private_flag (mailbox_id, user, uid, seen, modseq)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (mailbox_id, user, uid)"
            " DO UPDATE SET seen = excluded.seen, modseq = excluded.modseq",
            [(mailbox_id, viewer, uid, int(seen), modseq) for uid, seen in entries],
        )

    def _highestmodseq(self, cur: sqlite3.Connection, mailbox_id: int) -> int:
        row = cur.execute(
            "SELECT highestmodseq FROM mailbox WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return int(row[0])

    def _find(self, cur: sqlite3.Connection, user: str, name: str) -> Mailbox | None:
        row = cur.execute(
            f"SELECT {_MAILBOX_COLUMNS} FROM {_MAILBOX_FROM} WHERE m.owner = ? AND m.name = ?",
            (user, name),
        ).fetchone()
        return None if row is None else Mailbox(*row[:7], subscribed=bool(row[7]))

    def _bump(self, cur: sqlite3.Connection, mailbox_id: int) -> int:
        """The mailbox's next modseq, recorded as its HIGHESTMODSEQ (RFC 7162 §3.1.1)."""
        rows = cur.execute(
            "UPDATE mailbox SET highestmodseq = highestmodseq + 1 WHERE id = ?"
            " RETURNING highestmodseq",
            (mailbox_id,),
        ).fetchall()
        if not rows:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return int(rows[0][0])

    def _next_uidvalidity(self, cur: sqlite3.Connection) -> int:
        """A UIDVALIDITY never handed out before in this store: a persistent counter that
        also keeps up with the clock, so values look like Dovecot's (creation times)."""
        (counter,) = cur.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        value = max(int(counter), int(self._clock()), 1)
        if value > MAX_UID:
            raise StoreError("UIDVALIDITY space exhausted")
        cur.execute("UPDATE meta SET value = ? WHERE key = 'uidvalidity'", (value + 1,))
        return value

    def _create_tx(
        self, cur: sqlite3.Connection, user: str, name: str, special_use: str | None
    ) -> int:
        """Insert one mailbox row (no parent handling); returns its id."""
        return int(
            cur.execute(
                "INSERT INTO mailbox (owner, name, uidvalidity, special_use) VALUES (?, ?, ?, ?)",
                (user, name, self._next_uidvalidity(cur), special_use),
            ).lastrowid
        )

    def _create_parents_tx(self, cur: sqlite3.Connection, user: str, name: str) -> None:
        """RFC 3501 §6.3.3: create the superior names a new name needs."""
        for parent in parent_names(name):
            if self._find(cur, user, parent) is None:
                self._create_tx(cur, user, parent, None)

    def _ensure_user_tx(self, cur: sqlite3.Connection, user: str) -> None:
        if self._find(cur, user, INBOX) is not None:
            return
        self._create_tx(cur, user, INBOX, None)
        if is_shared_owner(user):
            return  # a shared tree starts with its INBOX only; members subscribe themselves
        names = [INBOX]
        for name, use in DEFAULT_FOLDERS:
            if self._find(cur, user, name) is None:
                self._create_tx(cur, user, name, use)
            names.append(name)
        cur.executemany(
            "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)",
            [(user, n) for n in names],
        )

    def _internaldate(self, when: datetime.datetime | None) -> tuple[int, int, int]:
        """(epoch seconds, offset minutes, day ordinal in that offset)."""
        when = stored_internaldate(when, self._now())
        offset = when.utcoffset()
        assert offset is not None
        return int(when.timestamp()), int(offset.total_seconds() // 60), when.date().toordinal()

    def _ingest(
        self, raw: bytes, internaldate: datetime.datetime | None
    ) -> tuple[bytes, Analysis, tuple[int, int, int]]:
        """Checks and computations done before the write transaction starts."""
        check_message(raw, self.max_message_size)
        return raw, self._analyze(raw), self._internaldate(internaldate)

    def _insert_message(
        self,
        cur: sqlite3.Connection,
        raw: bytes,
        analysis: Analysis,
        internal: tuple[int, int, int],
    ) -> int:
        epoch, minutes, day = internal
        sent_epoch: int | None = None
        sent_day = day
        sent = analysis.sent_date
        if sent is not None:
            if sent.tzinfo is None or sent.utcoffset() is None:
                sent = sent.replace(tzinfo=datetime.UTC)
            try:
                sent_epoch = int(sent.timestamp())
                sent_day = sent.date().toordinal()
            except (OverflowError, ValueError, OSError):
                sent_epoch, sent_day = None, day
        message_id = int(
            cur.execute(
                "INSERT INTO message (sha256, size, internaldate, internaldate_tz, internal_day,"
                " sent_date, sent_day, message_id_header, envelope, bodystructure, body, parts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hashlib.sha256(raw).digest(),
                    len(raw),
                    epoch,
                    minutes,
                    day,
                    sent_epoch,
                    sent_day,
                    analysis.message_id,
                    analysis.envelope,
                    analysis.bodystructure,
                    analysis.body,
                    analysis.parts,
                ),
            ).lastrowid
        )
        cur.execute("INSERT INTO content (message_id, raw) VALUES (?, ?)", (message_id, raw))
        cur.executemany(
            "INSERT INTO header_field (message_id, name, pos, value_folded) VALUES (?, ?, ?, ?)",
            [
                (message_id, name.lower(), pos, value.casefold())
                for pos, (name, value) in enumerate(analysis.headers)
            ],
        )
        header_text = "\n".join(f"{name.lower()}: {value}" for name, value in analysis.headers)
        cur.execute(
            "INSERT INTO message_text (message_id, header_folded, text_folded) VALUES (?, ?, ?)",
            (message_id, header_text.casefold(), analysis.text.casefold()),
        )
        return message_id

    def _add_rows(
        self, cur: sqlite3.Connection, mailbox_id: int, entries: Sequence[tuple[int, str]]
    ) -> list[int]:
        """Give (message id, flags text) entries consecutive new UIDs in a mailbox, all
        \\Recent and stamped with one new modseq; returns the UIDs."""
        modseq = self._bump(cur, mailbox_id)
        count = len(entries)
        (end,) = cur.execute(
            "UPDATE mailbox SET uidnext = uidnext + ? WHERE id = ? RETURNING uidnext",
            (count, mailbox_id),
        ).fetchall()[0]
        if end - 1 > MAX_UID:
            raise StoreError("UID space of the mailbox exhausted")
        first = end - count
        uids = list(range(first, end))
        cur.executemany(
            "INSERT INTO mailbox_message (mailbox_id, uid, message_id, flags, modseq, recent)"
            " VALUES (?, ?, ?, ?, ?, 1)",
            [
                (mailbox_id, uid, message_id, flags, modseq)
                for uid, (message_id, flags) in zip(uids, entries, strict=True)
            ],
        )
        return uids

    def _remove_rows(
        self, cur: sqlite3.Connection, mailbox_id: int, uids: Sequence[int], modseq: int
    ) -> None:
        """Drop rows from a mailbox, remembering the UIDs for QRESYNC (RFC 7162 §3.2.10)."""
        cur.executemany(
            "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
            [(mailbox_id, uid, modseq) for uid in uids],
        )
        cur.execute(
            "DELETE FROM mailbox_message WHERE mailbox_id = ?"
            " AND uid IN (SELECT value FROM json_each(?))",
            (mailbox_id, _uid_list(uids)),
        )
        cur.execute(
            "DELETE FROM private_flag WHERE mailbox_id = ?"
            " AND uid IN (SELECT value FROM json_each(?))",
            (mailbox_id, _uid_list(uids)),
        )

    def _collect(self, cur: sqlite3.Connection, message_ids: Iterable[int]) -> None:
        """Delete messages (and, by cascade, their content) no mailbox refers to any more."""
        cur.execute(
            "DELETE FROM message WHERE id IN (SELECT value FROM json_each(?))"
            " AND NOT EXISTS (SELECT 1 FROM mailbox_message x WHERE x.message_id = message.id)",
            (json.dumps(sorted(set(message_ids))),),
        )

    # ---- users and mailboxes -------------------------------------------------------

    def ensure_user(self, user: str) -> None:
        with self._write():
            self._ensure_user_tx(self.db, user)

    def list_mailboxes(self, user: str) -> list[Mailbox]:
        rows = self.db.execute(
            f"SELECT {_MAILBOX_COLUMNS} FROM {_MAILBOX_FROM} WHERE m.owner = ?"
            " ORDER BY m.name != 'INBOX', m.name",
            (user,),
        ).fetchall()
        return [Mailbox(*row[:7], subscribed=bool(row[7])) for row in rows]

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        name = normalise_name(name)
        mailbox = self._find(self.db, user, name)
        if mailbox is None:
            raise MailboxNotFound(name)
        return mailbox

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxExists(name)
        check_mailbox_name(name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailboxNotAllowed(f"unknown special-use attribute {special_use!r}")
        with self._write():
            cur = self.db
            if self._find(cur, user, name) is not None:
                raise MailboxExists(name)
            self._create_parents_tx(cur, user, name)
            self._create_tx(cur, user, name, special_use)
            mailbox = self._find(cur, user, name)
        assert mailbox is not None
        return mailbox

    def delete_mailbox(self, user: str, name: str) -> None:
        """RFC 3501 §6.3.4. The mailbox and its messages go; children, if any, stay
        (the parent then shows as \\NonExistent); subscriptions stay (§6.3.6)."""
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        with self._write() as changed:
            cur = self.db
            mailbox = self._find(cur, user, name)
            if mailbox is None:
                raise MailboxNotFound(name)
            message_ids = [
                r[0]
                for r in cur.execute(
                    "SELECT message_id FROM mailbox_message WHERE mailbox_id = ?", (mailbox.id,)
                )
            ]
            cur.execute("DELETE FROM mailbox WHERE id = ?", (mailbox.id,))
            self._collect(cur, message_ids)
            changed.add(mailbox.id)

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        old, new = normalise_name(old), normalise_name(new)
        if new == INBOX:
            raise MailboxExists(new)
        check_mailbox_name(new)
        with self._write() as changed:
            cur = self.db
            source = self._find(cur, user, old)
            if source is None:
                raise MailboxNotFound(old)
            if self._find(cur, user, new) is not None:
                raise MailboxExists(new)
            if old == INBOX:
                self._rename_inbox(cur, user, source, new, changed)
                return
            if new.startswith(old + DELIMITER):
                raise MailboxNotAllowed("cannot rename a mailbox into its own child")
            prefix = old + DELIMITER
            family = cur.execute(
                "SELECT id, name FROM mailbox WHERE owner = ?"
                " AND (name = ? OR substr(name, 1, ?) = ?) ORDER BY name",
                (user, old, len(prefix), prefix),
            ).fetchall()
            moves = [(mid, name, new + name[len(old) :]) for mid, name in family]
            for _mid, _name, target in moves:
                check_mailbox_name(target)
                if self._find(cur, user, target) is not None:
                    raise MailboxExists(target)
            for mid, name, target in moves:
                cur.execute("UPDATE mailbox SET name = ? WHERE id = ?", (target, mid))
                if cur.execute(
                    "DELETE FROM subscription WHERE owner = ? AND name = ? RETURNING 1",
                    (user, name),
                ).fetchall():
                    cur.execute(
                        "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)",
                        (user, target),
                    )
                changed.add(mid)
            self._create_parents_tx(cur, user, new)

    def _rename_inbox(
        self, cur: sqlite3.Connection, user: str, inbox: Mailbox, new: str, changed: set[int]
    ) -> None:
        """RFC 3501 §6.3.5: move every INBOX message to a new mailbox, leave INBOX empty;
        INBOX's children are not renamed."""
        self._create_parents_tx(cur, user, new)
        target = self._create_tx(cur, user, new, None)
        rows = cur.execute(
            "SELECT uid, message_id, flags FROM mailbox_message WHERE mailbox_id = ? ORDER BY uid",
            (inbox.id,),
        ).fetchall()
        changed.add(target)
        if rows:
            self._add_rows(cur, target, [(mid, flags) for _uid, mid, flags in rows])
            self._remove_rows(cur, inbox.id, [r[0] for r in rows], self._bump(cur, inbox.id))
            changed.add(inbox.id)

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        name = normalise_name(name)
        with self._write():
            if subscribed:
                self.db.execute(
                    "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)", (user, name)
                )
            else:
                self.db.execute(
                    "DELETE FROM subscription WHERE owner = ? AND name = ?", (user, name)
                )

    def subscriptions(self, user: str) -> list[str]:
        rows = self.db.execute(
            "SELECT name FROM subscription WHERE owner = ? ORDER BY name", (user,)
        ).fetchall()
        return [r[0] for r in rows]

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        with self._read() as conn:
            head = conn.execute(
                "SELECT uidvalidity, uidnext, highestmodseq FROM mailbox WHERE id = ?",
                (mailbox_id,),
            ).fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            source, source_params = self._source(conn, mailbox_id, viewer)
            messages, recent, unseen, size = conn.execute(
                "SELECT count(*), total(mm.recent),"
                " total(instr(' ' || mm.flags || ' ', ?) = 0), total(m.size)"
                f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                " WHERE mm.mailbox_id = ?",
                (_SEEN_TOKEN, *source_params, mailbox_id),
            ).fetchone()
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
        with self._read() as conn:
            self._require(conn, mailbox_id)
            source, source_params = self._source(conn, mailbox_id, viewer)
            rows = conn.execute(
                f"SELECT uid, flags, recent, modseq FROM {source} WHERE mailbox_id = ?"
                " ORDER BY uid",
                (*source_params, mailbox_id),
            ).fetchall()
        flags = self._flags
        return [MessageRow(uid, flags(text, recent), modseq) for uid, text, recent, modseq in rows]

    def message_uids(self, mailbox_id: int) -> array:
        with self._read() as conn:
            self._require(conn, mailbox_id)
            cursor = conn.execute(
                "SELECT uid FROM mailbox_message WHERE mailbox_id = ? ORDER BY uid",
                (mailbox_id,),
            )
            return array("I", [row[0] for row in cursor])

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        with self._read() as conn:
            self._require(conn, mailbox_id)
            recent = array(
                "I",
                [
                    row[0]
                    for row in conn.execute(
                        "SELECT uid FROM mailbox_message WHERE mailbox_id = ? AND recent = 1"
                        " ORDER BY uid",
                        (mailbox_id,),
                    )
                ],
            )
            source, source_params = self._source(conn, mailbox_id, viewer)
            (first_unseen,) = conn.execute(
                f"SELECT min(uid) FROM {source}"
                " WHERE mailbox_id = ? AND instr(' ' || flags || ' ', ?) = 0",
                (*source_params, mailbox_id, _SEEN_TOKEN),
            ).fetchone()
            # Keywords are never private, so the shared column has them all.
            texts = conn.execute(
                "SELECT DISTINCT flags FROM mailbox_message WHERE mailbox_id = ? AND flags != ''",
                (mailbox_id,),
            ).fetchall()
        keywords = {f for (text,) in texts for f in text.split() if not f.startswith("\\")}
        return SelectionSummary(
            recent=recent, first_unseen_uid=first_unseen, keywords=tuple(sorted(keywords))
        )

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        with self._read() as conn:
            head = conn.execute(
                "SELECT highestmodseq FROM mailbox WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            # "ORDER BY +uid" keeps the planner on the (mailbox_id, modseq) index and
            # sorts the few changed rows, instead of walking the whole mailbox in UID order.
            source, source_params = self._source(conn, mailbox_id, viewer)
            rows = conn.execute(
                f"SELECT uid, flags, recent, modseq FROM {source}"
                " WHERE mailbox_id = ? AND modseq > ? ORDER BY +uid",
                (*source_params, mailbox_id, modseq),
            ).fetchall()
            gone = conn.execute(
                "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY +uid",
                (mailbox_id, modseq),
            ).fetchall()
        flags = self._flags
        return Changes(
            highestmodseq=int(head[0]),
            changed=[MessageRow(u, flags(t, r), m) for u, t, r, m in rows],
            expunged=[r[0] for r in gone],
        )

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        with self._read() as conn:
            self._require(conn, mailbox_id)
            source, source_params = self._source(conn, mailbox_id, viewer)
            wanted = sorted(set(uids))
            if wanted and wanted[-1] - wanted[0] + 1 == len(wanted):
                # A contiguous run (FETCH 1:* in batches): a range scan of the primary
                # key, about twice as fast as joining a json_each list.
                where, params = "mm.uid BETWEEN ? AND ?", [wanted[0], wanted[-1]]
            else:
                where, params = "mm.uid IN (SELECT value FROM json_each(?))", [_uid_list(wanted)]
            rows = conn.execute(
                "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.internaldate,"
                " m.internaldate_tz, m.envelope, m.bodystructure, m.body, m.parts"
                f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                f" WHERE mm.mailbox_id = ? AND {where} ORDER BY mm.uid",
                (*source_params, mailbox_id, *params),
            ).fetchall()
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
            ) in rows
        ]

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        with self._read() as conn:
            row = conn.execute(
                "SELECT c.raw FROM mailbox_message mm JOIN content c"
                " ON c.message_id = mm.message_id WHERE mm.mailbox_id = ? AND mm.uid = ?",
                (mailbox_id, uid),
            ).fetchone()
            if row is None:
                self._require(conn, mailbox_id)
                raise KeyError(uid)
        return bytes(row[0])

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        if not uids:
            with self._read() as conn:
                self._require(conn, mailbox_id)
            return {}
        wanted = sorted(set(uids))
        low, high = wanted[0], wanted[-1]
        with self._read() as conn:
            if high - low + 1 == len(wanted):
                # A contiguous run (the usual 1:500): a range scan of the primary key.
                rows = conn.execute(
                    "SELECT mm.uid, c.raw FROM mailbox_message mm JOIN content c"
                    " ON c.message_id = mm.message_id"
                    " WHERE mm.mailbox_id = ? AND mm.uid BETWEEN ? AND ?",
                    (mailbox_id, low, high),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT mm.uid, c.raw FROM mailbox_message mm JOIN content c"
                    " ON c.message_id = mm.message_id"
                    " WHERE mm.mailbox_id = ? AND mm.uid IN (SELECT value FROM json_each(?))",
                    (mailbox_id, _uid_list(wanted)),
                ).fetchall()
            if len(rows) < len(wanted):
                self._require(conn, mailbox_id)
        return dict(rows)

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
        self, mailbox_id: int, messages: Sequence[NewMessage], *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3502 MULTIAPPEND: every message is checked and analysed first, then all
        are inserted in one transaction with consecutive UIDs and one modseq."""
        if isinstance(messages, NewMessage):
            raise TypeError("messages must be a sequence of NewMessage")
        checked = [flag_map(item.flags) for item in messages]
        shared = self._is_shared(self.db, mailbox_id)
        prepared = []
        for item, flags in zip(messages, checked, strict=True):
            flags_text, seen = _split_seen(flags, shared)
            raw, analysis, internal = self._ingest(item.raw, item.internaldate)
            prepared.append((raw, analysis, internal, flags_text, seen))
        if not prepared:
            return []
        with self._write() as changed:
            cur = self.db
            self._require(cur, mailbox_id)
            entries = [
                (self._insert_message(cur, raw, analysis, internal), flags_text)
                for raw, analysis, internal, flags_text, _seen in prepared
            ]
            uids = self._add_rows(cur, mailbox_id, entries)
            if shared and viewer is not None:
                seen_uids = [(u, True) for u, p in zip(uids, prepared, strict=True) if p[4]]
                if seen_uids:
                    modseq = self._highestmodseq(cur, mailbox_id)
                    self._set_private(cur, mailbox_id, viewer, seen_uids, modseq)
            changed.add(mailbox_id)
        return uids

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
        modified: list[int] = []
        with self._write() as changed:
            cur = self.db
            self._require(cur, mailbox_id)
            shared = self._is_shared(cur, mailbox_id)
            rows = cur.execute(
                "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, p.seen, p.modseq"
                " FROM mailbox_message mm LEFT JOIN private_flag p"
                " ON p.mailbox_id = mm.mailbox_id AND p.uid = mm.uid AND p.user = ?"
                " WHERE mm.mailbox_id = ? AND mm.uid IN (SELECT value FROM json_each(?))"
                " ORDER BY mm.uid",
                (viewer if shared else None, mailbox_id, _uid_list(uids)),
            ).fetchall()
            # (uid, new shared text or None, new private seen or None, effective text, recent)
            writes: list[tuple[int, str | None, bool | None, str, int]] = []
            for uid, text, recent, modseq, pseen, pmodseq in rows:
                if unchangedsince is not None and max(modseq, pmodseq or 0) > unchangedsince:
                    modified.append(uid)
                    continue
                current = _stored_map(text)
                if shared and viewer is not None and pseen:
                    current[_SEEN_KEY] = "\\Seen"
                if mode == "":
                    new = dict(given)
                elif mode == "+":
                    new = {**given, **current}
                else:
                    new = {k: v for k, v in current.items() if k not in given}
                if shared and viewer is None:
                    new.pop(_SEEN_KEY, None)  # nobody's \Seen to change
                if new.keys() == current.keys():
                    continue
                new_text, seen = _split_seen(new, shared)
                shared_write = new_text if new_text.split() != text.split() else None
                private_write = seen if shared and seen != bool(pseen) else None
                writes.append((uid, shared_write, private_write, _flags_text(new), recent))
            if writes:
                modseq = self._bump(cur, mailbox_id)
                cur.executemany(
                    "UPDATE mailbox_message SET flags = ?, modseq = ?"
                    " WHERE mailbox_id = ? AND uid = ?",
                    [
                        (t, modseq, mailbox_id, uid)
                        for uid, t, _p, _e, _r in writes
                        if t is not None
                    ],
                )
                if viewer is not None:
                    private = [(uid, p) for uid, _t, p, _e, _r in writes if p is not None]
                    self._set_private(cur, mailbox_id, viewer, private, modseq)
                updated = [
                    MessageRow(uid, self._flags(effective, recent), modseq)
                    for uid, _t, _p, effective, recent in writes
                ]
                changed.add(mailbox_id)
        return StoreResult(updated=updated, modified=modified)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """RFC 3501 §6.4.3 EXPUNGE and RFC 4315 §2.1 UID EXPUNGE (when ``uids`` is given)."""
        with self._write() as changed:
            cur = self.db
            self._require(cur, mailbox_id)
            sql = (
                "SELECT uid, message_id FROM mailbox_message WHERE mailbox_id = ?"
                " AND instr(' ' || flags || ' ', ?) > 0"
            )
            params: list[object] = [mailbox_id, _DELETED_TOKEN]
            if uids is not None:
                sql += " AND uid IN (SELECT value FROM json_each(?))"
                params.append(_uid_list(uids))
            rows = cur.execute(sql + " ORDER BY uid", params).fetchall()
            if not rows:
                return []
            gone = [r[0] for r in rows]
            self._remove_rows(cur, mailbox_id, gone, self._bump(cur, mailbox_id))
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
        with self._write() as changed:
            cur = self.db
            self._require(cur, src_mailbox_id)
            self._require(cur, dst_mailbox_id)
            source, source_params = self._source(cur, src_mailbox_id, viewer)
            rows = cur.execute(
                f"SELECT uid, message_id, flags FROM {source}"
                " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
                (*source_params, src_mailbox_id, _uid_list(uids)),
            ).fetchall()
            if not rows:
                return []
            dst_shared = self._is_shared(cur, dst_mailbox_id)
            split = [_split_seen(_stored_map(f), dst_shared) for _u, _mid, f in rows]
            new_uids = self._add_rows(
                cur,
                dst_mailbox_id,
                [(mid, t) for (_u, mid, _f), (t, _s) in zip(rows, split, strict=True)],
            )
            if dst_shared and viewer is not None:
                seen = [(u, True) for u, (_t, s) in zip(new_uids, split, strict=True) if s]
                if seen:
                    modseq = self._highestmodseq(cur, dst_mailbox_id)
                    self._set_private(cur, dst_mailbox_id, viewer, seen, modseq)
            changed.add(dst_mailbox_id)
            old_uids = [r[0] for r in rows]
            if move:
                modseq = self._bump(cur, src_mailbox_id)
                self._remove_rows(cur, src_mailbox_id, old_uids, modseq)
                changed.add(src_mailbox_id)
        return list(zip(old_uids, new_uids, strict=True))

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3501 §6.4.4, answered by one SQL query (see :mod:`gateway.store.search`);
        in a shared mailbox SEEN/UNSEEN and MODSEQ are ``viewer``'s own."""
        with self._read() as conn:
            self._require(conn, mailbox_id)
            (largest,) = conn.execute(
                "SELECT max(uid) FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,)
            ).fetchone()
            source, source_params = self._source(conn, mailbox_id, viewer)
            query = build_query(
                mailbox_id, criteria, largest or 0, source=source, source_params=source_params
            )
            if largest is None:
                return []
            return [r[0] for r in conn.execute(query.sql, query.params)]

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> None:
        with self._write():
            self.db.execute(
                "UPDATE mailbox_message SET recent = 0 WHERE mailbox_id = ? AND recent = 1"
                " AND uid IN (SELECT value FROM json_each(?))",
                (mailbox_id, _uid_list(uids)),
            )

    # ---- POP3 ledger ---------------------------------------------------------------

    def known_uidls(self, upstream: str) -> set[str]:
        rows = self.db.execute("SELECT uidl FROM ledger WHERE upstream = ?", (upstream,))
        return {r[0] for r in rows}

    def _ledger_has(self, cur: sqlite3.Connection, upstream: str, uidl: str) -> bool:
        row = cur.execute(
            "SELECT 1 FROM ledger WHERE upstream = ? AND uidl = ?", (upstream, uidl)
        ).fetchone()
        return row is not None

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        """Exactly-once delivery: the message, its mailbox row and the ledger row commit
        together (durably, ``synchronous=FULL``), so the fetcher may DELE upstream once
        this returns. Creates the user and the target mailbox (with parents) if missing."""
        if self._ledger_has(self.db, delivery.upstream, delivery.uidl):
            return None
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        raw, analysis, internal = self._ingest(delivery.raw, delivery.internaldate)
        with self._write() as changed:
            cur = self.db
            if self._ledger_has(cur, delivery.upstream, delivery.uidl):
                return None
            self._ensure_user_tx(cur, owner)
            target = self._find(cur, owner, mailbox)
            if target is None:
                self._create_parents_tx(cur, owner, mailbox)
                mailbox_id = self._create_tx(cur, owner, mailbox, None)
            else:
                mailbox_id = target.id
            message_id = self._insert_message(cur, raw, analysis, internal)
            (uid,) = self._add_rows(cur, mailbox_id, [(message_id, "")])
            cur.execute(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, ?, 'delivered', NULL, ?, ?)",
                (
                    delivery.upstream,
                    delivery.uidl,
                    message_id,
                    self._clock(),
                    delivery.size_on_server if delivery.size_on_server is not None else len(raw),
                ),
            )
            changed.add(mailbox_id)
        return uid

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        """Bulk exactly-once delivery: every message, its mailbox row and its ledger row
        in ONE ``BEGIN IMMEDIATE`` transaction (one fsync for the batch). MIME analysis
        runs before the transaction. New messages get consecutive UIDs sharing one
        modseq. With ``dedup``, a message whose bytes (SHA-256) the target mailbox already
        holds as delivered by another upstream is not stored again: only its ledger row
        is written, pointing at the existing message. Raises :class:`MessageTooLarge`
        (nothing written) if any message is over the size limit."""
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        items = list(deliveries)
        prepared: list[tuple[bytes, Analysis, tuple[int, int, int]] | None] = []
        for delivery in items:
            if self._ledger_has(self.db, delivery.upstream, delivery.uidl):
                prepared.append(None)
            else:
                prepared.append(self._ingest(delivery.raw, delivery.internaldate))
        results: list[int | None] = [None] * len(items)
        if all(p is None for p in prepared):
            return results
        now = self._clock()
        with self._write() as changed:
            cur = self.db
            self._ensure_user_tx(cur, owner)
            target = self._find(cur, owner, mailbox)
            if target is None:
                self._create_parents_tx(cur, owner, mailbox)
                mailbox_id = self._create_tx(cur, owner, mailbox, None)
            else:
                mailbox_id = target.id
            new_rows: list[tuple[int, int]] = []  # (index in items, message id)
            ledger_rows: list[tuple[str, str, int, float, int]] = []
            seen: set[tuple[str, str]] = set()
            for index, (delivery, ready) in enumerate(zip(items, prepared, strict=True)):
                key = (delivery.upstream, delivery.uidl)
                if ready is None or key in seen or self._ledger_has(cur, *key):
                    continue
                seen.add(key)
                raw, analysis, internal = ready
                existing = None
                if dedup:
                    existing = cur.execute(
                        "SELECT m.id FROM message m WHERE m.sha256 = ? AND EXISTS"
                        " (SELECT 1 FROM mailbox_message mm WHERE mm.message_id = m.id"
                        " AND mm.mailbox_id = ?) AND EXISTS (SELECT 1 FROM ledger l"
                        " WHERE l.message_id = m.id AND l.upstream != ?) LIMIT 1",
                        (hashlib.sha256(raw).digest(), mailbox_id, delivery.upstream),
                    ).fetchone()
                if existing is not None:
                    message_id = int(existing[0])
                else:
                    message_id = self._insert_message(cur, raw, analysis, internal)
                    new_rows.append((index, message_id))
                size = delivery.size_on_server
                ledger_rows.append((*key, message_id, now, size if size is not None else len(raw)))
            if new_rows:
                uids = self._add_rows(cur, mailbox_id, [(mid, "") for _i, mid in new_rows])
                for (index, _mid), uid in zip(new_rows, uids, strict=True):
                    results[index] = uid
                changed.add(mailbox_id)
            cur.executemany(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, ?, 'delivered', NULL, ?, ?)",
                ledger_rows,
            )
        return results

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        """UIDLs already in the ledger keep their entry (a delivered one stays delivered)."""
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        now = self._clock()
        with self._write():
            cur = self.db.executemany(
                "INSERT OR IGNORE INTO ledger"
                " (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, NULL, 'imported', ?, ?, NULL)",
                [(upstream, str(u), reason, now) for u in uidls],
            )
            return max(0, cur.rowcount)

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        """A delivered entry is never turned into a skipped one; a skipped one gets the
        latest reason."""
        with self._write():
            self.db.execute(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, NULL, 'skipped', ?, ?, NULL)"
                " ON CONFLICT (upstream, uidl) DO UPDATE"
                " SET reason = excluded.reason, fetched_at = excluded.fetched_at"
                " WHERE ledger.state = 'skipped'",
                (upstream, uidl, reason, self._clock()),
            )

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        with self._write():
            self.db.execute(
                "DELETE FROM ledger WHERE upstream = ? AND uidl IN (SELECT value FROM json_each(?))",
                (upstream, json.dumps([str(u) for u in uidls])),
            )

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        rows = self.db.execute(
            "SELECT uidl, state, reason, fetched_at, size, message_id IS NOT NULL FROM ledger"
            " WHERE upstream = ? ORDER BY uidl",
            (upstream,),
        ).fetchall()
        return [
            LedgerEntry(
                upstream=upstream,
                uidl=uidl,
                state=state,
                reason=reason,
                fetched_at=datetime.datetime.fromtimestamp(fetched_at, datetime.UTC),
                size=size,
                stored=bool(stored) if state == "delivered" else None,
            )
            for uidl, state, reason, fetched_at, size, stored in rows
        ]
