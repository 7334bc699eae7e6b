"""When to fetch from one upstream: the periodic poll, on-demand triggers and backoff.

One :class:`UpstreamPoller` per configured upstream, as a Twisted service. It owns
scheduling only; each pass is :func:`gateway.pop3.fetcher.fetch_once` (injected, so tests
can count calls). Rules:

- the first pass runs :data:`FIRST_POLL_DELAY` seconds after start, then every
  ``poll_interval`` seconds, each delay spread by ±``jitter`` (a fraction) so that many
  gateways do not hit a provider in step;
- after a failure the next pass waits ``BACKOFF_BASE * 2**(failures-1)`` seconds, capped
  at ``backoff_cap``, jittered the same way; a success resets it;
- :meth:`UpstreamPoller.trigger` asks for a pass now: at most one pass is ever in flight,
  passes start at least :data:`MIN_TRIGGER_SPACING` seconds apart, and a trigger during
  a pass schedules exactly one more right after it;
- :meth:`UpstreamPoller.fetch_now` (``popgate fetch``) starts a pass at once when none is
  in flight (an operator asked: no spacing), else right after the one in flight, and
  fires with that pass's result; its ``progress`` callable hears that pass's progress;
- an upstream announcing CAPA ``LOGIN-DELAY n`` (RFC 2449 §6.8) never sees two passes
  start less than n seconds apart, whatever asked for them (timer, trigger, fetch_now);
- after each pass an optional ``notifier`` (:class:`gateway.pop3.notifier.FailureNotifier`)
  hears the outcome and files failure notices;
- stopping cancels the timers and waits up to :data:`STOP_GRACE` seconds for a pass in
  flight, then cancels it, which is safe: a cancelled pass drops the connection without
  QUIT, so no DELE takes effect, and what it delivered stays delivered; then the lease is
  released;
- ownership (issue 13): every pass first claims the upstream's lease
  (:class:`gateway.pop3.ownership.UpstreamOwnership`: renew if held, else try to
  acquire) and runs only if this node holds it, writing through a ledger fenced with the
  lease's token; otherwise the pass is skipped (``fetch_now`` fails with
  :class:`~gateway.pop3.errors.HeldElsewhere`, naming the holder). The ownership's own
  check loop renews the lease, takes it over when its holder dies (the poller then polls
  at once) and reports a lost lease, on which the pass in flight is stopped. A
  single-node store's ownership always grants, so this is one code path.

:meth:`UpstreamPoller.health_dict` is what ``popgate status`` shows for the upstream.

Time comes only from the injected reactor (``callLater``/``seconds``), so tests drive it
with :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from twisted.application.service import Service
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.pop3.errors import FetchError, HeldElsewhere
from gateway.pop3.fetcher import FetchResult, fetch_once
from gateway.pop3.ownership import UpstreamOwnership
from gateway.pop3.upstream import Upstream
from gateway.store.interfaces import Ledger, LedgerEntry

log = structlog.get_logger(__name__)

FIRST_POLL_DELAY = 1.0
"""Seconds from service start to the first pass: lets the rest of the service start first."""

BACKOFF_BASE = 30.0
"""Delay after the first consecutive failure, doubled for each further one."""

DEFAULT_BACKOFF_CAP = 3600.0
"""Longest wait between failing passes (one hour)."""

MIN_TRIGGER_SPACING = 5.0
"""On-demand passes start at least this many seconds after the previous pass started."""

STOP_GRACE = 10.0
"""How long stopService waits for a pass in flight before cancelling it."""

DEFAULT_JITTER = 0.1
"""Default spread of every delay, as a fraction (0.1 = ±10 %)."""

MAX_SKIPPED_SHOWN = 50
"""Skipped messages listed by :meth:`UpstreamPoller.health_dict` (the count is always full)."""

FetchFunction = Callable[..., defer.Deferred[FetchResult]]
Progress = Callable[[dict[str, Any]], None]


@dataclass
class PollerHealth:
    """What status pages and logs show about one upstream. Times are reactor seconds."""

    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    last_error_kind: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    failing_since: float | None = None  # the first failure of the current episode
    fetched_total: int = 0
    bytes_total: int = 0
    passes: int = 0
    in_flight: bool = False
    next_poll_at: float | None = None
    last_result: FetchResult | None = None
    backlog: int = 0  # new messages listed upstream and not stored yet
    progress: dict[str, Any] | None = None  # the pass in flight, as last reported
    lease_holder: str | None = None  # the node polling it instead of this one, if known


class UpstreamPoller(Service):
    """Schedules fetch passes for one upstream (see the module docstring for the rules)."""

    def __init__(
        self,
        upstream: Upstream,
        store: Ledger | None,
        *,
        reactor: Any,
        fetch: FetchFunction = fetch_once,
        jitter: float = DEFAULT_JITTER,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        first_delay: float = FIRST_POLL_DELAY,
        min_spacing: float = MIN_TRIGGER_SPACING,
        stop_grace: float = STOP_GRACE,
        rng: random.Random | None = None,
        notifier: Any = None,
        ownership: UpstreamOwnership | None = None,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be a fraction in [0, 1)")
        self.upstream = upstream
        self.store = store
        self.reactor = reactor
        self.fetch = fetch
        self.jitter = jitter
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.first_delay = first_delay
        self.min_spacing = min_spacing
        self.stop_grace = stop_grace
        self.rng = rng if rng is not None else random.Random()
        self.notifier = notifier
        self.login_delay = 0.0
        """Seconds the upstream wants between logins (CAPA LOGIN-DELAY), 0 if none."""
        self.health = PollerHealth()
        self.ownership = (
            ownership
            if ownership is not None
            else UpstreamOwnership.single_node(upstream.name, reactor)
        )
        self.ownership.on_acquired = self._lease_acquired
        self.ownership.on_lost = self._lease_lost
        self.name = f"pop3:{upstream.name}"
        self._timer: Any = None
        self._in_flight: defer.Deferred[Any] | None = None
        self._again = False
        self._last_start: float | None = None
        self._next_waiters: list[tuple[defer.Deferred[FetchResult], Progress | None]] = []
        self._current_waiters: list[tuple[defer.Deferred[FetchResult], Progress | None]] = []

    # ---- service lifetime ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.ownership.start()
        self._schedule(self.first_delay, jittered=False)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.ownership.stop()
        self._cancel_timer()
        self._again = False
        self.health.next_poll_at = None
        waiting, self._next_waiters = self._next_waiters, []
        for d, _progress in waiting:
            d.errback(defer.CancelledError())
        running = self._in_flight
        if running is None:
            return self.ownership.release()
        done: defer.Deferred[None] = defer.Deferred()
        running.addBoth(lambda _: done.callback(None) if not done.called else None)
        grace = self.reactor.callLater(self.stop_grace, running.cancel)
        done.addBoth(lambda r: grace.cancel() if grace.active() else None)
        done.addCallback(lambda _: self.ownership.release())
        return done

    # ---- ownership ---------------------------------------------------------------------

    def _lease_acquired(self) -> None:
        """The check loop took the lease (over): poll now, the previous holder may have
        died in the middle of a pass."""
        self.trigger()

    def _lease_lost(self) -> None:
        """Stop the pass in flight: its commits would be refused (fencing), and dropping
        the connection without QUIT keeps its DELEs from taking effect."""
        if self._in_flight is not None and self.health.in_flight:
            log.warning("pop3.pass_stopped", upstream=self.upstream.name, reason="lease lost")
            self._in_flight.cancel()

    # ---- scheduling ------------------------------------------------------------------

    def _spread(self, delay: float) -> float:
        if self.jitter <= 0 or delay <= 0:
            return delay
        return delay * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float, *, jittered: bool = True) -> None:
        """(Re)arm the single timer to start a pass after ``delay`` seconds."""
        self._cancel_timer()
        if not self.running:
            return
        if jittered:
            delay = self._spread(delay)
        delay = max(0.0, delay, self._login_delay_wait())
        self._timer = self.reactor.callLater(delay, self._start_pass)
        self.health.next_poll_at = self.reactor.seconds() + delay

    def _backoff_delay(self) -> float:
        failures = max(1, self.health.consecutive_failures)
        return min(self.backoff_cap, self.backoff_base * 2 ** min(failures - 1, 32))

    def _login_delay_wait(self) -> float:
        """Seconds until LOGIN-DELAY allows the next login (0 when it already does)."""
        if self._last_start is None or self.login_delay <= 0:
            return 0.0
        return max(0.0, self._last_start + self.login_delay - self.reactor.seconds())

    def _earliest_start(self) -> float:
        if self._last_start is None:
            return self.reactor.seconds()
        spacing = max(self.min_spacing, self.login_delay)
        return max(self.reactor.seconds(), self._last_start + spacing)

    def trigger(self) -> None:
        """Ask for a pass as soon as allowed (on-demand, e.g. an IMAP client's NOOP).
        Ignored while another node is known to hold the upstream's lease: that node
        polls it, and this node's check loop takes it over if it dies."""
        if not self.running:
            return
        if self.ownership.expiring and not self.ownership.held and self.ownership.holder:
            return
        if self._in_flight is not None:
            self._again = True
            return
        now = self.reactor.seconds()
        delay = self._earliest_start() - now
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() - now <= delay:
                return  # already due at least as soon
        self._schedule(delay, jittered=False)

    def fetch_now(self, progress: Progress | None = None) -> defer.Deferred[FetchResult]:
        """A pass started at once, or right after the one in flight (never two at once);
        fires with its :class:`FetchResult` or fails with its error. ``progress`` hears
        that pass's progress dicts."""
        if not self.running:
            return defer.fail(defer.CancelledError())
        d: defer.Deferred[FetchResult] = defer.Deferred()
        self._next_waiters.append((d, progress))
        if self._in_flight is None:
            self._cancel_timer()
            if self._login_delay_wait() > 0:
                self._schedule(0, jittered=False)  # as soon as LOGIN-DELAY allows
            else:
                self._start_pass()
        else:
            self._again = True
        return d

    # ---- one pass --------------------------------------------------------------------

    def _start_pass(self) -> None:
        self._timer = None
        self.health.next_poll_at = None
        if not self.running or self._in_flight is not None:
            return
        self._again = False
        self._current_waiters, self._next_waiters = self._next_waiters, []
        d = self.ownership.claim()
        d.addCallback(self._pass_if_held)
        self._in_flight = d
        d.addBoth(self._finished)

    def _pass_if_held(self, held: bool) -> defer.Deferred[FetchResult]:
        """The pass itself, once the claim answered; HeldElsewhere when another node
        holds the lease (nothing is attempted)."""
        if not held or not self.running:
            self.health.lease_holder = self.ownership.holder
            raise HeldElsewhere(self.upstream.name, self.ownership.holder)
        self.health.lease_holder = None
        self._last_start = now = self.reactor.seconds()
        self.health.last_attempt = now
        self.health.in_flight = True
        self.health.progress = None
        return defer.maybeDeferred(
            self.fetch,
            self.upstream,
            self.ownership.fenced(self.store),
            reactor=self.reactor,
            progress=self._on_progress,
        )

    def _on_progress(self, info: dict[str, Any]) -> None:
        self.health.progress = info
        if "backlog" in info:
            self.health.backlog = int(info["backlog"])
        for _d, listener in self._current_waiters:
            if listener is not None:
                try:
                    listener(info)
                except Exception:
                    log.exception("pop3.progress_listener_failed", upstream=self.upstream.name)

    def _finished(self, outcome: Any) -> None:
        standby = isinstance(outcome, Failure) and isinstance(outcome.value, HeldElsewhere)
        if standby:
            pass  # not a pass: another node polls this upstream
        elif isinstance(outcome, Failure):
            self._failed(outcome)
        else:
            self._succeeded(outcome)
        if not standby:
            self._note_outcome(outcome)
        waiters, self._current_waiters = self._current_waiters, []
        for d, _progress in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
        self._pass_over(None)

    def _succeeded(self, result: FetchResult) -> None:
        h = self.health
        h.passes += 1
        h.last_success = self.reactor.seconds()
        h.consecutive_failures = 0
        h.failing_since = None
        h.last_result = result
        h.fetched_total += result.fetched
        h.bytes_total += result.bytes
        h.backlog = result.backlog

    def _failed(self, failure: Any) -> None:
        h = self.health
        h.passes += 1
        error = failure.value
        if isinstance(error, defer.CancelledError):
            return
        partial = getattr(error, "result", None)
        if isinstance(partial, FetchResult):
            h.last_result = partial
            h.fetched_total += partial.fetched
            h.bytes_total += partial.bytes
            h.backlog = partial.backlog
        h.consecutive_failures += 1
        h.last_error_at = self.reactor.seconds()
        if h.failing_since is None:
            h.failing_since = h.last_error_at
        h.last_error_kind = error.kind if isinstance(error, FetchError) else "internal"
        h.last_error = str(error) or type(error).__name__
        if not isinstance(error, FetchError):
            log.error(
                "pop3.poller_internal_error",
                upstream=self.upstream.name,
                error=type(error).__name__,
                message=str(error),
            )

    def _note_outcome(self, outcome: Any) -> None:
        """LOGIN-DELAY from the pass's result, then the notifier's turn."""
        failed = isinstance(outcome, Failure)
        result = getattr(outcome.value, "result", None) if failed else outcome
        if isinstance(result, FetchResult) and result.login_delay > 0:
            self.login_delay = result.login_delay
        if self.notifier is None:
            return
        if failed and isinstance(outcome.value, defer.CancelledError):
            return
        try:
            self.notifier.after_pass(
                ok=not failed,
                error=outcome.value if failed else None,
                now=self.reactor.seconds(),
            )
        except Exception:
            log.exception("pop3.notifier_failed", upstream=self.upstream.name)

    def _pass_over(self, _: Any) -> None:
        self._in_flight = None
        self.health.in_flight = False
        if not self.running:
            return
        if self._next_waiters:
            self._again = False
            self._schedule(0, jittered=False)  # an operator is waiting: no spacing
        elif self._again:
            self._again = False
            self._schedule(self._earliest_start() - self.reactor.seconds(), jittered=False)
        elif self.health.consecutive_failures:
            delay = self._backoff_delay()
            self._schedule(delay)
            log.info(
                "pop3.backoff",
                upstream=self.upstream.name,
                failures=self.health.consecutive_failures,
                delay=round(delay, 1),
            )
        else:
            self._schedule(self.upstream.poll_interval)

    # ---- status ----------------------------------------------------------------------

    def health_dict(self, ledger: list[LedgerEntry] | None = None) -> dict[str, Any]:
        """JSON-ready health of this upstream for ``popgate status`` and metrics. Times are
        epoch seconds (the reactor's clock); ``skipped`` lists messages recorded as not
        fetched (too large, line too long), newest first, at most :data:`MAX_SKIPPED_SHOWN`.
        ``ledger``: the upstream's entries when the caller read them (off the reactor for
        a store that does not run inline; without it such a store is not asked here)."""
        h = self.health
        up = self.upstream
        if h.in_flight:
            state = "fetching"
        elif self.ownership.expiring and not self.ownership.held:
            state = "standby"  # another node holds the lease (or nobody yet)
        elif h.consecutive_failures:
            state = "failing"
        elif h.last_success is None:
            state = "waiting"
        else:
            state = "ok"
        skipped: list[dict[str, Any]] = []
        if ledger is None and self.store is not None and getattr(self.store, "runs_inline", True):
            ledger = self.store.ledger_entries(up.name)
        if ledger is not None:
            entries = [e for e in ledger if e.state == "skipped"]
            entries.sort(key=lambda e: e.fetched_at, reverse=True)
            skipped = [
                {"uidl": e.uidl, "reason": e.reason, "at": e.fetched_at.timestamp()}
                for e in entries
            ]
        return {
            "upstream": up.name,
            "owner": up.owner,
            "folder": up.folder,
            "host": up.host,
            "port": up.port,
            "tls": up.tls,
            "state": state,
            "last_success": h.last_success,
            "last_attempt": h.last_attempt,
            "last_error": h.last_error,
            "last_error_kind": h.last_error_kind,
            "last_error_at": h.last_error_at,
            "consecutive_failures": h.consecutive_failures,
            "failing_since": h.failing_since,
            "messages_fetched": h.fetched_total,
            "bytes_fetched": h.bytes_total,
            "passes": h.passes,
            "in_flight": h.in_flight,
            "next_poll_at": h.next_poll_at,
            "backlog": h.backlog,
            "login_delay": self.login_delay,
            "ownership": self.ownership.describe(),
            "progress": h.progress if h.in_flight else None,
            "last_result": h.last_result.as_dict() if h.last_result is not None else None,
            "skipped_count": len(skipped),
            "skipped": skipped[:MAX_SKIPPED_SHOWN],
        }
