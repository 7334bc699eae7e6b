"""The relay service: drains the outbound queue to the upstreams' SMTP servers, retries
with backoff, expires, and files bounces.

Each pass (every ``poll_interval`` seconds, and at once after :meth:`RelayService.kick`):
expire items past their lifetime, attempt every due item (routes in parallel, one item
at a time per route, so one slow provider delays only its own users), file the bounces
still owed (:meth:`OutboundQueue.unbounced`, so a crash between failing and filing
files it on the next pass), and purge finished rows older than ``keep_finished``.

Per attempt (:func:`gateway.submission.client.relay_message`):

- DATA answered 2xx → :meth:`mark_sent` (one transaction with the reply); recipients
  the upstream refused for good get a bounce right away, those refused for now stay
  queued;
- a temporary failure (4xx, connection, TLS, timeout, auth) → :meth:`mark_deferred`
  with :func:`~gateway.submission.policy.retry_delay`;
- a permanent failure (5xx to MAIL/DATA, every recipient refused, too large) →
  :meth:`mark_failed`, then the bounce.

Every queue call goes through ``runner`` (a :class:`~gateway.store.runner.StoreRunner`):
inline on the reactor thread for the SQLite queue, on the store's threads for the
PostgreSQL one, so no queue round trip runs on the reactor; a pass's calls are awaited
one after another, so their order is the same either way.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from twisted.application import service
from twisted.internet import defer, task

from gateway.store.queue import EXPIRED, OutboundQueue, QueueItem
from gateway.store.runner import InlineRunner, StoreRunner
from gateway.submission.bounce import RecipientFailure, bounce_message
from gateway.submission.client import RelayOutcome, relay_message
from gateway.submission.policy import RETRY_SCHEDULE, SmtpUpstream, retry_delay

log = structlog.get_logger(__name__)

FileBounce = Callable[[str, bytes], Any]
"""``(user, report octets)`` → files the bounce in the user's INBOX (may return a Deferred)."""

Deliver = Callable[..., Awaitable[RelayOutcome]]

KEEP_FINISHED = 7 * 86400.0
"""Sent (and bounced) rows are kept this long for ``popgate status``, then purged."""

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _status_of(text: str | None, default: str) -> str:
    match = _ENHANCED.search(text or "")
    return match.group(1) if match else default


def bounce_for_item(item: QueueItem, content: bytes, hostname: str, now: float) -> bytes:
    """The report for a failed or expired queue row (rebuilt from the row alone, so a
    bounce owed across a restart looks the same)."""
    expired = item.state == EXPIRED
    default = "4.4.7" if expired else "5.0.0"
    reason = item.last_error or "no attempt succeeded"
    if expired:
        reason = f"gave up after {item.attempts} attempts; last error: {reason}"
    failures = [
        RecipientFailure(
            r, _status_of(item.last_error, default) if not expired else "4.4.7", reason
        )
        for r in item.recipients
    ]
    return bounce_message(
        sender=item.mail_from,
        failures=failures,
        original=content,
        reporting_host=hostname,
        remote_host=None,
        arrival=item.queued_at,
        now=now,
        expired=expired,
    )


