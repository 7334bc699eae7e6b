"""An in-memory :class:`~gateway.store.timeseries.TimeSeries`: for tests and the demo, and
the reference the contract suite holds the SQLite backend to."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from gateway.store.timeseries import (
    Point,
    Retention,
    thinned,
    validate_point,
    validate_series,
)


class MemoryTimeSeries:
    """Each series a sorted list of points. Single-threaded like the reactor using it."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention if retention is not None else Retention()
        self._series: dict[str, list[Point]] = {}

    def record(self, series: str, points: Sequence[Point]) -> None:
        validate_series(series)
        for point in points:
            validate_point(point)
        if not points:
            return
        by_time = {p.at: p for p in self._series.get(series, [])}
        for point in points:
            by_time[float(point.at)] = Point(float(point.at), float(point.value))
        self._series[series] = sorted(by_time.values())

    def read(self, series: str, start: float, end: float) -> list[Point]:
        points = self._series.get(series, [])
        lo = bisect.bisect_left(points, start, key=lambda p: p.at)
        hi = bisect.bisect_left(points, end, key=lambda p: p.at)
        return list(points[lo:hi])

    def latest(self, series: str, at_or_before: float | None = None) -> Point | None:
        points = self._series.get(series, [])
        if at_or_before is None:
            return points[-1] if points else None
        i = bisect.bisect_right(points, at_or_before, key=lambda p: p.at)
        return points[i - 1] if i else None

    def series_names(self, prefix: str = "") -> list[str]:
        return sorted(n for n, pts in self._series.items() if pts and n.startswith(prefix))

    def thin(self, now: float) -> int:
        removed = 0
        for name in list(self._series):
            kept = thinned(self._series[name], now, self.retention)
            removed += len(self._series[name]) - len(kept)
            if kept:
                self._series[name] = kept
            else:
                del self._series[name]
        return removed
