"""Upstream leases and fencing: which node may poll an upstream, and proof of it at commit.

Several popgate nodes on one PostgreSQL store must not poll one POP3 upstream at once
(issue 13): two sessions would RETR the same mail and DELE each other's. Each upstream
has a lease in the store: a holder node, an expiry kept on the *database's* clock (node
clocks never decide who holds what) and a fencing token, a number that grows every time
a node acquires the lease. A node polls an upstream only while it holds that lease and
renews it while it does (``[cluster] lease`` seconds each time).

Expiry alone is not enough: a node paused past its expiry (a stopped VM, a long GC, a
frozen disk) wakes up believing it still holds the lease while another node has taken
over. So every write of a pass is *fenced*: it runs with a :class:`Fence` (upstream,
node, token) set for the duration of the call (:func:`fencing`, or a
:class:`FencedLedger` around the fetcher's ledger), and a backend with leases checks, in
the same transaction as the write, that the lease row still names this node and token and
has not expired, raising :class:`~gateway.store.errors.LeaseLost` (and committing
nothing) otherwise. The stale node's pass then stops before QUIT, so none of its DELEs
take effect (RFC 1939 §6: deletions happen only in the UPDATE state).

Backends: PostgreSQL implements :class:`Leases` on its tables
(:mod:`gateway.store.postgres.leases`). SQLite and memory stores are single-node by
construction: :class:`SingleNodeLeases` grants every lease to the one node, forever, so
the poller has one code path whatever the backend; fences set around their calls are
never checked (nothing else can write).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gateway.store.errors import LeaseLost
from gateway.store.interfaces import Delivery, LedgerEntry, Routed

__all__ = [
    "Fence",
    "FencedLedger",
    "Lease",
    "LeaseLost",
    "Leases",
    "SingleNodeLeases",
    "current_fence",
    "fencing",
]


@dataclass(frozen=True)
class Lease:
    """One upstream's lease as the store has it. ``expires_in`` is seconds from the
    database's now (negative once expired); ``held`` is false once it has expired or
    been released (the row stays: its token must keep growing)."""

    upstream: str
    node: str
    token: int
    expires_in: float
    held: bool


@dataclass(frozen=True)
class Fence:
    """What a fenced write proves it still holds: this node's lease on ``upstream``
    with this ``token``."""

    upstream: str
    node: str
    token: int


@runtime_checkable
class Leases(Protocol):
    """Upstream leases (module docstring). Every call is one transaction on the
    store's clock; for a backend that does not run inline, call it through the
    store's thread runner like any other store call."""

    expiring: bool
    """False for :class:`SingleNodeLeases` (nothing to renew, no one to take over)."""

    def try_acquire(self, upstream: str, node: str, lease_seconds: float) -> int | None:
        """Take the lease if it is free, expired, released or already this node's, for
        ``lease_seconds`` from now; returns the new fencing token (greater than every
        token issued for the upstream before), or None while another node holds it."""

    def renew(self, upstream: str, node: str, token: int, lease_seconds: float) -> bool:
        """Extend this node's lease to ``lease_seconds`` from now, keeping its token;
        False if the lease no longer carries ``token`` (another node acquired it since:
        this node has lost it and must stop polling)."""

    def release(self, upstream: str, node: str, token: int) -> bool:
        """Give the lease up now (clean shutdown), so another node need not wait for the
        expiry; False if it was not this node's with ``token`` any more."""

    def holders(self) -> list[Lease]:
        """Every upstream's lease, held or not, by upstream name (for status)."""

    def check_fence(self, fence: Fence) -> None:
        """Raise :class:`~gateway.store.errors.LeaseLost` unless ``fence`` still holds
        (same node, same token, not expired)."""


class SingleNodeLeases:
    """:class:`Leases` of a single-node store (SQLite, memory): the one node owns every
    upstream, always; there is nothing to renew and no one to fence out."""

    expiring = False
    runs_inline = True

    def try_acquire(self, upstream: str, node: str, lease_seconds: float) -> int | None:
        return 1

    def renew(self, upstream: str, node: str, token: int, lease_seconds: float) -> bool:
        return True

    def release(self, upstream: str, node: str, token: int) -> bool:
        return True

    def holders(self) -> list[Lease]:
        return []

    def check_fence(self, fence: Fence) -> None:
        return None


_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("popgate_fence", default=None)


def current_fence() -> Fence | None:
    """The fence set around the store call running on this thread, if any: what a
    backend with leases checks inside each ledger write."""
    return _FENCE.get()


@contextmanager
def fencing(fence: Fence | None) -> Iterator[None]:
    """Run the store calls in the block (on this thread) under ``fence``."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


@runtime_checkable
class Fenced(Protocol):
    """A ledger whose writes carry a fence, and which can confirm it before the fetcher
    lets its DELEs take effect (QUIT)."""

    def confirm_lease(self) -> None:
        """Raise :class:`~gateway.store.errors.LeaseLost` if the fence no longer holds."""


class FencedLedger:
    """The fetcher's :class:`~gateway.store.interfaces.Ledger` for one pass, every write
    made under ``fence`` (so the backend checks the lease in the write's transaction).

    Each method sets the fence on the thread that runs it, around the inner call, so it
    works the same through an inline runner and on a store thread; reads pass through.
    """

    def __init__(self, ledger: Any, fence: Fence, leases: Leases) -> None:
        self.ledger = ledger
        self.fence = fence
        self.leases = leases

    @property
    def runs_inline(self) -> bool:
        return bool(getattr(self.ledger, "runs_inline", True))

    def confirm_lease(self) -> None:
        self.leases.check_fence(self.fence)

    # ---- writes: fenced -------------------------------------------------------------

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        with fencing(self.fence):
            return self.ledger.deliver(owner, mailbox, delivery)

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        with fencing(self.fence):
            return self.ledger.deliver_many(owner, mailbox, deliveries, dedup=dedup)

    def deliver_routed(
        self, owner: str, default: str, items: Sequence[Routed], *, dedup: bool = False
    ) -> list[dict[str, int] | None]:
        with fencing(self.fence):
            return self.ledger.deliver_routed(owner, default, items, dedup=dedup)

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        with fencing(self.fence):
            self.ledger.record_skipped(upstream, uidl, reason)

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        with fencing(self.fence):
            return self.ledger.record_imported(upstream, uidls, reason)

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        with fencing(self.fence):
            self.ledger.forget_uidls(upstream, uidls)

    # ---- reads ------------------------------------------------------------------------

    def known_uidls(self, upstream: str) -> set[str]:
        return self.ledger.known_uidls(upstream)

    def duplicate_seen(self, owner: str, handle: str, id: str) -> bool:
        return self.ledger.duplicate_seen(owner, handle, id)

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        return self.ledger.ledger_entries(upstream)


def leases_of(store: Any) -> Leases:
    """The store's own leases when it has them (PostgreSQL), else single-node ones."""
    if isinstance(store, Leases) and getattr(store, "expiring", False):
        return store
    return SingleNodeLeases()


def lost(fence: Fence, why: str = "") -> LeaseLost:
    """The :class:`LeaseLost` for ``fence``, saying which lease and why."""
    detail = f": {why}" if why else ""
    return LeaseLost(
        f"node {fence.node} no longer holds the lease on upstream {fence.upstream}"
        f" (token {fence.token}){detail}"
    )