class RelayService(service.Service):
    """See the module docstring. ``routes(name)`` gives a route's current
    :class:`SmtpUpstream` (None if it has none any more: the item waits, and expires);
    ``runner`` is where queue calls run (default: inline)."""

    def __init__(
        self,
        queue: OutboundQueue,
        routes: Callable[[str], SmtpUpstream | None],
        *,
        reactor: Any,
        file_bounce: FileBounce,
        hostname: str,
        clock: Any = None,
        poll_interval: float = 30.0,
        schedule: tuple[float, ...] = RETRY_SCHEDULE,
        deliver: Deliver = relay_message,
        keep_finished: float = KEEP_FINISHED,
        runner: StoreRunner | None = None,
    ) -> None:
        self.queue = queue
        self.runner: StoreRunner = runner if runner is not None else InlineRunner()
        self.routes = routes
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.file_bounce = file_bounce
        self.hostname = hostname
        self.poll_interval = poll_interval
        self.schedule = schedule
        self.deliver = deliver
        self.keep_finished = keep_finished
        self._loop: task.LoopingCall | None = None
        self._pass: defer.Deferred[None] | None = None
        self._running = False
        self._again = False
        self.passes = 0

    # -- service lifetime --

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.kick)
        self._loop.clock = self.clock
        self._loop.start(self.poll_interval, now=True)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._again = False
        return self.idle()

    def idle(self) -> defer.Deferred[None]:
        """Fires when no pass is running (tests, shutdown)."""
        if not self._running or self._pass is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        self._pass.addBoth(lambda r: (done.callback(None), r)[1])
        return done

    def kick(self) -> defer.Deferred[None]:
        """Run a pass now (after an enqueue), or right after the current one."""
        if self._running:
            self._again = True
            return self.idle()
        self._running = True
        running = defer.ensureDeferred(self._run())
        if self._running:  # else the pass finished synchronously
            self._pass = running
        return self.idle()

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self.run_once()
                except Exception:
                    log.exception("relay.pass_failed")
                if not self._again:
                    break
        finally:
            self._running = False
            self._pass = None

    # -- one pass --

    async def run_once(self) -> None:
        self.passes += 1
        now = self.clock.seconds()
        run = self.runner.run
        for item in await run(self.queue.expire, now):
            log.warning("relay.expired", queue_id=item.id, route=item.route, user=item.user)
        by_route: dict[str, list[QueueItem]] = {}
        for item in await run(self.queue.due, now, limit=1000):
            by_route.setdefault(item.route, []).append(item)
        if by_route:
            await defer.gatherResults(
                [defer.ensureDeferred(self._drain(items)) for items in by_route.values()],
                consumeErrors=True,
            )
        await self._file_owed_bounces()
        await run(self.queue.purge, self.clock.seconds() - self.keep_finished)

    async def _drain(self, items: list[QueueItem]) -> None:
        for item in items:
            try:
                await self.attempt(item)
            except Exception:
                log.exception("relay.attempt_crashed", queue_id=item.id)

    async def attempt(self, item: QueueItem) -> RelayOutcome | None:
        upstream = self.routes(item.route)
        run = self.runner.run
        if upstream is None:
            await self._defer(item, f"upstream {item.route} has no SMTP server configured", None)
            return None
        content = await run(self.queue.content, item.id)
        outcome: RelayOutcome = await self.deliver(
            upstream,
            mail_from=item.mail_from,
            recipients=item.recipients,
            content=content,
            reactor=self.reactor,
            helo_name=self.hostname,
        )
        now = self.clock.seconds()
        still = [r for r, _ in outcome.deferred]
        why_later = "; ".join(f"{r}: {text}" for r, text in outcome.deferred) or None
        if outcome.reply is not None:
            await run(
                self.queue.mark_sent,
                item.id,
                reply=outcome.reply,
                now=now,
                remaining=still,
                next_attempt=now + retry_delay(item.attempts + 1, self.schedule),
                error=why_later,
            )
            log.info(
                "relay.sent",
                queue_id=item.id,
                route=item.route,
                delivered=len(outcome.delivered),
                deferred=len(still),
                failed=len(outcome.failed),
            )
            if outcome.failed:
                await self._bounce_now(item, outcome, content, now)
        elif outcome.error is not None and not outcome.permanent:
            await self._defer(item, outcome.error, None)
        elif still:
            # some recipients may work later; the ones refused for good bounce now
            await self._defer(item, why_later or "deferred", still)
            if outcome.failed:
                await self._bounce_now(item, outcome, content, now)
        else:
            reason = outcome.error or "; ".join(f"{r}: {text}" for r, _, text in outcome.failed)
            await run(self.queue.mark_failed, item.id, error=reason or "refused", now=now)
            log.warning("relay.failed", queue_id=item.id, route=item.route, error=reason)
            if outcome.failed and outcome.error is None:
                await self._bounce_now(item, outcome, content, now)
                await run(self.queue.mark_bounced, item.id)
        return outcome

    async def _defer(self, item: QueueItem, error: str, remaining: list[str] | None) -> None:
        now = self.clock.seconds()
        delay = retry_delay(item.attempts + 1, self.schedule)
        await self.runner.run(
            self.queue.mark_deferred,
            item.id,
            error=error,
            next_attempt=now + delay,
            now=now,
            remaining=remaining,
        )
        log.info("relay.deferred", queue_id=item.id, route=item.route, error=error, retry_in=delay)

    async def _bounce_now(
        self, item: QueueItem, outcome: RelayOutcome, content: bytes, now: float
    ) -> None:
        report = bounce_message(
            sender=item.mail_from,
            failures=[RecipientFailure(r, status, text) for r, status, text in outcome.failed],
            original=content,
            reporting_host=self.hostname,
            remote_host=outcome.remote_host,
            arrival=item.queued_at,
            now=now,
        )
        await defer.maybeDeferred(self.file_bounce, item.user, report)
        log.info("relay.bounced", queue_id=item.id, user=item.user, recipients=len(outcome.failed))

    async def _file_owed_bounces(self) -> None:
        run = self.runner.run
        for item in await run(self.queue.unbounced):
            content = await run(self.queue.content, item.id)
            report = bounce_for_item(item, content, self.hostname, self.clock.seconds())
            try:
                await defer.maybeDeferred(self.file_bounce, item.user, report)
            except Exception:
                log.exception("relay.bounce_filing_failed", queue_id=item.id)
                continue
            await run(self.queue.mark_bounced, item.id)
            log.info("relay.bounced", queue_id=item.id, user=item.user, state=item.state)
