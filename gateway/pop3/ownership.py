"""This node's claim on one upstream: acquiring, renewing, losing and releasing its lease.

With several nodes on one PostgreSQL store, at most one polls a given upstream: the one
holding its lease (:mod:`gateway.store.leases`). An :class:`UpstreamOwnership` is the
node-side half, one per upstream, owned by its :class:`~gateway.pop3.poller.UpstreamPoller`:

- :meth:`~UpstreamOwnership.claim` is asked before every pass: it renews the lease when
  this node holds it and tries to acquire it otherwise; the pass runs only if it is held;
- a check loop, independent of the poll interval, claims every ``lease / 3`` seconds:
  the holder renews well before expiry (also during a long pass), and the other nodes
  notice an expired lease (its holder died) and take it over, so an upstream is orphaned
  for at most ``lease + lease / 3``, within the promised ``2 × lease``. A node that takes
  a lease over this way tells its poller (``on_acquired``), which polls at once: the
  dead holder may have left mail half fetched;
- the lease counts as lost when a renewal is refused (another node acquired it) or when
  renewals keep failing (database unreachable) until :data:`SAFETY_FRACTION` of a lease
  before the earliest moment it can have expired on the database's clock (measured from
  when the last successful renewal was *sent*, so local slowness only makes the node give
  up sooner). The poller then stops the pass in flight (``on_lost``); its commits would
  be refused anyway (fencing), and stopping it drops the POP3 connection without QUIT;
- :meth:`~UpstreamOwnership.release` at a clean stop lets another node take over at its
  next check instead of after the expiry.

Every store call goes through a runner (the store's threads for PostgreSQL: no database
round trip on the reactor thread). With :class:`~gateway.store.leases.SingleNodeLeases`
(SQLite, memory) every claim is granted at once, nothing expires and there is no loop,
so the poller has one code path whatever the backend.

Log events: ``lease.acquired``, ``lease.renewed`` (debug), ``lease.lost``,
``lease.released``, ``lease.held_elsewhere`` (debug, a refused acquisition) and
``lease.check_failed`` (the store could not be asked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from twisted.internet import defer

from gateway.store.leases import Fence, FencedLedger, Leases, SingleNodeLeases
from gateway.store.runner import InlineRunner, StoreRunner

log = structlog.get_logger(__name__)

CHECK_FRACTION = 1 / 3
"""The check loop runs every this fraction of a lease: renewals well before expiry, and
a takeover check at least twice per lease (issue 13's 2 × lease bound)."""

SAFETY_FRACTION = 0.1
"""Without a successful renewal, the lease counts as lost this fraction of a lease before
it can have expired, so the pass stops before another node may start."""

SINGLE_NODE = "local"
"""The node name of a single-node store's ownerships (only shown in logs)."""


class UpstreamOwnership:
    """This node's lease on one upstream (module docstring)."""

    def __init__(
        self,
        upstream: str,
        leases: Leases,
        *,
        node: str,
        lease: float,
        reactor: Any,
        runner: StoreRunner | None = None,
        release_runner: StoreRunner | None = None,
    ) -> None:
        """``runner``: where store calls run (the store's thread runner for PostgreSQL);
        ``release_runner``: where the release at stop runs, when the store's own threads
        may be stopping at the same time (default: ``runner``)."""
        self.upstream = upstream
        self.leases = leases
        self.node = node
        self.lease = float(lease)
        self.reactor = reactor
        self.runner: StoreRunner = runner if runner is not None else InlineRunner()
        self.release_runner = release_runner if release_runner is not None else self.runner
        self.token: int | None = None
        self.valid_until: float | None = None
        """Reactor seconds until which the lease counts as held (None: no expiry)."""
        self.holder: str | None = None
        """The node seen holding the lease at this node's last refused acquisition."""
        self.on_acquired: Callable[[], None] | None = None
        """Called when the check loop acquires the lease (a takeover, or a first claim)."""
        self.on_lost: Callable[[], None] | None = None
        """Called when a held lease is lost (refused renewal or renewals failing)."""
        self.running = False
        self._waiters: list[defer.Deferred[bool]] = []
        self._announce = False
        self._loop: Any = None
        self._deadline: Any = None

    @classmethod
    def single_node(cls, upstream: str, reactor: Any) -> UpstreamOwnership:
        """The ownership of a single-node store: always granted, never expires."""
        return cls(upstream, SingleNodeLeases(), node=SINGLE_NODE, lease=0.0, reactor=reactor)

    # ---- state -----------------------------------------------------------------------

    @property
    def expiring(self) -> bool:
        """True for real leases (PostgreSQL), False for a single-node store."""
        return bool(self.leases.expiring)

    @property
    def held(self) -> bool:
        if self.token is None:
            return False
        return self.valid_until is None or self.reactor.seconds() < self.valid_until

    @property
    def fence(self) -> Fence | None:
        if self.token is None:
            return None
        return Fence(self.upstream, self.node, self.token)

    def fenced(self, ledger: Any) -> Any:
        """The ledger a pass writes through: fenced with this node's token for real
        leases, ``ledger`` itself for a single-node store (nothing to fence out)."""
        fence = self.fence
        if not self.expiring or fence is None:
            return ledger
        return FencedLedger(ledger, fence, self.leases)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for ``popgate status``: this node, whether it holds the lease,
        its token, and the node seen holding it otherwise."""
        return {
            "node": self.node,
            "held": self.held,
            "token": self.token,
            "holder": self.node if self.held else self.holder,
            "lease_seconds": self.lease if self.expiring else None,
        }

    # ---- claiming ----------------------------------------------------------------------

    def claim(self, *, announce: bool = False) -> defer.Deferred[bool]:
        """Renew the lease if held, else try to acquire it; fires with whether this node
        holds it now. Claims asked while one is in flight share its answer. With
        ``announce`` (the check loop), a newly acquired lease is told to ``on_acquired``
        (a pass that claims it runs anyway)."""
        d: defer.Deferred[bool] = defer.Deferred()
        self._waiters.append(d)
        self._announce = self._announce or announce
        if len(self._waiters) == 1:
            defer.Deferred.fromCoroutine(self._claim())
        return d

    async def _claim(self) -> None:
        acquired = False
        try:
            acquired = await self._ask()
        except Exception as e:  # the store could not answer: keep what we had, for now
            log.warning(
                "lease.check_failed",
                upstream=self.upstream,
                node=self.node,
                error=type(e).__name__,
                message=str(e),
            )
        waiters, self._waiters = self._waiters, []
        announce, self._announce = self._announce, False
        held = self.held
        for d in waiters:
            d.callback(held)
        if acquired and announce and self.on_acquired is not None:
            self.on_acquired()

    async def _ask(self) -> bool:
        """One round trip; True when this claim newly acquired the lease."""
        sent = self.reactor.seconds()
        token = self.token
        if token is not None:
            renewed = await self.runner.run(
                self.leases.renew, self.upstream, self.node, token, self.lease
            )
            if token != self.token:  # lost or re-acquired meanwhile
                return False
            if renewed:
                self._extend(sent)
                log.debug("lease.renewed", upstream=self.upstream, node=self.node, token=token)
            else:
                self._lose("another node acquired it")
            return False
        new = await self.runner.run(self.leases.try_acquire, self.upstream, self.node, self.lease)
        if new is None:
            self.holder = await self._current_holder()
            log.debug(
                "lease.held_elsewhere", upstream=self.upstream, node=self.node, holder=self.holder
            )
            return False
        if self.token is not None:  # another claim won meanwhile (cannot happen: serialised)
            return False
        self.token = int(new)
        self.holder = None
        self._extend(sent)
        if self.expiring:
            log.info(
                "lease.acquired",
                upstream=self.upstream,
                node=self.node,
                token=self.token,
                lease=self.lease,
            )
        return True

    async def _current_holder(self) -> str | None:
        leases = await self.runner.run(self.leases.holders)
        for lease in leases:
            if lease.upstream == self.upstream and lease.held:
                return lease.node
        return None

    def _extend(self, sent: float) -> None:
        if not self.expiring:
            self.valid_until = None
            return
        self.valid_until = sent + self.lease * (1 - SAFETY_FRACTION)
        self._cancel(self._deadline)
        delay = max(0.0, self.valid_until - self.reactor.seconds())
        self._deadline = self.reactor.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.token is not None and not self.held:
            self._lose("not renewed in time (store unreachable?)")

    def _lose(self, reason: str) -> None:
        token, self.token, self.valid_until = self.token, None, None
        self._cancel(self._deadline)
        self._deadline = None
        log.warning(
            "lease.lost", upstream=self.upstream, node=self.node, token=token, reason=reason
        )
        if self.on_lost is not None:
            self.on_lost()

    # ---- the check loop and the end ------------------------------------------------

    def start(self) -> None:
        """Start the check loop (real leases only): a first claim now, then every
        ``lease * CHECK_FRACTION`` seconds."""
        self.running = True
        if self.expiring:
            self._loop = self.reactor.callLater(0, self._tick)

    @property
    def check_interval(self) -> float:
        return self.lease * CHECK_FRACTION

    def _tick(self) -> None:
        self._loop = None
        if not self.running:
            return
        self.claim(announce=True)
        self._loop = self.reactor.callLater(self.check_interval, self._tick)

    def stop(self) -> None:
        """Stop the loop and the expiry timer (the lease is kept until :meth:`release`)."""
        self.running = False
        self._cancel(self._loop)
        self._loop = None
        self._cancel(self._deadline)
        self._deadline = None

    def release(self) -> defer.Deferred[None] | None:
        """Give the lease up (after the last pass ended); None when there is nothing to
        release. Failures are logged: the lease then simply expires."""
        fence = self.fence
        self.token, self.valid_until = None, None
        if fence is None or not self.expiring:
            return None
        d = self.release_runner.run(self.leases.release, fence.upstream, fence.node, fence.token)

        def done(released: bool) -> None:
            log.info(
                "lease.released",
                upstream=fence.upstream,
                node=fence.node,
                token=fence.token,
                released=bool(released),
            )

        def failed(failure: Any) -> None:
            log.warning(
                "lease.release_failed",
                upstream=fence.upstream,
                node=fence.node,
                message=str(failure.value),
            )

        d.addCallbacks(done, failed)
        return d

    @staticmethod
    def _cancel(call: Any) -> None:
        if call is not None and call.active():
            call.cancel()
