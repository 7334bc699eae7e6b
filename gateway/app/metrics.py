"""Prometheus metrics: the counters popgate keeps and the ``/metrics`` endpoint that serves them.

The exposition is prometheus-client's, the Prometheus project's own Python library: it
owns the text format's details (escaping of HELP text and label values, ``+Inf``/``NaN``,
histogram ``_bucket``/``_sum``/``_count`` lines), content negotiation (OpenMetrics for a
scraper that asks for it, gzip) and follows the format as it evolves, which is better
kept there than in a second copy here. Each :class:`GatewayMetrics` has its own
``CollectorRegistry`` (never the library's process-global default), so tests and several
services in one process never see each other's numbers.

What is counted, and where it comes from:

* IMAP: :class:`GatewayMetrics` is the IMAP server factory's ``observer``
  (``connection_opened``/``connection_closed``/``command_done``); sessions by state are
  read from the factory's live protocols at scrape time.
* POP3: :meth:`GatewayMetrics.wrap_fetch` wraps the poller's fetch function, so every
  pass's :class:`~gateway.pop3.fetcher.FetchResult` (or failure) is counted per upstream.
* The store file size, and the reactor's lag, measured by a :class:`LagMonitor`
  (a ``LoopingCall`` that notes how late it runs).

Gauges that describe the present (sessions, upstream health, store size, lag) are not
kept up to date: :class:`GatewayCollector` computes them at scrape time from the objects
that own the facts, so there is no second copy to keep in sync.

The endpoint is off by default and, when on, listens on loopback by default
(``[metrics] listen``): the numbers reveal user names and upstream names. Its twisted.web
site is :mod:`gateway.app.metrics_http`, imported only when the endpoint is on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.application import service
from twisted.internet import defer, task

log = structlog.get_logger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The media type of ``/metrics`` for a scraper that asks for nothing in particular: the
text exposition format, version 0.0.4."""

COMMAND_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Upper bounds (seconds) of the IMAP command latency histogram. IDLE is left out of it:
its "latency" is how long the client chose to wait."""

_COMMAND_BOUNDS = (*(floatToGoString(b) for b in COMMAND_BUCKETS), "+Inf")
"""The ``le`` labels of the command histogram, as prometheus-client writes them."""

FETCH_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
"""Upper bounds (seconds) of the per-upstream fetch pass duration histogram."""

LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
"""Upper bounds (seconds) of the reactor lag histogram."""

LAG_INTERVAL = 1.0
"""Seconds between two reactor lag probes."""

UNTIMED_COMMANDS = frozenset({"IDLE"})
"""Commands counted but not put in the latency histogram (they wait for the client)."""

OTHER_COMMAND = "OTHER"
"""Label for a command name popgate does not implement: a client cannot make the label
set grow without bound by inventing command names."""

UNPARSEABLE = "UNPARSEABLE"
"""Label for input that did not parse as a command."""

AUTH_FAILED_CODE = "AUTHENTICATIONFAILED"
"""The RFC 5530 response code of a failed LOGIN/AUTHENTICATE."""


# ---- prometheus-client metrics, collected by GatewayCollector ---------------------------


def _counter(name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
    """A counter registered nowhere on its own: :class:`GatewayCollector` collects it, so
    the exposition keeps one order and no ``_created`` series (see :func:`_without_created`)."""
    return Counter(name, help, tuple(labelnames), registry=None)


def _histogram(
    name: str, help: str, buckets: Iterable[float], labelnames: Iterable[str] = ()
) -> Histogram:
    return Histogram(name, help, tuple(labelnames), buckets=tuple(buckets), registry=None)


def _without_created(metrics: Iterable[Metric]) -> Iterator[Metric]:
    """prometheus-client adds a ``NAME_created`` timestamp series to every counter and
    histogram (an OpenMetrics idea; in the 0.0.4 text format each becomes an extra gauge
    family). popgate never exposed them and the process start time is already
    ``popgate_start_time_seconds``; dropping them here, per collector, spares the
    library's process-global ``disable_created_metrics()`` switch."""
    for metric in metrics:
        metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
        yield metric


def _gauge(name: str, help: str, values: Iterable[tuple[dict[str, str], float]]) -> Metric:
    """A gauge family computed at scrape time from ``(labels, value)`` pairs."""
    family = GaugeMetricFamily(name, help)
    for labels, value in values:
        family.add_sample(name, labels, float(value))
    return family


# ---- reactor lag -------------------------------------------------------------------------


