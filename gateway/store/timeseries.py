"""The time-series contract: small numeric histories (mail fetched, store size) that the
web page draws, kept bounded by thinning older points.

A *series* is a name (``fetched.messages:home``) and points ``(at, value)``, ``at`` in
Unix seconds. A series holds either a gauge (store size now) or a cumulative counter
(messages fetched since the series began); both survive thinning unchanged in meaning,
because thinning keeps the *last* point of each time bucket: a gauge keeps its latest
reading there, a counter its running total, so the difference between two kept points
is still the increase between them.

Bounded: :class:`Retention` keeps raw points for ``raw_for`` seconds, then at most one
point per ``tiers`` bucket, and nothing older than ``keep_for``; with samples every few
minutes a series stays under ~2,000 points whatever its age. The rule is the pure
function :func:`thinned`, which every backend applies, so they cannot disagree.
Errors are :class:`~gateway.store.interfaces.StoreError` subclasses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.store.interfaces import StoreError

HOUR = 3600.0
DAY = 24 * HOUR

MAX_SERIES_NAME = 200
"""Longest series name in characters (names are built from upstream and user names)."""


@dataclass(frozen=True)
class Tier:
    """Points older than ``older_than`` seconds are kept at most one per ``every``
    seconds (buckets aligned to multiples of ``every`` since the epoch)."""

    older_than: float
    every: float


@dataclass(frozen=True)
class Retention:
    """How a series is thinned. The defaults keep 2 days raw (the 7-day hourly picture
    needs hourly points at least), hourly points for 35 days, daily points for 400."""

    tiers: tuple[Tier, ...] = (Tier(2 * DAY, HOUR), Tier(35 * DAY, DAY))
    keep_for: float = 400 * DAY


@dataclass(frozen=True, order=True)
class Point:
    """One reading: ``at`` Unix seconds, ``value`` a finite number."""

    at: float
    value: float


class BadSeries(StoreError):
    """A series name that is empty, too long or holds control characters, or a point
    whose time or value is not a finite number."""


def validate_series(name: str) -> None:
    """Series names are printable text up to :data:`MAX_SERIES_NAME` characters."""
    if not name or len(name) > MAX_SERIES_NAME:
        raise BadSeries(f"series name must be 1-{MAX_SERIES_NAME} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        raise BadSeries("control character in series name")


def validate_point(point: Point) -> None:
    if not (math.isfinite(point.at) and math.isfinite(point.value)):
        raise BadSeries("time and value must be finite numbers")


def thinned(points: Iterable[Point], now: float, retention: Retention) -> list[Point]:
    """The points a series keeps at ``now``, sorted by time: everything newer than the
    first tier, then for each tier the last point of each bucket, and nothing older
    than ``keep_for``. Points in the future are kept as they are."""
    ordered = sorted(points)
    tiers = sorted(retention.tiers, key=lambda t: t.older_than)
    kept: list[Point] = []
    last_key: tuple[int, int] | None = None
    # Newest first, so the first point seen in a bucket is the one to keep.
    for point in reversed(ordered):
        age = now - point.at
        if age > retention.keep_for:
            continue
        tier_index = -1
        for i, tier in enumerate(tiers):
            if age > tier.older_than:
                tier_index = i
        if tier_index < 0:
            kept.append(point)
            last_key = None
            continue
        key = (tier_index, math.floor(point.at / tiers[tier_index].every))
        if key != last_key:
            kept.append(point)
            last_key = key
    kept.reverse()
    return kept


def thin_cutoff(now: float, retention: Retention) -> float:
    """Only points older than this can be dropped by :func:`thinned` at ``now`` (older
    than the youngest tier, or than ``keep_for``): what a backend needs to read to thin."""
    youngest_tier = min((t.older_than for t in retention.tiers), default=None)
    horizon = retention.keep_for if youngest_tier is None else youngest_tier
    return now - min(horizon, retention.keep_for)


class TimeSeries(Protocol):
    """Named numeric series. Writes are atomic; recording a point at a time the series
    already has replaces its value."""

    retention: Retention

    def record(self, series: str, points: Sequence[Point]) -> None:
        """Add points to one series (BadSeries for a bad name or point; then nothing
        is written)."""

    def read(self, series: str, start: float, end: float) -> list[Point]:
        """The points with ``start <= at < end``, oldest first (empty for an unknown
        series)."""

    def latest(self, series: str, at_or_before: float | None = None) -> Point | None:
        """The newest point (no later than ``at_or_before`` when given), or None."""

    def series_names(self, prefix: str = "") -> list[str]:
        """Names of the series that hold points, sorted, those starting with ``prefix``."""

    def thin(self, now: float) -> int:
        """Apply :func:`thinned` to every series; returns how many points went."""
