"""Wiring the submission relay (issue 15) into a running gateway: sender policy from the
upstreams, the outbound queue in the store's file, the Sent copy and bounces through the
store's normal append, the relay service, the listeners, and the IMAP APPEND hook that
keeps one copy of a sent message.

The order of :class:`~gateway.submission.accept.Acceptor` is the durability argument: the
queue row is committed on the store's own connection before the client gets 250; the
Sent copy (``\\Seen``, in the user's ``\\Sent`` mailbox) is filed through
:meth:`Store.append`, so IDLE and QRESYNC clients see it like any other new message.
Where the store's calls run is the service's store runner's business: inline on the
reactor thread for SQLite; for PostgreSQL the acceptor's commit (queue row and Sent
copy), the relay's queue calls and its bounces run on the store's threads
(:class:`~gateway.store.runner.ThreadRunner`), so no round trip runs on the reactor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from twisted.application import service

from gateway.access.outbound import SendingRoute, SieveOutbound
from gateway.app import config as configmod
from gateway.app.config.sending import relay_wanted
from gateway.app.listening import listening_service
from gateway.core.flags import SENT_USE
from gateway.store.interfaces import INBOX, SHARED_OWNER_PREFIX, MailboxExists, MailboxNotFound
from gateway.store.memory_queue import MemoryOutboundQueue
from gateway.store.queue import OutboundQueue
from gateway.store.runner import InlineRunner, StoreRunner
from gateway.store.sqlite_queue import SQLiteOutboundQueue
from gateway.submission.accept import Acceptor
from gateway.submission.client import RelayOutcome, relay_message
from gateway.submission.policy import (
    RateLimiter,
    SenderPolicy,
    SmtpUpstream,
    SubmissionLimits,
    SubmissionRoute,
)
from gateway.submission.relay import RelayService
from gateway.submission.sent import SentCopy, SentDedup
from gateway.submission.server import ListenerFactory, ListenerPolicy, SubmissionFactory

log = structlog.get_logger(__name__)

POLL_INTERVAL = 30.0
"""Longest wait between two looks at the queue for due retries, in seconds."""

SENT_NAME = "Sent"
"""The mailbox created for Sent copies when a user has none marked ``\\Sent``."""


def routes_from_config(cfg: configmod.Config) -> list[SubmissionRoute]:
    """One route per upstream with addresses: its owner may send as them, or every
    member of the household for a ``shared:NAME`` upstream."""
    routes = []
    for sending in cfg.sending:
        if not sending.addresses:
            continue
        owner = sending.owner
        if owner.startswith(SHARED_OWNER_PREFIX):
            group = cfg.shared.get(owner[len(SHARED_OWNER_PREFIX) :])
            users = frozenset(group.members) if group is not None else frozenset()
        else:
            users = frozenset({owner})
        smtp = sending.smtp
        if smtp is not None and sending.oauth2:
            smtp = replace(smtp, mechanism="xoauth2")
        routes.append(SubmissionRoute(sending.upstream, sending.addresses, users, smtp))
    return routes


class SieveSending:
    """:class:`gateway.access.outbound.Sending` from the config: an owner's Sieve mail
    leaves through the SMTP of the upstream that fetched the message, else through the
    first of the owner's upstreams with ``[upstreams.smtp]`` and addresses; it counts
    against the same per-user hourly cap as submitted mail (``rate``: the submission
    server's own limiter, so a script and a client share one budget)."""

    def __init__(
        self,
        sending: tuple[configmod.Sending, ...],
        *,
        lifetime: float,
        rate: RateLimiter,
    ) -> None:
        self.lifetime = lifetime
        self.rate = rate
        self._routes: dict[str, list[SendingRoute]] = {}
        self._by_upstream: dict[str, SendingRoute] = {}
        self._addresses: dict[str, list[str]] = {}
        for entry in sending:
            self._addresses.setdefault(entry.owner, []).extend(entry.addresses)
            if entry.smtp is None or not entry.addresses:
                continue
            route = SendingRoute(entry.upstream, entry.addresses)
            self._routes.setdefault(entry.owner, []).append(route)
            self._by_upstream[entry.upstream] = route

    def route_for(self, owner: str, upstream: str) -> SendingRoute | None:
        own = self._routes.get(owner)
        if not own:
            return None
        found = self._by_upstream.get(upstream)
        return found if found in own else own[0]

    def own_addresses(self, owner: str) -> tuple[str, ...]:
        return tuple(self._addresses.get(owner, ()))

    def allow(self, owner: str, now: float) -> bool:
        return self.rate.take(owner, now)


def sieve_outbound(cfg: configmod.Config, rate: RateLimiter | None = None) -> SieveOutbound:
    """The Sieve side of sending, for ingest and for the upload check (``can_send``)."""
    limiter = rate if rate is not None else RateLimiter(cfg.submission.max_messages_per_hour)
    sending = SieveSending(cfg.sending, lifetime=cfg.submission.queue_lifetime, rate=limiter)
    return SieveOutbound(sending, socket.gethostname() or "localhost")


def outbound_queue(store: Any) -> OutboundQueue:
    """The queue in the store's own SQLite file (schema version 6), in its PostgreSQL
    database (durable, shared by the nodes; called through the store runner), or the
    memory store's own (the demo's): where Sieve's routed deliveries queue redirects and
    replies."""
    if not getattr(store, "runs_inline", True):
        from gateway.store.postgres.queue import PGOutboundQueue

        return PGOutboundQueue(store)
    db = getattr(store, "db", None)
    if db is None:
        found = getattr(getattr(store, "state", None), "outbound", None)
        return found if found is not None else MemoryOutboundQueue()
    return SQLiteOutboundQueue(db)


class StoreFiling:
    """Sent copies, bounces and the APPEND hook over the store's normal append."""

    def __init__(self, store: Any, dedup: SentDedup, clock: Any) -> None:
        self.store = store
        self.dedup = dedup
        self.clock = clock

    def sent_mailbox(self, user: str) -> Any:
        for mailbox in self.store.list_mailboxes(user):
            if mailbox.special_use == SENT_USE:
                return mailbox
        try:
            return self.store.get_mailbox(user, SENT_NAME)
        except MailboxNotFound:
            pass
        try:
            return self.store.create_mailbox(user, SENT_NAME, SENT_USE)
        except MailboxExists:
            return self.store.get_mailbox(user, SENT_NAME)

    def file_sent(self, user: str, copy: SentCopy) -> tuple[int, int]:
        """The Acceptor's ``file_sent``: the copy in ``\\Sent`` with ``\\Seen``."""
        mailbox = self.sent_mailbox(user)
        uid = self.store.append(mailbox.id, copy.raw, copy.flags)
        log.info("submission.sent_copy_filed", user=user, mailbox=mailbox.name, uid=uid)
        return mailbox.id, uid

    def file_bounce(self, user: str, report: bytes) -> None:
        """The relay's ``file_bounce``: the report in the sender's INBOX, unread."""
        self.store.ensure_user(user)
        inbox = self.store.get_mailbox(user, INBOX)
        self.store.append(inbox.id, report)

    # -- gateway.imap.session.SentAppendHook --

    def kept_copy(self, user: str, mailbox_id: int, raw: bytes) -> int | None:
        ref = self.dedup.recent(user, raw, self.clock.seconds())
        if ref is None or ref[0] != mailbox_id:
            return None
        uid = ref[1]
        if uid not in self.store.message_uids(mailbox_id):  # expunged meanwhile
            return None
        log.info("submission.sent_append_kept", user=user, uid=uid)
        return uid

    def filed(self, user: str, mailbox_id: int, raw: bytes, uid: int) -> None:
        self.dedup.remember(user, raw, (mailbox_id, uid), self.clock.seconds())


def with_oauth_tokens(deliver: Callable[..., Any], tokens: Mapping[tuple[str, str], Any]) -> Any:
    """``deliver`` with a fresh OAuth2 access token put in ``upstream.password`` for the
    SMTP servers of ``auth = "oauth2"`` upstreams, keyed by (SMTP username, host): the
    POP3 poller's own token source, so one refresh serves both."""

    async def run(upstream: SmtpUpstream, **kwargs: Any) -> RelayOutcome:
        source = tokens.get((upstream.username, upstream.host))
        if upstream.mechanism == "xoauth2" and source is not None:
            try:
                token = await source.access_token()
            except Exception as e:  # OAuthError: the poller files the notice
                return RelayOutcome(error=f"no OAuth2 access token: {e}", remote_host=upstream.host)
            upstream = replace(upstream, password=token)
        return await deliver(upstream, **kwargs)

    return run


@dataclass
class SendingParts:
    """What :func:`build_sending` made, for status, metrics and tests."""

    policy: SenderPolicy
    queue: OutboundQueue
    relay: RelayService
    factory: SubmissionFactory
    filing: StoreFiling
    listeners: tuple[str, ...]
    runner: StoreRunner = field(default_factory=InlineRunner)
    """Where the queue's calls run (metrics read the queue from a scrape thread when
    this is not inline)."""


def build_sending(
    top: service.MultiService,
    cfg: configmod.Config,
    reactor: Any,
    *,
    store: Any,
    authenticator: Any,
    run_blocking: Callable[..., Any],
    penalty: Any,
    server_tls: Any,
    imap_factory: Any,
    token_sources: Mapping[str, Any],
    sieve_delivery: Any = None,
    runner: StoreRunner | None = None,
) -> SendingParts | None:
    """The relay and its listeners as children of ``top`` (None when nothing sends).
    ``sieve_delivery`` (the fetcher's :class:`~gateway.access.filtering.SieveDelivery`)
    gets the way to queue Sieve's redirects and vacation replies, and the relay's kick.
    ``runner`` is the service's store runner (default: inline)."""
    if not relay_wanted(cfg):
        return None
    store_runner: StoreRunner = runner if runner is not None else InlineRunner()
    hostname = socket.gethostname() or "localhost"
    policy = SenderPolicy(routes_from_config(cfg))
    queue = outbound_queue(store)
    filing = StoreFiling(store, SentDedup(), reactor)
    tokens: dict[tuple[str, str], Any] = {}
    for sending in cfg.sending:
        if sending.oauth2 and sending.smtp is not None and sending.upstream in token_sources:
            key = (sending.smtp.username, sending.smtp.host)
            tokens[key] = token_sources[sending.upstream]

    def smtp_of(name: str) -> SmtpUpstream | None:
        route = policy.route_named(name)
        return route.smtp if route is not None else None

    file_bounce: Callable[[str, bytes], Any] = filing.file_bounce
    if not store_runner.inline:

        def file_bounce(user: str, report: bytes) -> Any:
            return store_runner.run(filing.file_bounce, user, report)

    relay = RelayService(
        queue,
        smtp_of,
        reactor=reactor,
        file_bounce=file_bounce,
        runner=store_runner,
        hostname=hostname,
        deliver=with_oauth_tokens(relay_message, tokens),
        schedule=cfg.submission.retry_intervals,
        # a due retry is noticed within its own interval (or every 30 s)
        poll_interval=min(POLL_INTERVAL, *cfg.submission.retry_intervals),
    )
    relay.setServiceParent(top)
    accept = Acceptor(
        queue,
        clock=reactor,
        lifetime=cfg.submission.queue_lifetime,
        file_sent=filing.file_sent,
        dedup=filing.dedup,
        on_enqueued=relay.kick,
        runner=store_runner,
    )
    sub = cfg.submission
    factory = SubmissionFactory(
        policy=policy,
        authenticator=authenticator,
        accept=accept,
        reactor=reactor,
        run_blocking=run_blocking,
        hostname=hostname,
        limits=SubmissionLimits(
            max_message_size=sub.max_message_size,
            max_recipients=sub.max_recipients,
            max_messages_per_hour=sub.max_messages_per_hour,
        ),
        tls_context_factory=server_tls,
        allow_plaintext_auth=False,
        penalty=penalty,
    )
    _listen(top, sub.listeners, factory, server_tls, reactor)
    imap_factory.sent_append = filing
    if sieve_delivery is not None:
        sieve_delivery.outbound = sieve_outbound(cfg, factory.rate)
        sieve_delivery.on_queued = relay.kick
    log.info(
        "submission.enabled",
        listeners=[listener.endpoint for listener in sub.listeners],
        routes=[r.name for r in policy.routes if r.smtp is not None],
    )
    return SendingParts(
        policy,
        queue,
        relay,
        factory,
        filing,
        tuple(x.endpoint for x in sub.listeners),
        store_runner,
    )


def _listen(
    top: service.MultiService,
    listeners: tuple[configmod.Listener, ...],
    factory: SubmissionFactory,
    server_tls: Any,
    reactor: Any,
) -> None:
    """One listening service per submission listener, as for IMAP: ``submissions``
    wraps its endpoint in TLS with the shared (SIGHUP-reloaded) ``[tls]`` context."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    for listener in listeners:
        implicit = listener.tls == "implicit"
        policy = ListenerPolicy(implicit_tls=implicit, plaintext_auth=listener.plaintext_auth)
        wrapped: Any = ListenerFactory(factory, policy)
        if implicit:
            wrapped = TLSMemoryBIOFactory(server_tls, False, wrapped)
        listening_service(
            reactor, listener.endpoint, wrapped, listener.backlog, strict=not implicit
        ).setServiceParent(top)


def queue_rows(rows: Any, now: float) -> list[dict[str, Any]]:
    """Per upstream SMTP, from ``queue.status()``'s rows (read where the store runs):
    queued messages, age of the oldest, last error (``popgate status``)."""
    return [
        {
            "route": s.route,
            "queued": s.queued,
            "oldest": s.oldest,
            "oldest_age": None if s.oldest is None else max(0.0, now - s.oldest),
            "last_error": s.last_error,
        }
        for s in rows
    ]
