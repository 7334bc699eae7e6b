"""Wiring the household's web page (issue 18) into the running gateway: the history
recorder, the site on every ``[server] web`` listener, and the reload of ``admins``.

The page gets the IMAP side's own collaborators, so one rule holds everywhere: the same
password table (a SIGHUP reload of ``[users]`` reaches both), the same password thread
pool and the same :class:`~gateway.security.penalty.AuthPenalty` (failures on the page
and over IMAP share one budget); "fetch now" is the poller's pass, as ``popgate fetch``;
the status is ``popgate status --json``'s dict. The history lives in the store's own
file (the ``timeseries_point`` table of :mod:`gateway.store.schema`), so it survives
restarts and ``popgate backup`` carries it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.access.quota import Quotas, usage
from gateway.app import config as configmod
from gateway.app.listening import listening_service
from gateway.store.interfaces import StoreError
from gateway.store.memory_timeseries import MemoryTimeSeries
from gateway.store.sqlite_timeseries import SQLiteTimeSeries
from gateway.store.timeseries import TimeSeries
from gateway.web.history import HistoryRecorder

if TYPE_CHECKING:
    from gateway.web.resource import WebServices

log = structlog.get_logger(__name__)


class Admins:
    """``[server] admins`` as the page reads it on every request; a reload replaces it."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def __call__(self) -> tuple[str, ...]:
        return self.names

    def reload(self, new: configmod.Config) -> None:
        if new.admins != self.names:
            log.info("web.admins_reloaded", admins=list(new.admins))
        self.names = new.admins


def history_series(store: Any) -> TimeSeries:
    """The history on the store's SQLite connection (migrated with the mail), in its
    PostgreSQL database, or in memory for a store without either (lost on restart)."""
    if not getattr(store, "runs_inline", True):
        from gateway.store.postgres.timeseries import PGTimeSeries

        return PGTimeSeries(store)
    db = getattr(store, "db", None)
    if db is not None:
        return SQLiteTimeSeries(db)
    return MemoryTimeSeries()


def _fetched(outcome: Any) -> int:
    """Messages a pass stored: its result's, or the partial result of a failed pass."""
    result = getattr(outcome.value, "result", None) if isinstance(outcome, Failure) else outcome
    return int(getattr(result, "fetched", 0) or 0)


def sample_after_passes(
    pollers: Mapping[str, Any], recorder: HistoryRecorder, reactor: Any
) -> None:
    """Record the history right after a pass that stored mail, not up to a sample
    interval later, so the page's "last 24 h" agrees with "since start" at once. Each
    poller's ``fetch`` is wrapped; the sample runs on the next reactor turn, after the
    poller has added the pass to its totals."""

    def sample() -> None:
        if not recorder.running:
            return
        try:
            recorder.sample()
        except (StoreError, OSError) as error:  # the next tick tries again
            log.warning("web.history_failed", error=str(error))

    for poller in pollers.values():

        def sampled(*args: Any, _fetch: Any = poller.fetch, **kwargs: Any) -> defer.Deferred:
            def after(outcome: Any) -> Any:
                if _fetched(outcome):
                    reactor.callLater(0, sample)
                return outcome

            return defer.maybeDeferred(_fetch, *args, **kwargs).addBoth(after)

        poller.fetch = sampled


def history_off_reactor(recorder: HistoryRecorder, runner: Any) -> None:
    """For a store that does not run inline: the recorder's store work (a sample, and a
    tick: sample and thinning) runs on a store thread, one at a time; work asked for
    while some runs is skipped (the next tick records the same totals)."""
    running: list[bool] = []

    def done(outcome: Any) -> None:
        running.clear()
        if isinstance(outcome, Failure):
            log.warning("web.history_failed", error=str(outcome.value))

    def off_reactor(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if running:
                return
            running.append(True)
            runner.run(work).addBoth(done)

        return run

    tick, record = recorder.tick, recorder.record
    recorder.tick = off_reactor(tick)  # type: ignore[method-assign]
    recorder.sample = off_reactor(record)  # type: ignore[method-assign]


def serve_web(
    top: service.MultiService,
    cfg: configmod.Config,
    reactor: Any,
    *,
    authenticator: Any,
    run_blocking: Callable[..., Any],
    penalty: Any,
    pollers: Mapping[str, Any],
    households: Any,
    quotas: Quotas,
    store: Any,
    status: Any,
    server_tls: Any,
    add_reload_hook: Callable[[service.MultiService, str, Any], None],
) -> WebServices | None:
    """Record the history (always: a page switched on later then has its past week) and
    serve the page on every ``[server] web`` listener; the page's services, or None
    when no listener is configured."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    series = history_series(store)
    recorder = HistoryRecorder(
        series,
        clock=reactor,
        fetched=lambda: {
            name: (p.health.fetched_total, p.health.bytes_total) for name, p in pollers.items()
        },
        store_sizes=lambda: {owner: usage(store, owner) for owner in status.owners()},
    )
    runner = getattr(top, "store_runner", None)
    if runner is not None and not runner.inline:
        history_off_reactor(recorder, runner)
    recorder.setServiceParent(top)
    sample_after_passes(pollers, recorder, reactor)
    top.history = recorder  # type: ignore[attr-defined]
    if not cfg.web:
        return None
    from gateway.web.resource import WebServices, web_site  # the page: only when served

    admins = Admins(cfg.admins)
    add_reload_hook(top, "admins", admins.reload)
    services = WebServices(
        authenticator=authenticator,
        run_blocking=run_blocking,
        clock=reactor,
        status=status.snapshot,  # store facts on a store thread in PostgreSQL mode
        fetch_now=lambda name: pollers[name].fetch_now(),
        admins=admins,
        households=lambda: households.groups,
        penalty=penalty,
        series=series,
        recorder=recorder,
        quota_limit=quotas.limit,
        queue_status=None,
        allow_plaintext=cfg.allow_insecure_listener,
        runner=runner,  # the page (it reads the history) built where the store runs
    )
    site = web_site(services)
    for listener in cfg.web:
        if listener.tls == "implicit":
            # HTTPS on the [tls] certificate, as IMAPS: SIGHUP's "tls" hook reloads it
            wrapped = TLSMemoryBIOFactory(server_tls, False, site)
            listening_service(reactor, listener.listen, wrapped, strict=False).setServiceParent(top)
        else:
            listening_service(reactor, listener.listen, site).setServiceParent(top)
    log.info("web.enabled", listeners=[w.endpoint for w in cfg.web], admins=list(cfg.admins))
    return services
