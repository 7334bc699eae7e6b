"""What SELECT read for an unchanged mailbox, kept so that the next SELECT of it skips
the store (issue 19: after a restart thousands of phones SELECT the same few INBOXes).

SELECT (RFC 3501 §6.3.1) needs the mailbox's UIDs, its \\Recent set, the first unseen
message and the keywords in use. Every change that alters any of them stamps the mailbox
with a new HIGHESTMODSEQ (RFC 7162 §3.1.1: new and expunged messages, flag changes,
private \\Seen), which SELECT reads anyway with the mailbox's row. So an entry is keyed
by (mailbox id, viewer) and valid only for the HIGHESTMODSEQ and UIDVALIDITY it was read
at; a different one replaces it. Mailboxes with \\Recent messages are never kept: the
first read-write SELECT claims \\Recent (RFC 3501 §2.3.2) without a new modseq, so a
kept set would hand it out twice. Bounded by the UIDs held in all (least recently used
out), and each hit gets its own copy of the UID array, which the session's view grows.
Thread-safe: in PostgreSQL mode sessions run their steps on store threads.

The same object holds the fan-out memo (:meth:`SelectCache.fanout`): while one change is
pushed to every IDLE session in one reactor turn, sessions that selected the same mailbox
at the same HIGHESTMODSEQ share one ``changes_since`` read instead of each making it
(500 phones of one household on one INBOX: one read, not 500).
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gateway.core.flags import RECENT
from gateway.store.interfaces import Changes, Mailbox, MessageRow, SelectionSummary

MAX_CACHED_UIDS = 1 << 20
"""UIDs kept in all entries together (4 MiB)."""

_Entry = tuple[int, int, array, int | None, tuple[str, ...]]
"""(highestmodseq, uidvalidity, uids, first unseen UID, keywords)."""


class SelectCache:
    """Per-process SELECT results of unchanged mailboxes, shared by every session of an
    IMAP server factory."""

    def __init__(self, max_uids: int = MAX_CACHED_UIDS) -> None:
        self.max_uids = max_uids
        self._entries: OrderedDict[tuple[int, str], _Entry] = OrderedDict()
        self._uids = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.shared_changes: dict[tuple[int, int, str], Changes] | None = None
        """(mailbox id, since modseq, viewer) → what ``changes_since`` returned, during a
        fan-out only (None otherwise)."""

    def get(self, mailbox: Mailbox, viewer: str) -> tuple[array, SelectionSummary] | None:
        """A copy of what SELECT read for ``mailbox`` as ``viewer`` at its current
        HIGHESTMODSEQ, or None."""
        key = (mailbox.id, viewer)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != mailbox.highestmodseq:
                self.misses += 1
                return None
            if entry[1] != mailbox.uidvalidity:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        _m, _v, uids, first_unseen, keywords = entry
        return array("I", uids), SelectionSummary(array("I"), first_unseen, keywords)

    def put(self, mailbox: Mailbox, viewer: str, uids: array, summary: SelectionSummary) -> None:
        """Keep what SELECT just read, unless it cannot be reused safely: \\Recent
        messages, or a message newer than the mailbox row read before (a change landed
        between the reads, so the row's HIGHESTMODSEQ does not describe them)."""
        key = (mailbox.id, viewer)
        newer = bool(uids) and uids[-1] >= mailbox.uidnext
        keep = not (summary.recent or newer or len(uids) > self.max_uids)
        entry = (
            mailbox.highestmodseq,
            mailbox.uidvalidity,
            array("I", uids) if keep else array("I"),
            summary.first_unseen_uid,
            summary.keywords,
        )
        with self._lock:
            self._drop(key)
            if not keep:
                return
            self._entries[key] = entry
            self._uids += len(entry[2])
            while self._uids > self.max_uids:
                _key, old = self._entries.popitem(last=False)
                self._uids -= len(old[2])

    @contextmanager
    def fanout(self) -> Iterator[None]:
        """Share ``changes_since`` reads among the sessions woken in this block. Only for
        a fan-out on the reactor thread with an inline store: nothing else can write to
        the store until it ends, except \\Recent claims, which :meth:`recent_claimed`
        applies to what was read."""
        self.shared_changes = {}
        try:
            yield
        finally:
            self.shared_changes = None

    def recent_claimed(self, mailbox_id: int, uids: Iterable[int]) -> None:
        """A session claimed \\Recent on ``uids`` (RFC 3501 §2.3.2): rows read before
        show them as recent. A claim changes nothing else (it stamps no modseq), so the
        shared reads are kept with \\Recent taken off those rows: what a new read would
        return, without making it (one ``changes_since`` per push instead of two)."""
        shared = self.shared_changes
        if not shared:
            return
        claimed = set(uids)
        for key, changes in list(shared.items()):
            if key[0] == mailbox_id:
                shared[key] = Changes(
                    highestmodseq=changes.highestmodseq,
                    changed=[
                        MessageRow(row.uid, row.flags - {RECENT}, row.modseq)
                        if row.uid in claimed and RECENT in row.flags
                        else row
                        for row in changes.changed
                    ],
                    expunged=changes.expunged,
                )

    def _drop(self, key: tuple[int, str]) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._uids -= len(old[2])

    def __len__(self) -> int:
        return len(self._entries)
