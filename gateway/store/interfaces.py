"""The storage contract: everything the IMAP server and the POP3 fetcher may ask of a store.

Protocol code depends on this module only, never on ``sqlite3`` or a database driver
(STYLE.md habit 5). The contract is a few small protocols, one per concern, so that a
caller names what it needs and a wrapper implements exactly what it wraps:

- :class:`Mailboxes`: users, mailbox names and the hierarchy;
- :class:`Subscriptions`: each user's subscribed names;
- :class:`Messages`: messages in a mailbox, their flags, search and catch-up;
- :class:`MailStore`: the three above, what an IMAP session uses;
- :class:`Ledger`: the POP3 ledger and exactly-once delivery, what the fetcher uses;
- :class:`ChangeNotifier`: listeners told of committed changes, what IDLE relies on;
- :class:`Store`: all of it plus :class:`Backend` (``runs_inline``, ``close``): a backend.

The values the mail store protocols take and return (:class:`Mailbox`,
:class:`MessageInfo`, :class:`Changes`...) are in :mod:`gateway.store.records`,
re-exported here; the ledger's are defined below, next to :class:`Ledger`.

Errors: every failure a store raises on purpose is a :class:`StoreError`
(:mod:`gateway.store.errors`, re-exported here); ``ValueError``/``TypeError`` mean a
caller passed something no caller should (a bad flag, one ``str`` for a list).

Guarantees shared by every protocol: every write is one transaction, all or nothing;
when a method returns, its effect is durable and visible to every later call from any
caller on any node sharing the store; a read sees one consistent snapshot.

Names: mailbox names are ``str`` with ``/`` as the hierarchy delimiter, already
decoded from the wire and normalised by the caller (``INBOX`` always upper-case).
Every mailbox change (append, flag change, expunge) increments the mailbox's
``highestmodseq`` and stamps the rows it touched with the new value, which is what
lets sessions catch up cheaply (RFC 7162) and lets listeners be told.

Shared mailboxes (households): a mailbox whose owner starts with
:data:`SHARED_OWNER_PREFIX` (``"shared:family"``) is read by several users. In it, the
flags in :data:`PRIVATE_FLAGS` (only ``\\Seen``) are kept per *viewer*: the methods that
return or change flags take an optional ``viewer`` keyword (the logged-in user). With a
viewer, a shared mailbox shows that viewer's own \\Seen, and a message's modseq is the
larger of its shared modseq and the modseq of the viewer's last private change (both
come from the one mailbox counter, so CHANGEDSINCE stays exact per member). Without a
viewer, or in a mailbox that is not shared, ``viewer`` changes nothing.

Store calls and the reactor (the async boundary; see also ARCHITECTURE.md). The contract
is synchronous on purpose: SQLite in WAL mode answers an indexed query in microseconds
and the longest write (one delivered message) is bounded by the maximum message size,
and a synchronous contract keeps the contract suite and its brute-force reference model
simple. *Where* a call runs is the caller's business, through a
:class:`~gateway.store.runner.StoreRunner`:

- each backend declares ``runs_inline`` (:class:`Backend`). True (SQLite, memory): calls
  are made on the reactor thread, through :class:`~gateway.store.runner.InlineRunner`.
  False (a backend with network round trips: :mod:`gateway.store.postgres`): no call
  may run on the reactor thread; callers go through
  :class:`~gateway.store.runner.ThreadRunner`, a bounded pool whose results come back on
  the reactor thread. Such a backend must be safe to call from several pool threads at
  once (a connection pool, one connection per call) and must hand listener calls to the
  reactor thread itself (``reactor.callFromThread``);
- the POP3 fetcher makes every store call through the runner it is given (the service
  picks it with :func:`~gateway.store.runner.runner_for`);
- the IMAP server, for a backend that does not run inline, steps each command's
  handler generator on a pool thread through the runner: one batch of steps at a time
  per session (the session's state is only ever touched by one thread at once), the
  bytes and actions it yields handed back to the reactor, listener notifications
  reaching the session on the reactor thread, backpressure unchanged (the next batch is
  only scheduled once the transport wants more; :mod:`gateway.imap.server`); with
  ``runs_inline`` backends the server calls the store directly.

Listeners (:class:`ChangeNotifier`) are called after the commit of the change, never from
inside a transaction, on the thread that made the change: the reactor thread for an
inline backend. A listener must not raise (backends log and carry on) and should only
note the mailbox id and act on a later reactor turn, as the IMAP server does: the writer's
call stack may be another session's command.
"""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.errors import (
    InvalidMailboxName,
    LeaseLost,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageTooLarge,
    OverQuota,
    SearchTooComplex,
    StoreError,
)
from gateway.store.records import (
    Changes,
    Mailbox,
    MailboxCounts,
    MessageFlags,
    MessageHead,
    MessageInfo,
    MessageRow,
    MessageSummary,
    NewMessage,
    SelectionSummary,
    StoreResult,
)

