"""Assembling the running gateway from a validated config: store, IMAP and ManageSieve
listeners, upstream pollers with Sieve at ingest.

This is the thin Twisted glue: everything it wires together takes its reactor and
collaborators as arguments, so tests build the same service on a private reactor.
``Options``/``makeService`` are what the twistd plugin (twisted/plugins/popgate.py) calls.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from twisted.application import service
from twisted.internet import defer
from twisted.python import usage

from gateway.access.filtering import SieveDelivery, upstream_address
from gateway.access.households import SHARED_PREFIX, shared_owner
from gateway.access.quota import DeliveryQuotaGuard, Quotas
from gateway.app import config as configmod
from gateway.app.config.listeners import served_listeners
from gateway.app.config.sending import relay_wanted
from gateway.app.reloading import (
    SighupReload,
    add_reload_hook,
    provision,
    reload,
    shared_reloader,
    users_reloader,
)
from gateway.app.shutdown import GatewayService, StopSignals
from gateway.app.storage import (
    KnownSourcesOffReactor,
    open_store,
    ownership_factory,
    prepare_state_dir,
    push_changes,
)
from gateway.imap.tracefile import TRACE_DIR
from gateway.security.auth import PasswordTable

__all__ = ["add_reload_hook", "build_service", "makeService", "provision", "reload"]
"""``reload`` and ``add_reload_hook`` live in :mod:`gateway.app.reloading`; they are
re-exported here for the callers that build a service and reload it."""

log = structlog.get_logger(__name__)

"""Told the freshly re-read config on SIGHUP (see :func:`reload`)."""


def password_threads() -> int:
    """Threads that check passwords: one per CPU. scrypt (gateway/security/passwords.py) takes
    16 MB and one CPU per check, so more threads than CPUs only raise peak memory (200
    simultaneous logins on the reactor's 10-thread default pool peak at ~160 MB of
    hashing) without finishing any check sooner; the rest queue in arrival order."""
    return max(1, os.cpu_count() or 1)


class ThreadPoolService(service.Service):
    """Starts a private thread pool with the service and stops it when the service stops;
    work queued before the start runs once it has started.

    Stopping never blocks the reactor: work still queued is dropped (its caller gets
    ``CancelledError``: a login whose connection is about to close), and the pool's
    threads are joined on a helper thread, the returned Deferred firing once the calls
    already running have ended (the gateway's stop bounds the wait:
    ``gateway.app.shutdown.STOP_TIMEOUT``)."""

    def __init__(self, pool: Any, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor
        self._closing = False

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the pool; a Deferred of its result."""
        from twisted.internet.threads import deferToThreadPool

        def unless_stopping() -> Any:
            if self._closing:
                raise defer.CancelledError()
            return fn(*args, **kwargs)

        return deferToThreadPool(self.reactor, self.pool, unless_stopping)

    def startService(self) -> None:
        super().startService()
        self._closing = False
        self.pool.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._closing = True
        joined: defer.Deferred[None] = defer.Deferred()

        def join() -> None:
            self.pool.stop()  # joins the threads: off the reactor thread
            self.reactor.callFromThread(lambda: joined.called or joined.callback(None))

        threading.Thread(target=join, name=f"{self.pool.name}-stop", daemon=True).start()
        return joined


STORE_THREADS = 4
"""Threads (and so PostgreSQL connections) for store calls when the store does not run
inline: IMAP command steps, fetcher deliveries, status. A call holds its thread for one
round trip or one transaction, so a few threads serve many sessions. Four, not more:
the steps' Python work takes the GIL in turns with the reactor whatever the count, and
under the 50-client mix eight threads only queued for it (reactor lag p99 ~50 ms with
eight, ~15 ms with four, for the same throughput; bench/README.md, "PostgreSQL mode").
The GIL's switch interval stays 5 ms: at 1, 0.5 or 0.2 ms the mix's p99 was no shorter
(CPU per command up to 15% more), at 20 ms the same ("PostgreSQL mix tail, session 6")."""


def _store_threads(top: service.MultiService, store: Any, reactor: Any) -> Any:
    """For a store that does not run inline (PostgreSQL): a bounded thread pool in the
    service tree (stopped, waiting for the calls in progress, before the store, which
    stops last), and listeners handed to the reactor thread. None for an
    inline store (SQLite): its calls stay on the reactor thread."""
    from twisted.python.threadpool import ThreadPool

    from gateway.store.runner import ThreadRunner

    if getattr(store, "runs_inline", True):
        return None
    pool = ThreadPool(minthreads=0, maxthreads=STORE_THREADS, name="store")
    ThreadPoolService(pool, reactor).setServiceParent(top)
    store.set_dispatcher(reactor.callFromThread)

    def guard_reactor_thread() -> None:  # a call that slipped onto the reactor is logged
        store.guard_raises = False
        store.forbidden_thread = threading.get_ident()

    reactor.callFromThread(guard_reactor_thread)
    return ThreadRunner(reactor, pool)


