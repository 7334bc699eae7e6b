"""What the SQLite store knows about its mailboxes' heads between commands: the catch-up's cache.

Every IMAP command ends with a catch-up (RFC 3501 §7): ``changes_since(mailbox, modseq)``.
Most find nothing, and the store answers those from the HIGHESTMODSEQ it read last time,
as long as nothing at all was written since: the file's change stamp (rows this
connection changed, and ``PRAGMA data_version`` for every other connection) is what it
was then (issue 19, session 4). Two things made that stamp a poor key in the 50-client mix:

- any write anywhere (another account's STORE or APPEND, a POP3 delivery) moved the stamp,
  so every session's next catch-up read its mailbox's head again (BEGIN, SELECT, COMMIT)
  although only one mailbox had changed;
- the session that just changed flags, and its siblings on the same mailbox, then read
  back with three statements the rows the STORE had just written; and after an APPEND
  (or a delivery, or a COPY into the mailbox) the new rows, the same way (session 7).

So a write made on this connection carries the heads over to the stamp after its commit:
every mailbox whose HIGHESTMODSEQ the transaction did not bump (:meth:`QuietHeads.bumped`,
called by the one place that bumps it, and for a deleted mailbox) keeps its head, and
the rows of a STORE or of new messages (:meth:`QuietHeads.wrote_rows`) become the answer
for ``changes_since`` of exactly the modseq before it (:meth:`QuietHeads.delta`), as long
as that transaction bumped the mailbox once (a MOVE within one mailbox, which adds rows
and then expunges, bumps twice and keeps no rows). This holds
only when the heads were valid at the write's start, checked inside its ``BEGIN
IMMEDIATE`` (nobody else can commit until it ends): a commit by another process in
between leaves the stamps apart and everything is read again, as before. A write that
changes no HIGHESTMODSEQ (the \\Recent claim) changes nothing ``changes_since`` answers
from a head; a kept STORE delta is valid only at the stamp right after its own commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.interfaces import MessageRow

Stamp = tuple[int, int]
"""(``total_changes`` of the connection, ``PRAGMA data_version``)."""


class QuietHeads:
    """Mailbox id → HIGHESTMODSEQ, valid while the file's change stamp is :attr:`stamp`;
    and the last write's changed or added rows (one connection, one thread)."""

    __slots__ = ("stamp", "_heads", "_start", "_bumped", "_rows", "_delta")

    def __init__(self) -> None:
        self.stamp: Stamp | None = None
        self._heads: dict[int, int] = {}
        self._start: Stamp | None = None
        self._bumped: set[int] = set()
        self._rows: tuple[int, int, list[MessageRow]] | None = None
        self._delta: tuple[Stamp, int, int, list[MessageRow]] | None = None

    def head(self, stamp: Stamp, mailbox_id: int) -> int | None:
        """The mailbox's HIGHESTMODSEQ if known at ``stamp`` (the current one); a new
        stamp forgets every head."""
        if stamp != self.stamp:
            self._heads.clear()
            self.stamp = stamp
            return None
        return self._heads.get(mailbox_id)

    def record(self, stamp: Stamp, mailbox_id: int, head: int) -> None:
        """A head read at ``stamp`` (by ``changes_since``)."""
        if stamp != self.stamp:
            self._heads.clear()
            self.stamp = stamp
        self._heads[mailbox_id] = head

    def delta(self, stamp: Stamp, mailbox_id: int, modseq: int) -> list[MessageRow] | None:
        """The rows changed since ``modseq`` when the last write was a STORE of this
        mailbox (or added messages to it) from exactly ``modseq`` and nothing was written
        since; else None."""
        delta = self._delta
        if delta is None or delta[0] != stamp or delta[1] != mailbox_id or delta[2] != modseq:
            return None
        return list(delta[3])

    # -- a write transaction on the connection --

    def write_started(self, start: Stamp | None) -> None:
        """Inside ``BEGIN IMMEDIATE``: the stamp now (None: no heads to carry)."""
        self._start = start if start is not None and start == self.stamp else None
        self._bumped.clear()
        self._rows = None

    def bumped(self, mailbox_id: int) -> None:
        """The transaction changes this mailbox's HIGHESTMODSEQ (or deletes it). A bump
        after its rows were recorded (a MOVE within the mailbox: rows added, then others
        expunged) means those rows are not all that changed: they are dropped."""
        self._bumped.add(mailbox_id)
        if self._rows is not None and self._rows[0] == mailbox_id:
            self._rows = None

    def wrote_rows(self, mailbox_id: int, modseq: int, rows: Sequence[MessageRow]) -> None:
        """Right after the one bump of a mailbox that is not shared, stamped ``modseq``
        (from ``modseq - 1``), the transaction wrote ``rows`` (a STORE's changed rows, or
        new messages), as ``changes_since`` would read them after the commit."""
        self._rows = (mailbox_id, modseq, list(rows))

    def committed(self, total_changes: int) -> None:
        """The transaction committed: carry the heads it did not touch over to the new
        stamp (``data_version`` is unchanged by this connection's own commits)."""
        start, self._start = self._start, None
        rows, self._rows = self._rows, None
        if start is None:
            return
        after = (total_changes, start[1])
        heads = self._heads
        for mailbox_id in self._bumped:
            old = heads.pop(mailbox_id, None)
            if rows is not None and rows[0] == mailbox_id and old == rows[1] - 1:
                heads[mailbox_id] = rows[1]
                self._delta = (after, mailbox_id, old, rows[2])
        self.stamp = after

    def rolled_back(self) -> None:
        self._start = None
        self._rows = None