if TYPE_CHECKING:
    from gateway.message.analysis import Analysis

__all__ = [
    "DELIMITER",
    "INBOX",
    "PRIVATE_FLAGS",
    "SHARED_OWNER_PREFIX",
    "Backend",
    "ChangeListener",
    "ChangeNotifier",
    "Changes",
    "Delivery",
    "DuplicateRecord",
    "InvalidMailboxName",
    "Ledger",
    "LeaseLost",
    "Routed",
    "LedgerEntry",
    "MailStore",
    "Mailbox",
    "MailboxCounts",
    "MailboxExists",
    "MailboxNotAllowed",
    "MailboxNotFound",
    "Mailboxes",
    "MessageInfo",
    "MessageFlags",
    "MessageHead",
    "MessageRow",
    "MessageSummary",
    "MessageTooLarge",
    "Messages",
    "NewMessage",
    "OverQuota",
    "SearchTooComplex",
    "SelectionSummary",
    "Store",
    "StoreError",
    "StoreResult",
    "Subscriptions",
    "Target",
    "is_shared_owner",
]

INBOX = "INBOX"
DELIMITER = "/"
SHARED_OWNER_PREFIX = "shared:"
"""Owners of shared mailbox trees are ``shared:NAME``; no user name contains a colon."""
PRIVATE_FLAGS = frozenset({"\\Seen"})
"""Flags kept per viewer in shared mailboxes (see the module docstring)."""


def is_shared_owner(owner: str) -> bool:
    """True for the pseudo-owner of a shared mailbox tree."""
    return owner.startswith(SHARED_OWNER_PREFIX)


@dataclass(frozen=True)
class Delivery:
    """One fetched message and its ledger key, committed together (exactly-once)."""

    upstream: str
    uidl: str
    raw: bytes
    internaldate: datetime.datetime | None = None
    size_on_server: int | None = None
    analysis: Analysis | None = field(default=None, compare=False, repr=False)
    """:func:`gateway.message.analysis.analyze` of ``raw`` when the fetcher already made
    it (on the reactor, between two answers it waits for: issue 19); a backend may use
    it instead of analysing the bytes again, or ignore it."""


