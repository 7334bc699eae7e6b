"""The history behind the pictures: a recorder that samples the gateway into a
:class:`~gateway.store.timeseries.TimeSeries`, and the reads the page makes of it.

Series (names are built here only):

* ``fetched.messages:UPSTREAM`` and ``fetched.bytes:UPSTREAM``: cumulative counters of
  what the upstream delivered, across restarts;
* ``store.bytes:OWNER``: a gauge, the bytes of mail the owner keeps.

The pollers count from zero in each process, so the recorder turns their totals into
counters that survive restarts: at start it reads each series' last stored value and
adds what the poller gained since the last sample (a poller total that went down was
reset, so all of it is new). Thinning keeps the last point of each bucket, which leaves
a counter's differences right (see :mod:`gateway.store.timeseries`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import structlog
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from gateway.store.interfaces import StoreError
from gateway.store.timeseries import HOUR, Point, TimeSeries

log = structlog.get_logger(__name__)

FETCHED_MESSAGES = "fetched.messages:"
FETCHED_BYTES = "fetched.bytes:"
STORE_BYTES = "store.bytes:"

SAMPLE_INTERVAL = 300.0
"""Seconds between samples (the 7-day picture has hourly bars; 12 samples per bar)."""

THIN_INTERVAL = 6 * HOUR
"""Seconds between thinning runs."""

WEEK_HOURS = 7 * 24


class HistoryRecorder(Service):
    """Samples fetch totals and store sizes every ``interval`` seconds (and on
    :meth:`sample`, e.g. right after "fetch now") and thins the series now and then.

    ``fetched()`` returns upstream → (messages, bytes) fetched since this process
    started (the pollers' totals); ``store_sizes()`` returns owner → bytes kept.
    """

    name = "web-history"

    def __init__(
        self,
        series: TimeSeries,
        *,
        clock: IReactorTime,
        fetched: Callable[[], Mapping[str, tuple[int, int]]],
        store_sizes: Callable[[], Mapping[str, int]],
        interval: float = SAMPLE_INTERVAL,
        thin_interval: float = THIN_INTERVAL,
    ) -> None:
        self.series = series
        self.clock = clock
        self.fetched = fetched
        self.store_sizes = store_sizes
        self.interval = interval
        self.thin_interval = thin_interval
        self._seen: dict[str, tuple[int, int]] = {}
        self._totals: dict[str, tuple[float, float]] = {}
        self._last_thin: float | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        try:
            self.tick()
        except (StoreError, OSError) as error:  # the next tick tries again
            log.warning("web.history_failed", error=str(error))

    def tick(self) -> None:
        """The loop's store work: a sample, and old points thinned when that is due (the
        app may run it on a store thread: ``gateway/app/website.py``)."""
        self.record()
        now = self.clock.seconds()
        if self._last_thin is None or now - self._last_thin >= self.thin_interval:
            self._last_thin = now
            removed = self.series.thin(now)
            log.debug("web.history_thinned", removed=removed)

    def _total(self, upstream: str) -> tuple[float, float]:
        if upstream not in self._totals:
            m = self.series.latest(FETCHED_MESSAGES + upstream)
            b = self.series.latest(FETCHED_BYTES + upstream)
            self._totals[upstream] = (m.value if m else 0.0, b.value if b else 0.0)
        return self._totals[upstream]

    def sample(self) -> None:
        """Record one point per series now (the app may run it on a store thread)."""
        self.record()

    def record(self) -> None:
        """Record one point per series now, here."""
        now = self.clock.seconds()
        for upstream, (messages, octets) in sorted(self.fetched().items()):
            seen_m, seen_b = self._seen.get(upstream, (0, 0))
            gained_m = messages - seen_m if messages >= seen_m else messages
            gained_b = octets - seen_b if octets >= seen_b else octets
            total_m, total_b = self._total(upstream)
            total = (total_m + max(0, gained_m), total_b + max(0, gained_b))
            self.series.record(FETCHED_MESSAGES + upstream, [Point(now, total[0])])
            self.series.record(FETCHED_BYTES + upstream, [Point(now, total[1])])
            self._totals[upstream] = total
            self._seen[upstream] = (messages, octets)
        for owner, used in sorted(self.store_sizes().items()):
            self.series.record(STORE_BYTES + owner, [Point(now, float(used))])


# ---- reading ---------------------------------------------------------------------------


def value_at(series: TimeSeries, name: str, at: float) -> float:
    """A counter's value at ``at``: its last point then, 0 before it began."""
    point = series.latest(name, at)
    return point.value if point is not None else 0.0


def increase(series: TimeSeries, name: str, since: float, now: float) -> float:
    """How much a counter grew between ``since`` and ``now``."""
    return max(0.0, value_at(series, name, now) - value_at(series, name, since))


def step_values(points: Sequence[Point], before: float, edges: Sequence[float]) -> list[float]:
    """A counter's value at each edge, from its points (sorted) and its value ``before``
    the first edge: a step function, as thinning leaves it."""
    out = []
    value = before
    i = 0
    for edge in edges:
        while i < len(points) and points[i].at <= edge:
            value = points[i].value
            i += 1
        out.append(value)
    return out


def hourly_increments(
    series: TimeSeries, name: str, now: float, hours: int = WEEK_HOURS
) -> tuple[float, list[float]]:
    """(start, per-hour increases) of a counter over the ``hours`` whole hours up to the
    one holding ``now``: what the 7-day bar chart draws."""
    end = (math.floor(now / HOUR) + 1) * HOUR
    start = end - hours * HOUR
    edges = [start + i * HOUR for i in range(hours + 1)]
    points = series.read(name, start, end + 1)
    values = step_values(points, value_at(series, name, start), edges)
    return start, [max(0.0, b - a) for a, b in zip(values, values[1:], strict=False)]


def gauge_points(series: TimeSeries, name: str, start: float, now: float) -> list[Point]:
    """A gauge's points from ``start`` to ``now``, with its value at ``start`` carried in
    (so a line begins at the window's left edge when older history exists)."""
    before = series.latest(name, start)
    points = series.read(name, start, now + 1)
    return ([Point(start, before.value)] if before is not None else []) + points
