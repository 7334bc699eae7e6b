"""The IMAP listeners: the shared factory that builds connections, counts them per source
and per user, and tells sessions about store changes; and one factory per listener that
adds its :class:`~gateway.imap.policy.ListenerPolicy`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory

from gateway.access.households import Households
from gateway.access.quota import Quotas
from gateway.imap.budgets import ByteBudgets
from gateway.imap.durability import CommitSyncer
from gateway.imap.policy import (
    IMAPLimits,
    ListenerPolicy,
    NullObserver,
    RunBlockingFn,
    ServerObserver,
)
from gateway.imap.selectcache import SelectCache
from gateway.imap.server import IMAPServerProtocol
from gateway.imap.session import ActivityHook, SentAppendHook
from gateway.security.auth import Authenticator, UserDirectory
from gateway.security.connections import ConnectionCounts
from gateway.security.penalty import AuthPenalty
from gateway.store.interfaces import DeferredSync, Store
from gateway.store.runner import InlineRunner, StoreRunner, runner_for


class IMAPServerFactory(ConnectionCounts, Factory):
    """Builds :class:`IMAPServerProtocol` connections sharing one store and authenticator.

    ``run_blocking(call) -> Deferred`` runs a blocking call (scrypt) off the reactor
    thread: :func:`thread_runner` in production; tests may run it inline. ``clock``
    (default: the reactor) drives timeouts and keep-alives. ``allow_plaintext_auth``
    false means passwords only over TLS (LOGINDISABLED until STARTTLS, RFC 3501 §6.2.3).
    ``activity(user, mailbox)`` is told when a client selects, idles on, polls or asks
    STATUS of a mailbox (the service wires it to fetch-on-demand).
    ``penalty`` (:class:`~gateway.security.penalty.AuthPenalty`) delays failed logins and
    enforces failure budgets; None turns both off (tests of other features).
    ``spool_dir`` holds the temp files of large literals (None: the system temp dir);
    :attr:`budgets` counts the bytes all connections buffer (:mod:`gateway.imap.budgets`).
    ``directory`` says who still has an account: sessions of a deleted user end at their
    next command (None: no check). After a reload changes accounts or households, the
    service calls :meth:`access_changed` so that idling sessions check at once.
    ``store_runner`` says where command steps run: for a store that does not run inline
    (PostgreSQL) a :class:`~gateway.store.runner.ThreadRunner` is required, and the
    sessions step their commands on its threads (see :mod:`gateway.imap.server`); the
    activity hook is then handed back to the reactor thread. ``group_commit`` (with an
    inline store that offers :class:`~gateway.store.interfaces.DeferredSync`, i.e. SQLite)
    moves the fsync of the commands' commits off the reactor (:mod:`gateway.imap.durability`);
    ``flag_fsync`` ("optimized" or "always") says whether flag-only changes wait for theirs.
    """

    def __init__(
        self,
        store: Store,
        authenticator: Authenticator,
        *,
        reactor: Any,
        run_blocking: RunBlockingFn,
        limits: IMAPLimits | None = None,
        tls_context_factory: Any = None,
        allow_plaintext_auth: bool = True,
        clock: IReactorTime | None = None,
        activity: ActivityHook | None = None,
        penalty: AuthPenalty | None = None,
        spool_dir: Path | None = None,
        directory: UserDirectory | None = None,
        store_runner: StoreRunner | None = None,
        group_commit: bool = False,
        flag_fsync: str = "optimized",
    ) -> None:
        self.store = store
        if store_runner is None:
            # Test doubles without ``runs_inline`` are inline; a backend that declares
            # False gets ValueError from runner_for (it needs a ThreadRunner).
            inline = getattr(store, "runs_inline", True)
            store_runner = InlineRunner() if inline else runner_for(store)
        self.store_runner: StoreRunner = store_runner
        self.commit_syncer: CommitSyncer | None = None
        """Group commit for the sessions' writes (None: each commit syncs inline)."""
        if group_commit and store_runner.inline and isinstance(store, DeferredSync):
            self.commit_syncer = CommitSyncer(reactor, store, lazy_flags=flag_fsync == "optimized")
        self.activity = activity
        self.session_activity = activity
        """The hook sessions call: ``activity`` itself, or (steps on store threads) a
        wrapper handing the call to the reactor thread."""
        if activity is not None and not self.store_runner.inline:
            self.session_activity = functools.partial(reactor.callFromThread, activity)
        self.authenticator = authenticator
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.run_blocking = run_blocking
        self.limits = limits if limits is not None else IMAPLimits()
        self.tls_context_factory = tls_context_factory
        self.allow_plaintext_auth = allow_plaintext_auth
        self.penalty = penalty
        self.spool_dir = spool_dir
        self.budgets = ByteBudgets(
            self.limits.max_prelogin_buffered,
            self.limits.max_append_in_flight_per_user,
            self.limits.max_append_in_flight,
        )
        """Pre-login input, APPEND bytes in flight and spool use, over all connections."""
        self.directory = directory
        self.households = Households()
        """Shared mailboxes and their members; the service fills it from the config."""
        self.quotas = Quotas()
        """Storage limits by owner (RFC 9208); the service fills it from the config."""
        self.select_cache: SelectCache | None = SelectCache()
        """SELECT results of unchanged mailboxes, shared by all sessions (issue 19)."""
        self.sent_append: SentAppendHook | None = None
        """Keeps one copy of a sent message in \\Sent; the service sets it when the
        submission relay runs (see :class:`~gateway.imap.session.SentAppendHook`)."""
        self.observer: ServerObserver = NullObserver()
        """Told about connections and commands (the service sets the metrics here)."""
        self.protocols: set[IMAPServerProtocol] = set()
        ConnectionCounts.__init__(self)
        self.trace_users: frozenset[str] = frozenset()
        """``[debug] trace_users``: whose connections are traced (gateway.imap.tracefile)."""
        self.trace_root: Path | None = None
        """Where traces go (``state_dir/trace``); None: no tracing at all."""
        self._changed: set[int] = set()
        self._flush_call: IDelayedCall | None = None
        self._flush_waits = False  # a flush waits for the syncer
        self._idle_on: dict[int, set[IMAPServerProtocol]] = {}
        """Connections idling with a mailbox selected, by that mailbox's id."""
        self._notified: set[IMAPServerProtocol] = set()
        """Connections whose session has NOTIFY on (RFC 5465: any mailbox may concern them)."""

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return IMAPServerProtocol(self)

    def startFactory(self) -> None:
        self.store.add_listener(self._store_changed)
        if self.commit_syncer is not None:
            self.commit_syncer.start()

    def stopFactory(self) -> None:
        self.store.remove_listener(self._store_changed)
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self.commit_syncer is not None:
            self.commit_syncer.stop()

    def _store_changed(self, mailbox_id: int) -> None:
        """The store's listener. Sessions are told on the next reactor turn, not from
        inside the writer's call stack (which may be another session's command), and,
        with group commit, once the change is on disk."""
        self._changed.add(mailbox_id)
        if self._flush_call is None and not self._flush_waits:
            syncer = self.commit_syncer
            if syncer is not None and syncer.owed():
                self._flush_waits = True
                syncer.wait(syncer.seq).addBoth(self._synced_flush)
            else:
                self._flush_call = self.reactor.callLater(0, self._flush_changes)

    def _synced_flush(self, _result: object) -> None:
        """The changes heard so far are on disk (or the fsync failed, and the waiting
        writers' connections end): tell the sessions on the next turn."""
        self._flush_waits = False
        if self._flush_call is None and self._changed:
            self._flush_call = self.reactor.callLater(0, self._flush_changes)

    def access_changed(self) -> None:
        """A reload changed accounts or household membership: every session checks its
        access at its next command anyway; an idling one is woken to check now."""
        for protocol in list(self.protocols):
            protocol.access_changed()

    def set_trace_users(self, users: frozenset[str], root: Path | None) -> None:
        """A (re)load set whose connections are traced; logged-in connections follow
        at their next command boundary (SIGHUP switches tracing on and off)."""
        if (users, root) == (self.trace_users, self.trace_root):
            return
        self.trace_users, self.trace_root = users, root
        for protocol in list(self.protocols):
            protocol.trace_changed()

    def _flush_changes(self) -> None:
        self._flush_call = None
        changed, self._changed = self._changed, set()
        if self.select_cache is not None and self.store_runner.inline:
            # Sessions run their catch-up right here, one after another, and nothing
            # else writes meanwhile: they can share each mailbox's changes_since read.
            with self.select_cache.fanout():
                self._wake(changed)
        else:
            self._wake(changed)

    def _wake(self, changed: set[int]) -> None:
        """Tell the connections a change may concern. With an inline store only those in
        the indexes below (the rest would ignore it: neither idling on a changed mailbox
        nor under NOTIFY), so one APPEND to a household's INBOX costs its 500 IDLE
        phones, not a call on each of 10,000 connections first (issue 19). Steps on
        store threads set NOTIFY there; then every connection is asked, as before."""
        mailboxes = sorted(changed)
        if self.store_runner.inline:
            woken = set(self._notified)
            for mailbox_id in mailboxes:
                woken.update(self._idle_on.get(mailbox_id, ()))
        else:
            woken = set(self.protocols)
        for protocol in woken:
            for mailbox_id in mailboxes:
                protocol.mailbox_changed(mailbox_id)

    def watch(
        self, protocol: IMAPServerProtocol, before: int | None, after: int | None, notify: bool
    ) -> None:
        """Where ``protocol`` wants store changes now: the mailbox it idles on (``after``;
        None: not idling, or nothing selected; ``before``: the one it was registered
        on) and whether NOTIFY is on. Called as it starts and ends IDLE, as its session
        sets or drops NOTIFY, and with (None, False) as it closes."""
        if before is not None and before != after:
            idling = self._idle_on.get(before)
            if idling is not None:
                idling.discard(protocol)
                if not idling:
                    del self._idle_on[before]
        if after is not None:
            self._idle_on.setdefault(after, set()).add(protocol)
        if notify:
            self._notified.add(protocol)
        else:
            self._notified.discard(protocol)


class ListenerFactory(Factory):
    """One listener's view of the shared :class:`IMAPServerFactory`: connections get this
    listener's :class:`ListenerPolicy` but share the store, limits, penalties and
    connection counts. Starting the first listener starts the shared factory."""

    def __init__(self, imap: IMAPServerFactory, policy: ListenerPolicy) -> None:
        self.imap = imap
        self.policy = policy

    def doStart(self) -> None:
        self.imap.doStart()

    def doStop(self) -> None:
        self.imap.doStop()

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return IMAPServerProtocol(self.imap, self.policy)