class LagMonitor(service.Service):
    """Measures how late the reactor runs a timer: a ``LoopingCall`` every ``interval``
    seconds notes how much later than asked it actually ran. A busy or blocked reactor
    (a slow store query on the reactor thread, a CPU-starved host) shows up here before
    clients notice."""

    name = "reactor-lag"

    def __init__(self, *, reactor: Any, interval: float = LAG_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self.last_lag = 0.0
        self.histogram = _histogram(
            "popgate_reactor_lag_seconds",
            "How late the reactor ran a timer (seconds past its due time).",
            LAG_BUCKETS,
        )
        self._last: float | None = None
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._last = None
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        now = self.reactor.seconds()
        if self._last is not None:
            # Time since the previous run beyond the interval asked for; a stall that
            # made LoopingCall skip whole intervals counts in full (3.2 s reads 2.2 s).
            self.last_lag = max(0.0, now - self._last - self.interval)
            self.histogram.observe(self.last_lag)
        self._last = now


# ---- the gateway's metrics ---------------------------------------------------------------


def file_size(path: Path) -> int:
    """Bytes used by an SQLite store: the file plus its write-ahead log."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


class GatewayMetrics:
    """Every metric popgate exposes. Counters are updated by the hooks below; gauges
    describing the present (sessions, upstream health, store size) are read at scrape
    time from the objects passed to :meth:`attach`."""

    def __init__(
        self,
        *,
        reactor: Any,
        known_commands: Iterable[str] = (),
        version: str | Callable[[], str] = "unknown",
    ) -> None:
        self.reactor = reactor
        self._version = version
        self.known_commands = frozenset(known_commands)
        self.started_at = reactor.seconds()
        self.factory: Any = None
        self.pollers: dict[str, Any] = {}
        self.store_path: Path | None = None
        self.lag: LagMonitor | None = None
        self._backlog: dict[str, int] = {}
        self._last_success: dict[str, float] = {}
        self.sending: Any = None
        """The submission relay's parts (gateway.app.sending.SendingParts) or None."""
        self.registry = CollectorRegistry()
        """This gateway's own registry (not the library's process-global default)."""

        self.connections = _counter("popgate_imap_connections_total", "IMAP connections accepted.")
        self._command_counts: dict[tuple[str, str], int] = {}
        """(command label, status) → commands answered: ``popgate_imap_commands_total``."""
        self._seconds_counts: dict[str, list[int]] = {}
        """Command label → commands per bucket of :data:`COMMAND_BUCKETS` (+Inf last),
        not cumulative: ``popgate_imap_command_duration_seconds``."""
        self._seconds_sums: dict[str, float] = {}
        """Issue 19: the two command families are plain counts, turned into metric
        families at scrape time (:meth:`GatewayCollector._command_families`). Every IMAP
        command updates them on the reactor thread: a prometheus-client counter and
        histogram child took ~5 us there (a lock per value, three values), a dict
        update and a bisect well under one."""
        self.auth_failures = _counter(
            "popgate_imap_auth_failures_total", "Failed IMAP LOGIN/AUTHENTICATE attempts."
        )
        self.fetch_passes = _counter(
            "popgate_fetch_passes_total",
            'POP3 fetch passes per upstream by result ("ok" or the error kind).',
            ("upstream", "result"),
        )
        self.fetch_seconds = _histogram(
            "popgate_fetch_duration_seconds",
            "Duration of POP3 fetch passes per upstream.",
            FETCH_BUCKETS,
            ("upstream",),
        )
        self.fetched_messages = _counter(
            "popgate_fetched_messages_total",
            "Messages fetched from each upstream and stored.",
            ("upstream",),
        )
        self.fetched_bytes = _counter(
            "popgate_fetched_bytes_total",
            "Octets of messages fetched from each upstream and stored.",
            ("upstream",),
        )
        self.skipped_messages = _counter(
            "popgate_skipped_messages_total",
            "Messages an upstream listed that popgate skipped (too large, lines too long).",
            ("upstream",),
        )
        self.deleted_messages = _counter(
            "popgate_deleted_messages_total",
            "Messages deleted on each upstream by policy (keep_on_server = false).",
            ("upstream",),
        )
        self.registry.register(GatewayCollector(self))

    @property
    def version(self) -> str:
        """popgate's version for ``popgate_build_info``. Given as a callable, it is asked
        at the first scrape: the service's lookup (``importlib.metadata``) is start-up
        time that serving IMAP does not need (issue 19)."""
        if callable(self._version):
            self._version = self._version()
        return self._version

    # -- wiring --

    def attach(
        self,
        *,
        factory: Any = None,
        pollers: dict[str, Any] | None = None,
        store_path: Path | str | None = None,
        lag: LagMonitor | None = None,
    ) -> None:
        """Name the objects whose present state the scrape reads."""
        if factory is not None:
            self.factory = factory
        if pollers is not None:
            self.pollers = pollers
        if store_path is not None:
            self.store_path = Path(store_path)
        if lag is not None:
            self.lag = lag

    # -- the IMAP server factory's observer --

    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self, seconds: float) -> None:
        """Nothing to count: the live connections are read from the factory."""

    def command_done(self, name: str | None, seconds: float, status: str, code: str | None) -> None:
        """One command got its tagged completion (``name`` None: input that did not parse)."""
        base = name[4:] if name is not None and name.startswith("UID ") else name
        if name is None:
            label = UNPARSEABLE
        elif base in self.known_commands or not self.known_commands:
            label = name
        else:
            label = OTHER_COMMAND
        counts = self._command_counts
        key = (label, status)
        counts[key] = counts.get(key, 0) + 1
        if label not in UNTIMED_COMMANDS:
            buckets = self._seconds_counts.get(label)
            if buckets is None:
                buckets = self._seconds_counts[label] = [0] * (len(COMMAND_BUCKETS) + 1)
                self._seconds_sums[label] = 0.0
            # Prometheus buckets are "<= le": the first bound not below the value.
            buckets[bisect_left(COMMAND_BUCKETS, seconds)] += 1
            self._seconds_sums[label] += seconds
        if code == AUTH_FAILED_CODE:
            self.auth_failures.inc()

    # -- the pollers' fetch function --

    def wrap_fetch(self, fetch: Callable[..., defer.Deferred[Any]]) -> Callable[..., Any]:
        """``fetch`` (``fetch_once``'s signature) with every pass counted."""

        def counted(upstream: Any, store: Any, **kwargs: Any) -> defer.Deferred[Any]:
            started = self.reactor.seconds()
            d = defer.maybeDeferred(fetch, upstream, store, **kwargs)

            def ok(result: Any) -> Any:
                self._pass_done(upstream, started, "ok", result)
                return result

            def failed(failure: Any) -> Any:
                error = failure.value
                if isinstance(error, defer.CancelledError):
                    kind = "cancelled"
                else:
                    kind = str(getattr(error, "kind", "internal"))
                self._pass_done(upstream, started, kind, getattr(error, "result", None))
                return failure

            d.addCallbacks(ok, failed)
            return d

        return counted

    def _pass_done(self, upstream: Any, started: float, result: str, counts: Any) -> None:
        name = upstream.name
        now = self.reactor.seconds()
        self.fetch_passes.labels(upstream=name, result=result).inc()
        self.fetch_seconds.labels(upstream=name).observe(max(0.0, now - started))
        if result == "ok":
            self._last_success[name] = now
        if counts is None or not hasattr(counts, "fetched"):
            return
        self.fetched_messages.labels(upstream=name).inc(counts.fetched)
        self.fetched_bytes.labels(upstream=name).inc(counts.bytes)
        self.skipped_messages.labels(upstream=name).inc(counts.skipped)
        self.deleted_messages.labels(upstream=name).inc(counts.deleted)
        self._backlog[name] = max(0, int(getattr(counts, "backlog", 0) or 0))

    # -- the scrape --

    def render(self) -> bytes:
        """The text exposition (format 0.0.4) of this gateway's registry."""
        return generate_latest(self.registry)


