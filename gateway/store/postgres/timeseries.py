"""The :class:`~gateway.store.timeseries.TimeSeries` on PostgreSQL: the ``timeseries_point``
table (schema version 2) in the store's database, through the store's pool.

Same semantics as :mod:`gateway.store.sqlite_timeseries` (recording a point at a time the
series has replaces it; thinning by :func:`~gateway.store.timeseries.thinned`); every
write is one transaction. Calls are round trips: make them off the reactor thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.postgres.connection import PGConnection
from gateway.store.timeseries import (
    Point,
    Retention,
    thin_cutoff,
    thinned,
    validate_point,
    validate_series,
)


class PGTimeSeries:
    """Points in ``timeseries_point``, on ``store``'s connections (it stays the owner:
    close the store, not this)."""

    def __init__(self, store: PGConnection, retention: Retention | None = None) -> None:
        self.retention = retention if retention is not None else Retention()
        self._store = store

    def record(self, series: str, points: Sequence[Point]) -> None:
        validate_series(series)
        for point in points:
            validate_point(point)
        if not points:
            return
        with self._store._write() as (cur, _changed):
            cur.executemany(
                "INSERT INTO timeseries_point (series, at, value) VALUES (%s, %s, %s)"
                " ON CONFLICT (series, at) DO UPDATE SET value = excluded.value",
                [(series, float(p.at), float(p.value)) for p in points],
            )

    def read(self, series: str, start: float, end: float) -> list[Point]:
        with self._store._cursor() as cur:
            cur.execute(
                "SELECT at, value FROM timeseries_point WHERE series = %s AND at >= %s"
                " AND at < %s ORDER BY at",
                (series, float(start), float(end)),
            )
            return [Point(at, value) for at, value in cur.fetchall()]

    def latest(self, series: str, at_or_before: float | None = None) -> Point | None:
        bound = float("inf") if at_or_before is None else float(at_or_before)
        with self._store._cursor() as cur:
            cur.execute(
                "SELECT at, value FROM timeseries_point WHERE series = %s AND at <= %s"
                " ORDER BY at DESC LIMIT 1",
                (series, bound),
            )
            row = cur.fetchone()
        return Point(row[0], row[1]) if row is not None else None

    def series_names(self, prefix: str = "") -> list[str]:
        with self._store._cursor() as cur:
            cur.execute('SELECT DISTINCT series COLLATE "C" AS s FROM timeseries_point ORDER BY s')
            return [name for (name,) in cur.fetchall() if name.startswith(prefix)]

    def thin(self, now: float) -> int:
        """Only points older than the first tier can go, so only those are read."""
        cutoff = thin_cutoff(now, self.retention)
        removed = 0
        with self._store._write() as (cur, _changed):
            cur.execute(
                "SELECT series, at, value FROM timeseries_point WHERE at < %s"
                " ORDER BY series, at FOR UPDATE",
                (cutoff,),
            )
            old: dict[str, list[Point]] = {}
            for name, at, value in cur.fetchall():
                old.setdefault(name, []).append(Point(at, value))
            gone: list[tuple[str, float]] = []
            for name, points in old.items():
                kept = {p.at for p in thinned(points, now, self.retention)}
                gone.extend((name, p.at) for p in points if p.at not in kept)
            if gone:
                cur.executemany("DELETE FROM timeseries_point WHERE series = %s AND at = %s", gone)
            removed = len(gone)
        return removed