class KeyHolderService(service.Service):
    """Stops the verifier cache's key holder (gateway/security/authcache.py) with the
    gateway: its key, and so every cached tag, is gone for good."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder

    def stopService(self) -> None:
        super().stopService()
        self.holder.close()


def _verifier_cache(top: service.MultiService, cfg: configmod.Config) -> Any:
    """The cache of successful password checks (``[security] auth_cache_size``, 0: none),
    its key holder stopped with the gateway."""
    from gateway.security.authcache import cache_from_settings

    cache, holder = cache_from_settings(cfg.security.auth_cache_size, cfg.security.auth_cache_ttl)
    if holder is not None:
        KeyHolderService(holder).setServiceParent(top)
    return cache


class StoreService(service.Service):
    """Closes the store when the service stops: last, after everything that uses it has
    stopped (``stop_last``: see gateway/app/shutdown.py, GatewayService)."""

    stop_last = True

    def __init__(self, store: Any) -> None:
        self.store = store

    def stopService(self):
        super().stopService()
        self.store.close()


def build_service(
    cfg: configmod.Config, reactor: Any, *, store: Any = None
) -> service.MultiService:
    """The whole gateway as one MultiService; ``store`` may be passed in (the demo does)."""
    from twisted.python.threadpool import ThreadPool

    from gateway.imap.factory import IMAPServerFactory
    from gateway.imap.policy import IMAPLimits
    from gateway.store.runner import runner_for

    top = GatewayService(reactor)
    top.config = cfg  # type: ignore[attr-defined]
    top.reload_hooks = []  # type: ignore[attr-defined]
    metrics = _new_metrics(reactor)
    store = store if store is not None else open_store(cfg, pool_size=STORE_THREADS)
    StoreService(store).setServiceParent(top)
    store_threads = _store_threads(top, store, reactor)
    push_changes(top, store, reactor)
    store_runner = runner_for(store, store_threads)
    top.store_runner = store_runner  # type: ignore[attr-defined]
    provision(store_runner, store, list(cfg.users))
    authenticator = PasswordTable(
        {u.name: u.password_hash for u in cfg.users.values()}, cache=_verifier_cache(top, cfg)
    )

    # Password checks get their own small pool (see password_threads), so that a burst
    # of logins bounds its hashing memory and leaves the reactor's pool to the rest.
    # Added right after the store: it stops after the listeners, before the store.
    password_pool = ThreadPool(minthreads=0, maxthreads=password_threads(), name="passwords")
    passwords = ThreadPoolService(password_pool, reactor)
    passwords.setServiceParent(top)
    run_blocking = passwords.run

    limits = IMAPLimits(
        max_line_length=cfg.limits.max_line_length,
        max_literal_size=cfg.limits.max_message_size,
        max_pipelined_commands=cfg.limits.max_pipelined_commands,
        prelogin_timeout=cfg.limits.prelogin_timeout,
        idle_timeout=cfg.limits.idle_timeout,
        idle_command_timeout=cfg.limits.idle_command_timeout,
        max_connections_per_user_ip=cfg.security.max_connections_per_user_ip,
        max_connections_per_ip=cfg.security.max_connections_per_ip,
    )
    known_sources = store
    if not store_runner.inline:
        # The penalty asks on the reactor thread: a cache filled off it, writes sent off it.
        known_sources = KnownSourcesOffReactor(store, store_runner)
        known_sources.load(list(cfg.users))
    server_tls, penalty = _security_parts(cfg, reactor, known_sources)
    pollers: dict[str, Any] = {}
    quotas = Quotas(quota_limits(cfg))
    # The fetcher's ledger: each owner's Sieve script routes the message (issue 16), then
    # the quota guard (over quota: held upstream), then the store.
    delivery_store = SieveDelivery(
        DeliveryQuotaGuard(store, quotas),
        store,
        store,
        addresses={u.name: upstream_address(u.username) for u in cfg.upstreams},
        clock=reactor.seconds,
    )
    token_sources: dict[str, Any] = {}  # shared with the SMTP relay (XOAUTH2)
    if cfg.upstreams:
        _add_pollers(
            cfg,
            reactor,
            pollers,
            token_sources,
            store=store,
            delivery_store=delivery_store,
            fetch_runner=runner_for(delivery_store, store_threads),
            store_runner=store_runner,
            wrap_fetch=metrics.wrap_fetch,
            ownership=ownership_factory(cfg, store, store_threads, reactor),
        )

    def on_activity(user: str, mailbox: str) -> None:
        """Fetch on demand: a client looking at a mailbox an upstream delivers into
        asks that upstream now (the poller debounces and spaces the passes). A member
        looking at ``Shared/NAME/...`` asks the upstreams of that shared tree."""
        owner, folder = shared_target(mailbox) or (user, mailbox)
        for upstream in cfg.upstreams:
            if upstream.owner == owner and upstream.folder == folder:
                pollers[upstream.name].trigger()

    factory = IMAPServerFactory(
        store,
        authenticator,
        reactor=reactor,
        run_blocking=run_blocking,
        limits=limits,
        activity=on_activity,
        tls_context_factory=server_tls,
        allow_plaintext_auth=False,
        penalty=penalty,
        spool_dir=prepare_state_dir(os.path.join(cfg.state_dir, "spool")),  # large literals
        directory=authenticator,
        store_runner=store_runner,
        group_commit=True,  # SQLite: the commands' fsyncs off the reactor
        flag_fsync=cfg.store.flag_fsync,
    )
    factory.households.update({name: s.members for name, s in cfg.shared.items()})
    factory.quotas = quotas
    trace_root = Path(cfg.state_dir) / TRACE_DIR
    factory.set_trace_users(frozenset(cfg.trace_users), trace_root)
    provision(store_runner, store, [shared_owner(name) for name in cfg.shared])
    for poller in pollers.values():
        poller.setServiceParent(top)
    # `popgate fetch`: the "fetch" command on the control socket (gateway/app/control.py).
    from gateway.app.fetchcmd import fetch_handler

    control = control_service(top, cfg, reactor)
    control.register("fetch", fetch_handler(pollers))
    _add_listeners(top, cfg, factory, server_tls, reactor)
    from gateway.app.sievecmd import add_managesieve, sieve_run_handler

    top.managesieve_factory = add_managesieve(  # type: ignore[attr-defined]
        top, cfg, store, authenticator, server_tls, penalty, reactor, password_pool
    )
    control.register("sieve-run", sieve_run_handler(store, delivery_store, reactor, store_runner))
    top.store = store  # type: ignore[attr-defined]
    top.password_pool = password_pool  # type: ignore[attr-defined]
    top.imap_factory = factory  # type: ignore[attr-defined]
    top.pollers = pollers  # type: ignore[attr-defined]
    top.control = control  # type: ignore[attr-defined]
    _serve_metrics(top, cfg, reactor, metrics, factory, pollers, store)
    _serve_status(top, cfg, reactor, factory, pollers, store)
    # Sending mail (issue 15): the submission relay, its queue, Sent copies and bounces;
    # its modules are imported only when the config has something to send with.
    top.sending = None  # type: ignore[attr-defined]
    if relay_wanted(cfg):
        from gateway.app.sending import build_sending

        top.sending = build_sending(  # type: ignore[attr-defined]
            top,
            cfg,
            reactor,
            store=store,
            authenticator=authenticator,
            run_blocking=run_blocking,
            penalty=penalty,
            server_tls=server_tls,
            imap_factory=factory,
            token_sources=token_sources,
            sieve_delivery=delivery_store,
            runner=store_runner,
        )
    top.status.sending = top.sending  # type: ignore[attr-defined]
    top.metrics.sending = top.sending  # type: ignore[attr-defined]

    # The household's web page (issue 18): IMAP's password table, pool and penalty.
    from gateway.app.website import serve_web

    top.web = serve_web(  # type: ignore[attr-defined]
        top,
        cfg,
        reactor,
        authenticator=authenticator,
        run_blocking=run_blocking,
        penalty=penalty,
        pollers=pollers,
        households=factory.households,
        quotas=quotas,
        store=store,
        status=top.status,  # type: ignore[attr-defined]
        server_tls=server_tls,
        add_reload_hook=add_reload_hook,
    )
    add_reload_hook(top, "users", users_reloader(authenticator, store, store_runner))
    add_reload_hook(top, "shared", shared_reloader(factory.households, store, store_runner))
    add_reload_hook(top, "quotas", lambda new: quotas.update(quota_limits(new)))
    # After users and households: sessions that lost access end (IDLE at once, others
    # at their next command; gateway/imap/session.py).
    add_reload_hook(top, "sessions", lambda _new: factory.access_changed())
    add_reload_hook(
        top, "trace", lambda new: factory.set_trace_users(frozenset(new.trace_users), trace_root)
    )
    SighupReload(top, reactor).setServiceParent(top)
    StopSignals(reactor).setServiceParent(top)
    log.info(
        "service.built",
        config=cfg.path,
        state_dir=cfg.state_dir,
        listeners=[str(listener) for listener in served_listeners(cfg)],
        users=len(cfg.users),
        upstreams=[u.name for u in cfg.upstreams],
        open_files_limit=_open_files_limit(),
    )
    return top


def _add_pollers(
    cfg: configmod.Config,
    reactor: Any,
    pollers: dict[str, Any],
    token_sources: dict[str, Any],
    *,
    store: Any,
    delivery_store: Any,
    fetch_runner: Any,
    store_runner: Any,
    wrap_fetch: Callable[[Any], Any],
    ownership: Callable[[str], Any],
) -> None:
    """One poller per upstream into ``pollers``, and the OAuth token source of each
    ``auth = "oauth2"`` upstream into ``token_sources``. The POP3 client is imported only
    for a config with upstreams, OAuth (and treq's twisted.web client) only for one with
    an OAuth upstream (issue 19, start-up)."""
    from gateway.pop3.fetcher import fetch_once
    from gateway.pop3.notifier import FailureNotifier
    from gateway.pop3.poller import UpstreamPoller

    # Where the fetcher's store calls run: SQLite inline, PostgreSQL on the store's
    # threads (gateway/store/runner.py).
    fetch_with_runner = functools.partial(fetch_once, runner=fetch_runner)
    for upstream in cfg.upstreams:
        fetch = fetch_with_runner
        if upstream.auth == "oauth2" and upstream.oauth2 is not None:
            from gateway.oauth.refresh import TokenSource
            from gateway.oauth.tokenfile import token_path
            from gateway.pop3.credentials import with_oauth_token

            # The access token is read (and refreshed) before each pass; a new sign-in
            # with `popgate oauth login` is picked up from the token file, no restart.
            tokens = TokenSource(
                upstream.name,
                upstream.oauth2,
                token_path(cfg.state_dir, upstream.name),
                reactor=reactor,
            )
            fetch = with_oauth_token(fetch_with_runner, tokens)
            token_sources[upstream.name] = tokens
        # Notices go to the raw store: an over-quota owner still learns that fetching broke.
        notifier = FailureNotifier(upstream, store, cfg.state_dir, runner=store_runner)
        pollers[upstream.name] = UpstreamPoller(
            upstream,
            delivery_store,
            reactor=reactor,
            fetch=wrap_fetch(fetch),
            notifier=notifier,
            ownership=ownership(upstream.name),
        )


def _open_files_limit() -> int | None:
    """The soft limit on file descriptors: one per connection (README, "Limits")."""
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None


@functools.cache
def _version() -> str:
    """popgate's installed version, looked up once (the metrics and status both show it;
    each ``importlib.metadata`` lookup scans every ``sys.path`` entry)."""
    try:
        from importlib.metadata import version

        return version("popgate")
    except Exception:  # running from a checkout that is not installed
        return "unknown"


def _new_metrics(reactor: Any):
    from gateway.app.metrics import GatewayMetrics
    from gateway.imap.states import COMMANDS

    return GatewayMetrics(reactor=reactor, known_commands=COMMANDS, version=_version)


def _serve_metrics(top, cfg, reactor, metrics, factory, pollers, store) -> None:
    """Count IMAP work and fetch passes always (cheap); serve /metrics only when
    ``[metrics] enabled`` (off by default, loopback by default)."""
    from gateway.app.metrics import LagMonitor

    lag = LagMonitor(reactor=reactor)
    lag.setServiceParent(top)
    factory.observer = metrics
    metrics.attach(
        factory=factory, pollers=pollers, store_path=getattr(store, "path", None), lag=lag
    )
    top.metrics = metrics  # type: ignore[attr-defined]
    if cfg.metrics.enabled:
        from twisted.application import strports

        from gateway.app.metrics_http import metrics_site  # twisted.web: only when served

        site = metrics_site(metrics, reactor)
        strports.service(cfg.metrics.listen, site, reactor=reactor).setServiceParent(top)
        log.info("metrics.enabled", listen=cfg.metrics.listen)


def control_service(top: service.MultiService, cfg: configmod.Config, reactor: Any):
    """The gateway's one control socket service (``{state_dir}/control.sock``), created
    the first time a feature asks for it; every command registers on it."""
    from gateway.app.control import SOCKET_NAME, ControlService

    try:
        return top.getServiceNamed(ControlService.name)
    except KeyError:
        pass
    control = ControlService(prepare_state_dir(cfg.state_dir) / SOCKET_NAME, reactor=reactor)
    control.setServiceParent(top)
    return control


def _serve_status(top, cfg, reactor, factory, pollers, store) -> None:
    """``popgate status``: the ``status`` command on the control socket."""
    from gateway.access.households import shared_owner
    from gateway.app import logs
    from gateway.app.status import StatusSource

    control = control_service(top, cfg, reactor)
    source = StatusSource(
        reactor=reactor,
        version=_version,
        config_path=cfg.path,
        state_dir=cfg.state_dir,
        served_listeners=[(s.kind, s.endpoint) for s in served_listeners(cfg)],
        factory=factory,
        pollers=pollers,
        store_path=getattr(store, "path", None),
        recent_errors=logs.RECENT_ERRORS.snapshot,
        metrics_listener=cfg.metrics.listen if cfg.metrics.enabled else None,
        control_path=control.path,
        store=store,
        runner=getattr(top, "store_runner", None),
        owners=lambda: [
            *factory.authenticator.users(),
            *(shared_owner(g) for g in sorted(factory.households.groups)),
        ],
    )
    control.register("status", source.handle)
    top.status = source  # type: ignore[attr-defined]


def quota_limits(cfg: configmod.Config) -> dict[str, int]:
    """Storage limits by store owner from ``quota`` in [users.NAME] and [shared.NAME]."""
    limits = {u.name: u.quota for u in cfg.users.values() if u.quota is not None}
    limits.update(
        {shared_owner(s.name): s.quota for s in cfg.shared.values() if s.quota is not None}
    )
    return limits


def shared_target(mailbox: str) -> tuple[str, str] | None:
    """``Shared/family/Bills`` → (``shared:family``, ``Bills``); None for personal names."""
    head, _, rest = mailbox.partition("/")
    if head != SHARED_PREFIX or not rest:
        return None
    group, _, folder = rest.partition("/")
    return shared_owner(group), folder or "INBOX"


class Options(usage.Options):
    """Options of ``twistd popgate``."""

    optParameters = [
        ["config", "c", "/etc/popgate/popgate.toml", "Path to the popgate TOML config file."],
    ]


def makeService(options: Options) -> service.IService:
    """twistd entry point: validate the config (exit with every problem listed) and build."""
    from twisted.internet import reactor

    from gateway.app import logs

    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        raise SystemExit(f"popgate: configuration errors:\n{e}") from None
    # twistd replaces sys.stdout with its own logger; our JSON lines go to the real stdout
    logs.configure(cfg.log_level, cfg.log_format, stream=sys.__stdout__)
    return build_service(cfg, reactor)


# ---- TLS, login penalties, listeners, SIGHUP (issue 7) --------------------------------


def _security_parts(cfg: configmod.Config, reactor: Any, store: Any) -> tuple[Any, Any]:
    """The TLS connection creator (None without ``[tls]``) and the login penalty, which
    keeps the sources users logged in from in the store (they survive a restart)."""
    from gateway.security.penalty import AuthPenalty, PenaltySettings
    from gateway.security.tls import ServerTLS, TLSConfigError, TLSFiles
    from gateway.store.known_sources import KnownSources

    server_tls = None
    if cfg.tls is not None:
        files = TLSFiles(cfg.tls.cert_file, cfg.tls.key_file, cfg.tls.min_version)
        try:
            server_tls = ServerTLS(files)
        except TLSConfigError as e:  # changed since the config was checked
            raise SystemExit(f"popgate: {cfg.path}: tls: {e}") from None
    sec = cfg.security
    penalty = AuthPenalty(
        reactor,
        PenaltySettings(
            initial_delay=sec.auth_penalty_initial,
            max_delay=sec.auth_penalty_max,
            window=sec.auth_failure_window,
            ip_budget=sec.auth_failures_per_ip,
            user_budget=sec.auth_failures_per_user,
        ),
        known_sources=store if isinstance(store, KnownSources | KnownSourcesOffReactor) else None,
    )
    return server_tls, penalty


def _add_listeners(
    top: service.MultiService, cfg: configmod.Config, factory: Any, server_tls: Any, reactor: Any
) -> None:
    """The IMAP listeners (gateway/app/listening.py) and the TLS reload hook."""
    from gateway.app.listening import add_imap_listeners

    add_imap_listeners(top, cfg, factory, server_tls, reactor)
    if server_tls is not None:
        # SIGHUP re-reads the certificate files (same paths) through reload() below.
        add_reload_hook(top, "tls", lambda _new_config: server_tls.reload())
    top.server_tls = server_tls  # type: ignore[attr-defined]
