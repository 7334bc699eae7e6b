"""Prometheus metrics: the counters popgate keeps and the text endpoint that exposes them.

Why not prometheus-client: popgate needs a dozen families, one exposition format and an
HTTP endpoint; Twisted already ships the HTTP server (``twisted.web``) and the format is
small and fully specified (Prometheus "text exposition format 0.0.4"). Writing it here
keeps the dependency list at four packages for a program that runs unattended for years,
and lets gauges be computed at scrape time from the objects that own the facts (the
IMAP factory's live connections, each poller's health, the store file), with no second
copy to keep in sync.

What is counted, and where it comes from:

* IMAP: :class:`GatewayMetrics` is the IMAP server factory's ``observer``
  (``connection_opened``/``connection_closed``/``command_done``); sessions by state are
  read from the factory's live protocols at scrape time.
* POP3: :meth:`GatewayMetrics.wrap_fetch` wraps the poller's fetch function, so every
  pass's :class:`~gateway.pop3.fetcher.FetchResult` (or failure) is counted per upstream.
* The store file size, and the reactor's lag, measured by a :class:`LagMonitor`
  (a ``LoopingCall`` that notes how late it runs).

The endpoint is off by default and, when on, listens on loopback by default
(``[metrics] listen``): the numbers reveal user names and upstream names.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from twisted.application import service
from twisted.internet import defer, task
from twisted.web import pages, resource, server

log = structlog.get_logger(__name__)

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
"""The media type of the text exposition format, version 0.0.4."""

COMMAND_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Upper bounds (seconds) of the IMAP command latency histogram. IDLE is left out of it:
its "latency" is how long the client chose to wait."""

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


# ---- the exposition format ---------------------------------------------------------------


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed are escaped (format 0.0.4)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """Label values: backslash, double quote and line feed are escaped (format 0.0.4)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Go's ParseFloat reads it: ``+Inf``, ``-Inf``, ``NaN`` or a number."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def format_labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{escape_label_value(str(value))}"' for name, value in labels)
    return "{" + inner + "}"


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: ``name{labels} value``."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    """A metric family: one HELP and one TYPE line, then its samples (all of one name
    prefix, as the format requires them to be grouped)."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: tuple[Sample, ...]


def exposition(families: Iterable[Family]) -> bytes:
    """The text exposition (format 0.0.4) of ``families``, ending with a line feed."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for s in family.samples:
            lines.append(f"{s.name}{format_labels(s.labels)} {format_value(s.value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---- metric kinds ------------------------------------------------------------------------


class _Metric:
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _pairs(self, key: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.labelnames, key, strict=True))


class _Scalar(_Metric):
    """One number per label set (counters and gauges)."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def family(self) -> Family:
        with self._lock:
            items = sorted(self._values.items())
        return Family(
            self.name,
            self.kind,
            self.help,
            tuple(Sample(self.name, self._pairs(k), v) for k, v in items),
        )