class GatewayCollector(Collector):
    """The scrape: every family of :class:`GatewayMetrics` in one fixed order, the gauges
    that describe the present computed now from the objects that own the facts.

    ``/metrics`` is served from a thread of the reactor's pool (prometheus-client's WSGI
    app), so this reads the reactor's objects from another thread: only snapshots made by
    one C-level step (``list`` of a set, ``dict`` copies, attribute reads), never a Python
    loop over a live collection."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._families())
        except Exception:
            log.exception("metrics.render_failed")
            raise
        yield from families

    def _families(self) -> Iterator[Metric]:
        m = self.metrics
        yield _gauge(
            "popgate_build_info",
            "Always 1; the version label says which popgate runs.",
            [({"version": m.version}, 1)],
        )
        yield _gauge(
            "popgate_start_time_seconds",
            "When this popgate process started (Unix time).",
            [({}, m.started_at)],
        )
        yield from _without_created(m.connections.collect())
        yield _gauge(
            "popgate_imap_sessions",
            "Open IMAP connections by session state (RFC 3501 §3).",
            self._sessions_by_state(),
        )
        yield from self._command_families()
        for counted in (
            m.auth_failures,
            m.fetch_passes,
            m.fetch_seconds,
            m.fetched_messages,
            m.fetched_bytes,
            m.skipped_messages,
            m.deleted_messages,
        ):
            yield from _without_created(counted.collect())
        yield from self._upstream_families()
        yield from self._queue_families()
        if m.store_path is not None:
            yield _gauge(
                "popgate_store_size_bytes",
                "Size of the SQLite store (main file plus write-ahead log).",
                [({}, file_size(m.store_path))],
            )
        if m.lag is not None:
            yield _gauge(
                "popgate_reactor_lag_last_seconds",
                "Lateness of the most recent reactor lag probe.",
                [({}, m.lag.last_lag)],
            )
            yield from _without_created(m.lag.histogram.collect())

    def _command_families(self) -> Iterator[Metric]:
        """The commands counter and latency histogram from the plain counts (each dict
        copied in one step; a bucket list is copied in one step before it is read)."""
        m = self.metrics
        commands = CounterMetricFamily(
            "popgate_imap_commands",
            "IMAP commands answered, by command name and tagged status (OK, NO, BAD).",
            labels=("command", "status"),
        )
        for (label, status), count in dict(m._command_counts).items():
            commands.add_metric((label, status), float(count))
        yield commands
        seconds = HistogramMetricFamily(
            "popgate_imap_command_duration_seconds",
            "Time from parsing an IMAP command to its tagged completion (IDLE excluded).",
            labels=("command",),
        )
        sums = dict(m._seconds_sums)
        for label, live in dict(m._seconds_counts).items():
            counts = list(live)
            cumulative, total = [], 0
            for bound, count in zip(_COMMAND_BOUNDS, counts, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            seconds.add_metric((label,), cumulative, sums.get(label, 0.0))
        yield seconds

    def _sessions_by_state(self) -> list[tuple[dict[str, str], float]]:
        states = ("not authenticated", "authenticated", "selected", "logout")
        counts = dict.fromkeys(states, 0)
        for protocol in list(getattr(self.metrics.factory, "protocols", ())):
            state = getattr(getattr(protocol, "session", None), "state", None)
            value = getattr(state, "value", None)
            if value in counts:
                counts[value] += 1
        return [({"state": s.replace(" ", "_")}, n) for s, n in counts.items()]

    def _upstream_families(self) -> Iterator[Metric]:
        m = self.metrics
        pollers, backlog, last_ok = dict(m.pollers), dict(m._backlog), dict(m._last_success)
        last_success, failures, backlogs, next_poll = [], [], [], []
        for name in sorted(set(pollers) | set(backlog) | set(last_ok)):
            health = getattr(pollers.get(name), "health", None)
            labels = {"upstream": name}
            success = last_ok.get(name)
            if success is None and health is not None:
                success = health.last_success
            if success is not None:
                last_success.append((labels, success))
            if health is not None:
                failures.append((labels, health.consecutive_failures))
                if health.next_poll_at is not None:
                    next_poll.append((labels, health.next_poll_at))
            if name in backlog:
                backlogs.append((labels, backlog[name]))
        yield _gauge(
            "popgate_upstream_last_success_timestamp_seconds",
            "When the last fetch pass of each upstream succeeded (Unix time).",
            last_success,
        )
        yield _gauge(
            "popgate_upstream_consecutive_failures",
            "Fetch passes in a row that failed, per upstream (0 when healthy).",
            failures,
        )
        yield _gauge(
            "popgate_upstream_next_poll_timestamp_seconds",
            "When the next fetch pass of each upstream is due (Unix time).",
            next_poll,
        )
        yield _gauge(
            "popgate_upstream_backlog_messages",
            "New messages the upstream listed at its last pass that the pass did not store "
            "(non-zero after an interrupted pass).",
            backlogs,
        )

    def _queue_families(self) -> Iterator[Metric]:
        """The outbound queue per upstream SMTP (issue 15), read on the reactor thread
        when the queue shares an inline store's connection (SQLite), else right here on
        the scrape's pool thread (PostgreSQL: never a round trip on the reactor)."""
        sending = self.metrics.sending
        if sending is None:
            return
        from twisted.internet.threads import blockingCallFromThread
        from twisted.python.threadable import isInIOThread

        runner = getattr(sending, "runner", None)
        if isInIOThread() or (runner is not None and not runner.inline):
            rows = sending.queue.status()
        else:
            rows = blockingCallFromThread(self.metrics.reactor, sending.queue.status)
        yield _gauge(
            "popgate_outbound_queued_messages",
            "Messages waiting to be relayed, per upstream SMTP.",
            [({"upstream": r.route}, r.queued) for r in rows],
        )
        yield _gauge(
            "popgate_outbound_oldest_timestamp_seconds",
            "When the oldest message still waiting was accepted, per upstream SMTP (Unix time).",
            [({"upstream": r.route}, r.oldest) for r in rows if r.oldest is not None],
        )
        yield _gauge(
            "popgate_outbound_failing",
            "1 when the last relay attempt through this upstream SMTP failed, else 0.",
            [({"upstream": r.route}, 1 if r.last_error else 0) for r in rows],
        )
