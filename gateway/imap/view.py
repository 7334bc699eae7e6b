"""The selected mailbox as one session sees it (RFC 3501 §2.3.1.2, §3.3).

A :class:`View` is this session's own state about its selected mailbox (sequence
numbers, its \\Recent messages, how far the client has been told of flag changes); its
methods are the only code that changes it. The session core and the message handlers
keep it in step with what they tell the client.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator

from gateway.core.criteria import SequenceSet
from gateway.core.flags import RECENT
from gateway.imap import wire
from gateway.imap.contexts import SearchContext
from gateway.imap.handler import BadCommand
from gateway.store.interfaces import Mailbox

FORGET_IN_PLACE = 64
"""Up to this many expunged UIDs are deleted from a view's UID array one by one; more
rebuild the array in one pass (each deletion moves the rest of the array)."""


def _flag_order(flag: str) -> tuple[bool, str]:
    # System flags first, then keywords; deterministic whatever the set's hash order.
    return (not flag.startswith("\\"), flag)


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Label)`` with system flags first, in a stable order (FLAGS items)."""
    return wire.flag_list(sorted(flags, key=_flag_order))


class View:
    """This session's picture of its selected mailbox (:class:`gateway.imap.handler.SelectedView`).

    It holds only what belongs to this session, so that 100 sessions on a 100,000-message
    mailbox stay small: ``uids`` (``array('I')``, ascending) maps sequence numbers to
    UIDs and changes only as the client is told (EXISTS, EXPUNGE, VANISHED);
    ``recent`` holds the UIDs this session shows as \\Recent (RFC 3501 §2.3.2: it
    belongs to one session); ``highestmodseq`` is the point up to which the client has
    been told every flag change. Flags and modseqs themselves stay in the store: a
    catch-up reads ``changes_since(highestmodseq)``. ``reported`` remembers the changes
    this session told its client itself after that point (uid → modseq), so they are
    not told twice; each catch-up prunes it. ``pending_expunge`` holds UIDs gone from
    the store whose EXPUNGE could not be sent yet (RFC 3501 §7.4.1), so they keep
    their sequence numbers meanwhile.
    """

    __slots__ = (
        "mailbox",
        "readonly",
        "uids",
        "recent",
        "highestmodseq",
        "reported",
        "pending_expunge",
        "show_recent",
        "saved",
        "contexts",
        "claimed",
    )

    def __init__(
        self,
        mailbox: Mailbox,
        readonly: bool,
        uids: Iterable[int],
        highestmodseq: int,
        recent: Iterable[int] = (),
    ) -> None:
        self.mailbox = mailbox
        self.readonly = readonly
        self.uids: array[int] = uids if isinstance(uids, array) else array("I", uids)
        self.recent: array[int] = recent if isinstance(recent, array) else array("I", recent)
        self.highestmodseq = highestmodseq
        self.reported: dict[int, int] = {}
        self.pending_expunge: set[int] = set()
        self.show_recent = True
        """False for an IMAP4rev2 client: RFC 9051 has no \\Recent (gateway/imap/rev2.py)."""
        self.saved: array[int] = array("I")
        """RFC 5182 §2.1: the UIDs of the last ``SEARCH RETURN (SAVE)`` (``$``); empty at
        SELECT. It names messages, not numbers, so it is kept as UIDs and read through
        the view: an expunged message drops out of it by itself."""
        self.contexts: dict[str, SearchContext] = {}
        """RFC 5267 §4.3: the live ``RETURN (UPDATE)`` results by tag (gateway/imap/contexts.py);
        they end with the selection."""
        self.claimed: set[int] = set()
        """UIDs of new messages whose \\Recent this session took before it was told of
        them: its own APPENDs to this mailbox (``append_many(claim_recent=True)``, stored
        without \\Recent). The catch-up that tells of them shows them as recent."""

    def resolve(self, seqset: SequenceSet, uid_mode: bool) -> list[int]:
        """UIDs (ascending, in the view) named by ``seqset``; RFC 3501 §6.4.8 and §9.

        UID mode: ``*`` is the largest UID, non-existent UIDs are ignored. Sequence mode:
        a number beyond the view is BAD; in an empty mailbox a set using ``*`` names
        nothing (clients routinely send ``1:*``) while an explicit number is BAD.
        """
        uids = self.uids
        if seqset.saved:
            # RFC 5182 §2.1: "$" names the same messages in FETCH and UID FETCH alike.
            return [u for u in self.saved if self.seq_of(u) is not None]
        if uid_mode:
            largest = uids[-1] if uids else 0
            ranges = seqset.resolve(largest)
            if len(ranges) == 1:
                low, high = ranges[0]
                return uids[
                    bisect.bisect_left(uids, low) : bisect.bisect_right(uids, high)
                ].tolist()
            picked: set[int] = set()
            for low, high in ranges:
                picked.update(uids[bisect.bisect_left(uids, low) : bisect.bisect_right(uids, high)])
            return sorted(picked)
        count = len(uids)
        if count == 0:
            if any(r.start is None or r.end is None for r in seqset.ranges):
                return []
            raise BadCommand("invalid message sequence number (the mailbox is empty)")
        ranges = seqset.resolve(count)
        for low, high in ranges:
            if low < 1 or high > count:
                raise BadCommand("invalid message sequence number")
        if len(ranges) == 1:
            low, high = ranges[0]
            return uids[low - 1 : high].tolist()
        seqs: set[int] = set()
        for low, high in ranges:
            seqs.update(range(low, high + 1))
        return [uids[s - 1] for s in sorted(seqs)]

    def seq_of(self, uid: int) -> int | None:
        uids = self.uids
        i = bisect.bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            return i + 1
        return None

    def is_recent(self, uid: int) -> bool:
        recent = self.recent
        if not recent:
            return False
        i = bisect.bisect_left(recent, uid)
        return i < len(recent) and recent[i] == uid

    def shown_flags(self, uid: int, stored: frozenset[str]) -> frozenset[str]:
        """The store's flags as this session shows them, with its own \\Recent."""
        recent = self.show_recent and self.is_recent(uid)
        if (RECENT in stored) == recent:
            return stored
        return stored | {RECENT} if recent else stored - {RECENT}

    def knows(self, uid: int, modseq: int) -> bool:
        """Whether the client has been told this message's flags as of ``modseq``."""
        return modseq <= self.highestmodseq or self.reported.get(uid, 0) >= modseq

    def note_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        # Only a change the next catch-up would report needs remembering; anything at
        # or below highestmodseq is never read again.
        if modseq > self.highestmodseq and modseq > self.reported.get(uid, 0):
            if self.seq_of(uid) is not None:
                self.reported[uid] = modseq

    def caught_up(self, highestmodseq: int) -> None:
        """Every change up to ``highestmodseq`` has been told: forget what is covered."""
        if highestmodseq > self.highestmodseq:
            self.highestmodseq = highestmodseq
        if self.reported:
            top = self.highestmodseq
            self.reported = {u: m for u, m in self.reported.items() if m > top}

    def add(self, uid: int, recent: bool) -> None:
        """A new message told to the client (EXISTS); UIDs only ever grow. One this
        session claimed beforehand (:attr:`claimed`) is recent whatever ``recent`` says."""
        self.uids.append(uid)
        claimed = self.claimed
        if claimed and uid in claimed:
            claimed.discard(uid)
            recent = True
        if recent:
            self.recent.append(uid)

    def save_result(self, uids: Iterable[int]) -> None:
        """Replace the saved search result (RFC 5182 §2.1; an empty one on failure)."""
        self.saved = array("I", sorted(uids))

    def forget(self, gone: Iterable[int]) -> list[tuple[int, int]]:
        """Remove UIDs; ``(seq, uid)`` pairs highest sequence number first, the order in
        which ``* n EXPUNGE`` lines stay correct as each one is read (RFC 3501 §7.4.1)."""
        hits: list[tuple[int, int]] = []
        for uid in sorted(set(gone)):
            seq = self.seq_of(uid)
            if seq is not None:
                hits.append((seq, uid))
        if not hits:
            return []
        drop = {uid for _seq, uid in hits}
        if len(hits) <= FORGET_IN_PLACE:
            for seq, _uid in reversed(hits):
                del self.uids[seq - 1]
        else:
            self.uids = array("I", [u for u in self.uids if u not in drop])
        if self.recent:
            self.recent = array("I", [u for u in self.recent if u not in drop])
        for uid in drop:
            self.reported.pop(uid, None)
        hits.reverse()
        return hits


CATCH_UP_CHUNK = 500
"""Untagged responses about many messages (catch-up FETCH lines, EXPUNGEs) are yielded in
groups of this many lines, so a flood of changes (10,000 new flags) streams with
backpressure instead of building one string."""


def expunge_responses(hits: list[tuple[int, int]], vanished: bool) -> Iterator[bytes]:
    """``* n EXPUNGE`` per message, in the order given (highest sequence number first,
    RFC 3501 §7.4.1), in chunks of :data:`CATCH_UP_CHUNK` lines; or one
    ``* VANISHED uid-set`` once QRESYNC is enabled (RFC 7162 §3.2.10)."""
    if not hits:
        return
    if vanished:
        yield b"* VANISHED " + wire.sequence_set_text(sorted(u for _s, u in hits)) + b"\r\n"
        return
    for start in range(0, len(hits), CATCH_UP_CHUNK):
        yield b"".join(
            b"* %d EXPUNGE\r\n" % seq for seq, _u in hits[start : start + CATCH_UP_CHUNK]
        )