@dataclass(frozen=True)
class Target:
    """One mailbox a routed delivery files the message into, with its flags (RFC 5232)
    and whether a missing mailbox is created (RFC 5490 §3.2 ``:create``). A target whose
    mailbox is missing and may not be created is filed into the delivery's default
    mailbox instead (the Sieve implicit keep, RFC 5228 §2.10.6): mail is never lost."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class DuplicateRecord:
    """An RFC 7352 duplicate ID to remember for ``period`` seconds once the delivery commits.
    ``refresh`` (``:last``): restart the period even if the ID is already remembered;
    otherwise an ID still remembered keeps its first expiry (RFC 7352 §3.1)."""

    handle: str
    id: str
    period: int
    refresh: bool = False


@dataclass(frozen=True)
class NewOutbound:
    """A message for the outbound queue (:mod:`gateway.store.queue`): what the submission
    server hands over, or what a Sieve ``redirect``/``vacation`` sends."""

    user: str
    route: str
    """The upstream (``SubmissionRoute.name``) whose SMTP server relays it."""
    mail_from: str
    """The envelope sender; "" for the null reverse-path ``<>`` (RFC 5230 §5)."""
    recipients: tuple[str, ...]
    content: bytes
    """The relayed copy (Bcc removed), CRLF line ends."""
    message_id: str | None = None


@dataclass(frozen=True)
class Routed:
    """A fetched message and where it goes (issue 16: the outcome of the owner's Sieve
    script). No targets means discarded: the ledger row is written, no message."""

    delivery: Delivery
    targets: tuple[Target, ...]
    duplicates: tuple[DuplicateRecord, ...] = ()
    outbound: tuple[NewOutbound, ...] = ()
    """Mail the script sends (``redirect``, a ``vacation`` reply), put in the outbound
    queue in the SAME transaction as the ledger row: sent once per fetched message."""
    lifetime: float = 0.0
    """Queue lifetime of ``outbound``, in seconds (the ``[submission]`` setting)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One POP3 ledger row: what the fetcher did with an upstream UIDL and when, so that
    policies such as "delete upstream N days after fetching" can be applied later."""

    upstream: str
    uidl: str
    state: str  # "delivered" | "skipped" | "imported" (known from another fetcher's state)
    reason: str | None  # why it was skipped; None when delivered
    fetched_at: datetime.datetime  # timezone-aware (UTC)
    size: int | None  # size on the server if known, else size received
    stored: bool | None = None
    """For "delivered": whether the message still exists in some mailbox of the store
    (False once the user expunged every copy); None for other states or when unknown."""


ChangeListener = Callable[[int], None]
"""Called with a mailbox id after a committed change to that mailbox."""


# ---- the protocols ------------------------------------------------------------------------
# runtime_checkable so that the contract suite can check a new backend has every method
# (isinstance checks names only; the suite checks behaviour).


@runtime_checkable
class Mailboxes(Protocol):
    """Users and their mailbox trees (RFC 3501 §6.3.3-§6.3.6).

    Guarantees: each call is one transaction; a created, deleted or renamed mailbox is
    visible to every caller when the call returns. A mailbox id is never reused, and a
    mailbox keeps its id and UIDVALIDITY across renames. Raises :class:`StoreError`
    subclasses as documented per method.
    """

    def ensure_user(self, user: str) -> None:
        """Create the user's INBOX (and default special-use folders) if missing."""

    def list_mailboxes(self, user: str) -> list[Mailbox]: ...

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        """Raises MailboxNotFound."""

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        """Creates missing parents too (RFC 3501 §6.3.3). Raises MailboxExists."""

    def delete_mailbox(self, user: str, name: str) -> None:
        """Raises MailboxNotFound, MailboxNotAllowed (INBOX)."""

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        """Renames children too; renaming INBOX moves its messages into a new mailbox
        and leaves INBOX empty (RFC 3501 §6.3.5). Each mailbox keeps its UIDVALIDITY
        except the new one made from INBOX."""


@runtime_checkable
class Subscriptions(Protocol):
    """Each user's list of subscribed names (RFC 3501 §6.3.6-§6.3.7).

    Guarantees: durable when the call returns. Names are kept as given, whether or not a
    mailbox of that name exists; deleting a mailbox leaves its subscription alone.
    """

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None: ...

    def subscriptions(self, user: str) -> list[str]:
        """Subscribed names, including ones whose mailbox no longer exists."""


