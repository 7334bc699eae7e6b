"""The outbound mail queue contract: messages accepted by the submission server, waiting
for (or done with) their relay to an upstream SMTP server.

The submission session and the relay service depend on this module only, never on a
backend. Rules every backend keeps (the contract suite checks them):

- :meth:`OutboundQueue.enqueue` returns only once the message is durable; the client's
  250 comes after it (RFC 5321 §6.1: accepting a message takes responsibility for it).
- A queued item moves only through these calls: ``queued`` → ``sent`` (the upstream
  answered 250 to DATA: :meth:`mark_sent` records the reply and the new state in ONE
  transaction, so a crash can never leave a message both delivered and still due),
  ``queued`` → ``failed`` (permanent refusal, :meth:`mark_failed`), ``queued`` →
  ``expired`` (:meth:`expire`, its lifetime is over). :meth:`mark_deferred` keeps it
  queued with a later ``next_attempt``. Failed and expired items wait for their bounce
  (:meth:`unbounced`) until :meth:`mark_bounced`, so a crash between the two files the
  bounce again rather than never.
- A relay whose upstream accepted only some recipients calls :meth:`mark_sent` with the
  ``remaining`` ones: the row stays queued for them alone, in the same transaction.
- Time is passed in (``now``); backends never read a clock.

Errors are :class:`~gateway.store.interfaces.StoreError` subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# NewOutbound lives next to Routed, which carries Sieve's outbound mail; re-exported here.
from gateway.store.interfaces import NewOutbound as NewOutbound
from gateway.store.interfaces import StoreError

QUEUED = "queued"
SENT = "sent"
FAILED = "failed"
EXPIRED = "expired"
STATES = (QUEUED, SENT, FAILED, EXPIRED)


class QueueError(StoreError):
    """Base of the queue's errors."""


class QueueItemNotFound(QueueError):
    """No queue item with that id."""


class QueueStateError(QueueError):
    """The call does not apply to the item's state (e.g. mark_sent on a failed item)."""


@dataclass(frozen=True)
class QueueItem:
    """One queue row (the content is read separately: :meth:`OutboundQueue.content`)."""

    id: int
    user: str
    route: str
    mail_from: str
    recipients: tuple[str, ...]
    size: int
    message_id: str | None
    state: str
    queued_at: float
    expires_at: float
    next_attempt: float
    attempts: int
    last_error: str | None
    last_reply: str | None
    """The upstream's reply to the last DATA it accepted (e.g. "250 2.0.0 Ok: queued")."""
    finished_at: float | None
    bounced: bool


@dataclass(frozen=True)
class RouteStatus:
    """What ``popgate status`` and metrics show per upstream SMTP."""

    route: str
    queued: int
    oldest: float | None
    """``queued_at`` of the oldest queued item."""
    last_error: str | None


def validate_new(item: NewOutbound) -> None:
    """The checks every backend makes before storing: at least one recipient, and no
    line break in an address (backends may store recipients one per line)."""
    if not item.recipients:
        raise QueueError("a queued message needs at least one recipient")
    for address in (item.mail_from, *item.recipients):
        if "\n" in address or "\r" in address:
            raise QueueError("an envelope address holds a line break")


class OutboundQueue(Protocol):
    def enqueue(self, item: NewOutbound, *, now: float, lifetime: float) -> QueueItem:
        """Store the message durably, due at once, expiring ``lifetime`` seconds on."""

    def get(self, item_id: int) -> QueueItem:
        """The row, or :class:`QueueItemNotFound`."""

    def content(self, item_id: int) -> bytes:
        """The message octets, or :class:`QueueItemNotFound`."""

    def due(self, now: float, limit: int = 100) -> list[QueueItem]:
        """Queued items with ``next_attempt <= now`` and ``expires_at > now``, oldest
        next_attempt first (then id)."""

    def mark_deferred(
        self,
        item_id: int,
        *,
        error: str,
        next_attempt: float,
        now: float,
        remaining: Sequence[str] | None = None,
    ) -> QueueItem:
        """A temporary failure: attempts + 1, ``last_error``, retry at ``next_attempt``;
        with ``remaining``, only those recipients stay (the others failed for good)."""

    def mark_sent(
        self,
        item_id: int,
        *,
        reply: str,
        now: float,
        remaining: Sequence[str] = (),
        next_attempt: float | None = None,
        error: str | None = None,
    ) -> QueueItem:
        """The upstream answered ``reply`` (2xx) to DATA. One transaction: with no
        ``remaining`` recipients the item becomes ``sent``; otherwise it stays queued for
        those recipients only, retried at ``next_attempt`` with ``error`` recorded."""

    def mark_failed(self, item_id: int, *, error: str, now: float) -> QueueItem:
        """A permanent failure: ``failed``, waiting for its bounce."""

    def expire(self, now: float) -> list[QueueItem]:
        """Every queued item with ``expires_at <= now`` becomes ``expired``; returns them."""

    def unbounced(self) -> list[QueueItem]:
        """Failed or expired items whose bounce is not filed yet, by id."""

    def mark_bounced(self, item_id: int) -> None:
        """The bounce for this item is filed in the sender's INBOX."""

    def pending(self, route: str | None = None) -> list[QueueItem]:
        """Queued items (of one route, or all), by id: ``popgate status``."""

    def status(self) -> list[RouteStatus]:
        """Per route with any item: queued count, oldest queued, last error, by route."""

    def purge(self, before: float) -> int:
        """Delete finished (sent, or bounced) items finished before ``before``; returns
        how many."""
