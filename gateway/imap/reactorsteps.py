"""Which IMAP command steps need no database: with a store that does not run inline
(PostgreSQL), those run on the reactor thread instead of waiting for a store thread.

Under the 50-client mix in PostgreSQL mode every command's steps queued for the four
store threads, ~20 ms at the median, so a NOOP answered from the node's change log took
as long as a FETCH (bench/README.md, "PostgreSQL mix tail, session 4"). A NOOP or CHECK
(RFC 3501 §6.1.2, §6.4.1), an IDLE's start, its pushes, keep-alives and DONE (RFC 2177)
touch the store only for the catch-up (RFC 3501 §7), and the catch-up only through
``changes_since``; when the node's change log can answer that
(:meth:`~gateway.store.postgres.messages.PGMessages.pin_changes`, which holds the answer
for the reactor thread so no later commit can turn it into a query), the batch runs here.

Anything else a catch-up might do goes to a store thread as before: NOTIFY (RFC 5465
may read other mailboxes), live search contexts (RFC 5267 updates run searches), a
\\Recent to claim (a write; a change log never holds a \\Recent row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.imap.handler import WaitIdle
from gateway.serving.steps import Run, ThreadedSteps

if TYPE_CHECKING:
    from gateway.imap.session import IMAPSession

REACTOR_COMMANDS = frozenset({"NOOP", "CHECK", "IDLE"})
"""Commands whose only store call is the catch-up (IDLE's pushes are catch-ups too)."""


def _nothing() -> None:
    """No catch-up answer was held: nothing to release."""


def inline_batch(
    session: IMAPSession, command: str | None, fresh: bool, last_action: Any
) -> Callable[[], None] | None:
    """Whether the command's next batch of steps may run on the reactor thread:
    ``command`` is its name when ``fresh`` (its first batch), ``last_action`` what its
    previous batch ended on. Returns what to call when the batch is over (it releases
    the held catch-up answer), or None: a store thread."""
    if fresh:
        if command not in REACTOR_COMMANDS:
            return None
    elif not isinstance(last_action, WaitIdle):
        return None  # an IDLE resumed by an event or DONE; nothing else
    if session.notifier is not None:
        return None
    view = session.selected
    if view is None:
        return _nothing  # no catch-up at all
    if view.contexts:
        return None
    store = session.base_store
    pin = getattr(store, "pin_changes", None)
    if pin is None:
        return None
    viewer = session.user if session.store is not store else None
    if not pin(view.mailbox.id, view.highestmodseq, viewer=viewer):
        return None
    return store.unpin_changes


class ReactorSteps(ThreadedSteps):
    """:class:`~gateway.serving.steps.ThreadedSteps` for the IMAP protocol
    (:class:`~gateway.imap.server.IMAPServerProtocol`): its batches that need no
    database run on the reactor thread (:func:`inline_batch`)."""

    session: IMAPSession
    _timing: tuple[str | None, float] | None

    def _inline_batch(self, current: Run) -> Callable[[], None] | None:
        command = self._timing[0] if self._timing is not None else None
        return inline_batch(self.session, command, current is not self._stepped, self._last_action)