@runtime_checkable
class Messages(Protocol):
    """Messages in a mailbox: reading, appending, flags, expunge, copy/move and search.

    Guarantees: every write is one transaction and bumps the mailbox's HIGHESTMODSEQ
    once (RFC 7162 §3.1), stamping every row it changed; UIDs are strictly ascending and
    never reused in a mailbox (RFC 3501 §2.3.1.1). A read sees one snapshot. Methods taking
    a ``viewer`` show and change that viewer's own \\Seen in a shared mailbox (module
    docstring). Unknown mailbox ids raise MailboxNotFound.
    """

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        """UNSEEN counts ``viewer``'s own \\Seen in a shared mailbox."""

    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        """Every message in ascending UID order: a session's initial view."""

    def message_uids(self, mailbox_id: int) -> array:
        """Every UID in ascending order as ``array('I')`` (4 bytes a message): a
        session's sequence-number map, without a row object per message. Raises
        MailboxNotFound."""

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        """\\Recent UIDs, the first unseen UID (``viewer``'s own \\Seen in a shared
        mailbox) and the keywords in use, for SELECT. Raises MailboxNotFound."""

    def changes_since(
        self, mailbox_id: int, modseq: int, *, viewer: str | None = None
    ) -> Changes: ...

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        """Rows for those UIDs that still exist, ascending UID."""

    def message_summaries(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageSummary]:
        """What :meth:`message_info` gives for the same UIDs, cut to
        :class:`MessageSummary`'s fields: the narrow read of FETCH's stored items."""

    def message_summary_chunks(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> Iterator[list[MessageSummary]]:
        """:meth:`message_summaries` of the same UIDs as consecutive non-empty lists
        (their concatenation is that list), read in one snapshot as the caller takes
        them: a store that makes round trips streams one statement's rows, so the
        database produces the next list while the caller formats this one (a FETCH
        1:* of a client's first sync). The read holds what it reads with (a pooled
        connection) until the iterator is exhausted or closed: the caller takes it
        to the end, or closes it, before it yields to anyone else. Raises
        MailboxNotFound (from the first ``next``)."""

    def message_flags(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageFlags]:
        """What :meth:`message_info` gives for the same UIDs, cut to UID, flags and
        modseq: the read of ``FETCH (UID FLAGS)``, without the message's own columns.
        Raises MailboxNotFound."""

    def message_header_fields(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        names: tuple[str, ...],
        *,
        viewer: str | None = None,
    ) -> list[MessageHead]:
        """A list view's read: :meth:`message_summaries`' first four fields and the
        whole message's ``BODY[HEADER.FIELDS (names)]`` as :func:`gateway.message.sections.section`
        cuts it, which a store may keep (:mod:`gateway.store.heads`). Raises MailboxNotFound."""

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        """The message exactly as received. Raises KeyError if expunged."""

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        """Several messages exactly as received, read at once (one query, not one per
        message): UID → bytes for those UIDs that still exist. The caller bounds the
        total size (FETCH asks for a few MB at a time). Raises MailboxNotFound."""

    def message_info_with_bytes(
        self, mailbox_id: int, uids: Sequence[int], budget: int, *, viewer: str | None = None
    ) -> tuple[list[MessageInfo], dict[int, bytes]]:
        """:meth:`message_info` of ``uids`` and, read with it, the bytes of its first
        messages: as many as fit in ``budget`` octets, always at least the first
        (:func:`gateway.store.rules.leading_uids`). A FETCH of bodies starts here: a
        store that makes round trips answers both in one (mbsync sends one
        ``UID FETCH n (BODY.PEEK[])`` per message). Raises MailboxNotFound."""

    def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
        *,
        viewer: str | None = None,
    ) -> int:
        """Adds a message; returns its UID. Raises MailboxNotFound, MessageTooLarge, OverQuota."""

    def append_many(
        self,
        mailbox_id: int,
        messages: Sequence[NewMessage],
        *,
        viewer: str | None = None,
        claim_recent: bool = False,
    ) -> list[int]:
        """Adds several messages in one transaction (RFC 3502 MULTIAPPEND is atomic):
        all are stored, with consecutive UIDs in the given order, or none is (the error
        is raised and nothing changed). Raises what :meth:`append` raises.

        ``claim_recent``: the caller's session claims \\Recent of the new messages in the
        same transaction, as :meth:`clear_recent` would right after it (RFC 3501
        §2.3.2): they are stored without \\Recent, so no other session shows them as
        recent, and the caller shows them so itself. An IMAP session APPENDing to the
        mailbox it has selected read-write is the first told of them (its catch-up
        follows the APPEND); one write instead of two (issue 19, session 7)."""

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
        """``mode`` is "" (replace), "+" (add) or "-" (remove). Rows whose flags do not
        change keep their modseq and are not in ``updated``."""

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Removes messages flagged \\Deleted (only among ``uids`` when given);
        returns their UIDs ascending and remembers them for QRESYNC."""

    def copy(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        move: bool = False,
        *,
        viewer: str | None = None,
    ) -> list[tuple[int, int]]:
        """Copies (or atomically moves) messages; returns (source uid, new uid) pairs.
        The flags that go along are those ``viewer`` sees in the source."""

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        """UIDs matching, ascending. ``Seq`` keys must already be rewritten to ``Uid``.
        Raises SearchTooComplex past the store's bounds on the criteria tree."""

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """The session that saw these as \\Recent claims them (RFC 3501 §2.3.2): the
        UIDs this call cleared, ascending. Only those are this session's \\Recent: two
        sessions (threads, nodes) that read the same new rows at once both ask, and a
        message may be recent in one session only, the one whose claim took it."""


