"""The typed storage errors: every error a store raises on purpose is a :class:`StoreError`.

Callers catch these, never backend exceptions (``sqlite3.Error``, a driver's errors): a
backend translates what it can name into one of these and lets anything else propagate
as the bug it is. The IMAP layer maps each subclass to one tagged response in one place
(``gateway/imap``'s reply mapping, STYLE.md habit 4); the text of the exception goes to
the log, never to a client. :mod:`gateway.store.interfaces` re-exports all of them, so
protocol code imports the contract from one module.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the typed storage errors; the IMAP layer maps each to one response code."""


class MailboxNotFound(StoreError):
    """→ NO [NONEXISTENT] (or [TRYCREATE] for APPEND/COPY/MOVE targets)."""


class MailboxExists(StoreError):
    """→ NO [ALREADYEXISTS]."""


class MailboxNotAllowed(StoreError):
    """The operation is not allowed on this mailbox (delete INBOX, bad name) → NO [CANNOT]."""


class InvalidMailboxName(MailboxNotAllowed):
    """A name no mailbox may have (:func:`gateway.store.rules.check_mailbox_name`) → NO
    [CANNOT] with :attr:`reason`, a fixed phrase of that rule (never the client's text),
    so the user learns what to change."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OverQuota(StoreError):
    """→ NO [OVERQUOTA]."""


class MessageTooLarge(StoreError):
    """→ NO [TOOBIG]."""


class SearchTooComplex(StoreError):
    """The criteria tree exceeds the store's bound on nodes or nesting
    (:data:`gateway.store.search.MAX_SEARCH_NODES`, ``MAX_SEARCH_DEPTH``) → NO [LIMIT]
    (RFC 5530): a limit of this server, not a server bug."""


class LeaseLost(StoreError):
    """This node no longer holds the lease on the upstream it was fetching from
    (:mod:`gateway.store.leases`): another node took it over, or it expired. Raised by a
    fenced write, which then commits nothing; the fetcher drops its POP3 connection
    without QUIT, so none of its DELEs take effect."""