class Counter(_Scalar):
    """A monotonically increasing total; the name should end in ``_total``."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)


class Gauge(_Scalar):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: str) -> float | None:
        return self._values.get(self._key(labels))


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with ``_sum`` and ``_count``."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help, labelnames)
        if "le" in self.labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError("buckets must be distinct and non-empty")
        self.buckets = tuple(bounds)
        # per label set: counts per finite bucket (not cumulative), +Inf count, sum
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        data = self._data.get(self._key(labels))
        return sum(data[0]) if data else 0

    def family(self) -> Family:
        samples: list[Sample] = []
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            pairs = self._pairs(key)
            running = 0
            for bound, n in zip(self.buckets, counts, strict=False):
                running += n
                samples.append(
                    Sample(f"{self.name}_bucket", (*pairs, ("le", format_value(bound))), running)
                )
            running += counts[-1]
            samples.append(Sample(f"{self.name}_bucket", (*pairs, ("le", "+Inf")), running))
            samples.append(Sample(f"{self.name}_sum", pairs, total))
            samples.append(Sample(f"{self.name}_count", pairs, running))
        return Family(self.name, self.kind, self.help, tuple(samples))


def gauge_family(name: str, help: str, values: Iterable[tuple[dict[str, str], float]]) -> Family:
    """A gauge family computed at scrape time from ``(labels, value)`` pairs."""
    samples = tuple(
        Sample(name, tuple(sorted(labels.items())), float(value)) for labels, value in values
    )
    return Family(name, "gauge", help, samples)


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
        self.histogram = Histogram(
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
        version: str = "unknown",
    ) -> None:
        self.reactor = reactor
        self.version = version
        self.known_commands = frozenset(known_commands)
        self.started_at = reactor.seconds()
        self.factory: Any = None
        self.pollers: dict[str, Any] = {}
        self.store_path: Path | None = None
        self.lag: LagMonitor | None = None
        self._backlog: dict[str, int] = {}
        self._last_success: dict[str, float] = {}

        self.connections = Counter("popgate_imap_connections_total", "IMAP connections accepted.")
        self.commands = Counter(
            "popgate_imap_commands_total",
            "IMAP commands answered, by command name and tagged status (OK, NO, BAD).",
            ("command", "status"),
        )
        self.command_seconds = Histogram(
            "popgate_imap_command_duration_seconds",
            "Time from parsing an IMAP command to its tagged completion (IDLE excluded).",
            COMMAND_BUCKETS,
            ("command",),
        )
        self.auth_failures = Counter(
            "popgate_imap_auth_failures_total", "Failed IMAP LOGIN/AUTHENTICATE attempts."
        )
        self.fetch_passes = Counter(
            "popgate_fetch_passes_total",
            'POP3 fetch passes per upstream by result ("ok" or the error kind).',
            ("upstream", "result"),
        )
        self.fetch_seconds = Histogram(
            "popgate_fetch_duration_seconds",
            "Duration of POP3 fetch passes per upstream.",
            FETCH_BUCKETS,
            ("upstream",),
        )
        self.fetched_messages = Counter(
            "popgate_fetched_messages_total",
            "Messages fetched from each upstream and stored.",
            ("upstream",),
        )
        self.fetched_bytes = Counter(
            "popgate_fetched_bytes_total",
            "Octets of messages fetched from each upstream and stored.",
            ("upstream",),
        )
        self.skipped_messages = Counter(
            "popgate_skipped_messages_total",
            "Messages an upstream listed that popgate skipped (too large, lines too long).",
            ("upstream",),
        )
        self.deleted_messages = Counter(
            "popgate_deleted_messages_total",
            "Messages deleted on each upstream by policy (keep_on_server = false).",
            ("upstream",),
        )

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
        self.commands.inc(command=label, status=status)
        if label not in UNTIMED_COMMANDS:
            self.command_seconds.observe(seconds, command=label)
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
        self.fetch_passes.inc(upstream=name, result=result)
        self.fetch_seconds.observe(max(0.0, now - started), upstream=name)
        if result == "ok":
            self._last_success[name] = now
        if counts is None or not hasattr(counts, "fetched"):
            return
        self.fetched_messages.inc(counts.fetched, upstream=name)
        self.fetched_bytes.inc(counts.bytes, upstream=name)
        self.skipped_messages.inc(counts.skipped, upstream=name)
        self.deleted_messages.inc(counts.deleted, upstream=name)
        self._backlog[name] = max(0, int(getattr(counts, "backlog", 0) or 0))

    # -- the scrape --

    def families(self) -> Iterator[Family]:
        now = self.reactor.seconds()
        yield gauge_family(
            "popgate_build_info",
            "Always 1; the version label says which popgate runs.",
            [({"version": self.version}, 1)],
        )
        yield gauge_family(
            "popgate_start_time_seconds",
            "When this popgate process started (Unix time).",
            [({}, self.started_at)],
        )
        yield self.connections.family()
        yield gauge_family(
            "popgate_imap_sessions",
            "Open IMAP connections by session state (RFC 3501 §3).",
            self._sessions_by_state(),
        )
        yield self.commands.family()
        yield self.command_seconds.family()
        yield self.auth_failures.family()
        yield self.fetch_passes.family()
        yield self.fetch_seconds.family()
        yield self.fetched_messages.family()
        yield self.fetched_bytes.family()
        yield self.skipped_messages.family()
        yield self.deleted_messages.family()
        yield from self._upstream_families(now)
        if self.store_path is not None:
            yield gauge_family(
                "popgate_store_size_bytes",
                "Size of the SQLite store (main file plus write-ahead log).",
                [({}, file_size(self.store_path))],
            )
        if self.lag is not None:
            yield gauge_family(
                "popgate_reactor_lag_last_seconds",
                "Lateness of the most recent reactor lag probe.",
                [({}, self.lag.last_lag)],
            )
            yield self.lag.histogram.family()

    def _sessions_by_state(self) -> list[tuple[dict[str, str], float]]:
        states = ("not authenticated", "authenticated", "selected", "logout")
        counts = dict.fromkeys(states, 0)
        for protocol in list(getattr(self.factory, "protocols", ())):
            state = getattr(getattr(protocol, "session", None), "state", None)
            value = getattr(state, "value", None)
            if value in counts:
                counts[value] += 1
        return [({"state": s.replace(" ", "_")}, n) for s, n in counts.items()]

    def _upstream_families(self, now: float) -> Iterator[Family]:
        last_success, failures, backlogs, next_poll = [], [], [], []
        names = set(self.pollers) | set(self._backlog) | set(self._last_success)
        for name in sorted(names):
            health = getattr(self.pollers.get(name), "health", None)
            labels = {"upstream": name}
            success = self._last_success.get(name)
            if success is None and health is not None:
                success = health.last_success
            if success is not None:
                last_success.append((labels, success))
            if health is not None:
                failures.append((labels, health.consecutive_failures))
                if health.next_poll_at is not None:
                    next_poll.append((labels, health.next_poll_at))
            if name in self._backlog:
                backlogs.append((labels, self._backlog[name]))
        yield gauge_family(
            "popgate_upstream_last_success_timestamp_seconds",
            "When the last fetch pass of each upstream succeeded (Unix time).",
            last_success,
        )
        yield gauge_family(
            "popgate_upstream_consecutive_failures",
            "Fetch passes in a row that failed, per upstream (0 when healthy).",
            failures,
        )
        yield gauge_family(
            "popgate_upstream_next_poll_timestamp_seconds",
            "When the next fetch pass of each upstream is due (Unix time).",
            next_poll,
        )
        yield gauge_family(
            "popgate_upstream_backlog_messages",
            "New messages the upstream listed at its last pass that the pass did not store "
            "(non-zero after an interrupted pass).",
            backlogs,
        )

    def render(self) -> bytes:
        return exposition(self.families())


# ---- the HTTP endpoint -------------------------------------------------------------------


class MetricsResource(resource.Resource):
    """``GET /metrics``: the exposition. Read-only, no state changes, no query arguments."""

    isLeaf = True

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        try:
            body = self.metrics.render()
        except Exception:
            log.exception("metrics.render_failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"internal error, see the popgate log\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return body

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class IndexResource(resource.Resource):
    """``/`` points at ``/metrics``; anything else is 404."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self.putChild(b"metrics", MetricsResource(metrics))

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if path == b"":
            return self
        return pages.notFound()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"popgate metrics: /metrics\n"


class QuietSite(server.Site):
    """A Site that writes no access log (each scrape would be a log line every 15 s)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(metrics: GatewayMetrics) -> server.Site:
    return QuietSite(IndexResource(metrics))