@runtime_checkable
class Sorting(Protocol):
    """SORT and THREAD (RFC 5256): the messages matching search criteria, ordered by the
    keys computed at ingest (:mod:`gateway.store.sorting` states the ordering rules)."""

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        """Matching UIDs in the order of ``program`` (ties: ascending UID). Raises what
        :meth:`Messages.search` raises, and ValueError for an unknown sort key."""

    def thread_facts(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[ThreadFacts]:
        """What THREAD needs of each matching message, ascending UID."""


@runtime_checkable
class MailStore(Mailboxes, Subscriptions, Messages, Sorting, Protocol):
    """Everything an IMAP session asks of a store: mailboxes, subscriptions, messages."""


@runtime_checkable
class Ledger(Protocol):
    """The POP3 ledger: which upstream UIDLs were delivered, skipped or imported.

    Guarantees: exactly-once delivery. A message and its ledger row commit together in
    one durable transaction (on disk, not only in a cache), so once :meth:`deliver` or
    :meth:`deliver_many` returns the fetcher may DELE it upstream; a UIDL is in the
    ledger at most once per upstream, so a repeated delivery writes nothing. Nothing is
    written when a call raises.
    """

    def known_uidls(self, upstream: str) -> set[str]:
        """UIDLs already delivered, deliberately skipped or imported for this upstream."""

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        """Stores the message and records its UIDL in one durable transaction.
        Returns the new UID, or None if the UIDL was already known (nothing written)."""

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        """Like :meth:`deliver` for several messages in ONE durable transaction (fast
        bulk import: one fsync per batch): all are committed, or none. Returns, per
        delivery, the new UID or None when nothing was added to the mailbox: the UIDL was
        already known, or (``dedup``) the mailbox already holds the same bytes delivered
        through another upstream, in which case the ledger row is still written and
        points at that message."""

    def deliver_routed(
        self, owner: str, default: str, items: Sequence[Routed], *, dedup: bool = False
    ) -> list[dict[str, int] | None]:
        """Like :meth:`deliver_many`, but each message goes to its own targets (one message
        stored once, one mailbox row per target, with the target's flags) and its
        duplicate IDs are recorded and its ``outbound`` mail queued, all in ONE durable
        transaction with the ledger rows: exactly-once holds per final mailbox and per
        sent message. A target that is missing and not
        ``create`` goes to ``default`` (created if missing). Returns, per item, mailbox
        name → new UID (empty for a discard, or for targets ``dedup`` found already
        holding the bytes from another upstream), or None if the UIDL was already known
        (nothing written). Raises MessageTooLarge (nothing written) like deliver_many.
        Flags that are not valid IMAP flags are dropped (RFC 5232 §3 lets Sieve carry any
        string); \\Seen in a shared mailbox is not stored (it is per member)."""

    def duplicate_seen(self, owner: str, handle: str, id: str) -> bool:
        """True if (handle, id) was recorded for ``owner`` and has not expired (RFC 7352)."""

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        """Remembers a UIDL that will not be fetched (e.g. too large), so status shows it."""

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        """Records UIDLs another fetcher already downloaded (state "imported": known,
        never fetched, never deleted upstream) in one transaction; UIDLs already in the
        ledger are left alone. Returns how many were added."""

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        """Drops ledger entries the upstream no longer lists."""

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        """Every ledger row of this upstream, ordered by UIDL."""


@runtime_checkable
class ChangeNotifier(Protocol):
    """Listeners told after a change to a mailbox has committed (IDLE, other sessions).

    Guarantees: a listener is called with the mailbox id once per committed write that
    changed that mailbox (content, flags, expunge, delete, rename; never for a write that
    failed or changed nothing), after the commit, on the thread that made the change (for
    a backend that does not run inline: on the reactor thread, see the module docstring).
    Notifications are hints to catch up with :meth:`Messages.changes_since`; a session
    never relies on them for correctness.
    """

    def add_listener(self, listener: ChangeListener) -> None: ...

    def remove_listener(self, listener: ChangeListener) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """What every backend declares about itself and its lifetime."""

    runs_inline: bool
    """True: calls may be made on the reactor thread (answers in microseconds, no
    network); False: callers must go through a thread runner (module docstring)."""

    def close(self) -> None:
        """Release the backend's resources; later calls raise StoreError."""


@runtime_checkable
class DeferredSync(Protocol):
    """An inline backend whose writes can commit now and reach the disk later (group commit).

    Inside :meth:`deferred_sync`, a write commits and is visible at once but returns
    without waiting for the disk; each such commit advances :attr:`commit_seq`.
    :meth:`sync_commits`, safe to call from any thread while the reactor goes on, makes
    every commit made before it started durable. The IMAP server uses it so that a
    command's fsync waits on a thread, not on the reactor, and its tagged OK goes out
    only after that (:mod:`gateway.imap.durability`); every write outside the block stays
    durable when it returns. With ``lazy_flags``, a commit that changes only flags
    (STORE, an implicit \\Seen, a \\Recent claim) advances :attr:`lazy_seq` instead of
    :attr:`commit_seq`: the caller may answer it before the fsync (the IMAP server's
    ``flag_fsync = "optimized"``, as Dovecot's ``mail_fsync``); the next
    :meth:`sync_commits` covers it all the same. :meth:`checkpoint` (another thread's
    job, never the reactor's nor :meth:`sync_commits`') keeps the log short while
    ``auto_checkpoint(False)`` keeps commits from doing it themselves.
    """

    commit_seq: int
    """Commits made inside :meth:`deferred_sync` so far (flag-only ones under
    ``lazy_flags`` excepted)."""
    lazy_seq: int
    """Flag-only commits made inside ``deferred_sync(lazy_flags=True)`` so far."""

    def deferred_sync(self, *, lazy_flags: bool = False) -> AbstractContextManager[None]: ...

    def sync_commits(self) -> None: ...

    def checkpoint(self) -> None: ...

    def auto_checkpoint(self, on: bool) -> None: ...


@runtime_checkable
class Store(MailStore, Ledger, ChangeNotifier, Backend, Protocol):
    """The whole contract, as one backend implements it; callers that need only a part
    ask for that part (:class:`MailStore`, :class:`Ledger`, :class:`ChangeNotifier`)."""
