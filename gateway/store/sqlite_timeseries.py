"""The :class:`~gateway.store.timeseries.TimeSeries` on SQLite: one table of points, keyed
by (series, time), on the store's own connection or a file of its own.

In the main store file the table is one of the store's migrations
(:mod:`gateway.store.schema` runs :data:`TIMESERIES_DDL`), so the history survives
restarts and backups with the mail; the object still creates it idempotently when built,
for a file of its own (:meth:`SQLiteTimeSeries.open`) or a bare connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gateway.store.timeseries import (
    Point,
    Retention,
    thin_cutoff,
    thinned,
    validate_point,
    validate_series,
)

TIMESERIES_DDL = """
CREATE TABLE IF NOT EXISTS timeseries_point (
    series TEXT NOT NULL,
    at REAL NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (series, at)
) WITHOUT ROWID
"""
"""The one table of the time-series store (one row per point)."""


class SQLiteTimeSeries:
    """Points in ``timeseries_point`` on ``conn``, which must be in autocommit mode
    (``isolation_level=None``, as :class:`~gateway.store.sqlite.SQLiteStore` opens it):
    each write is its own transaction. Used from one thread, like the store."""

    def __init__(self, conn: sqlite3.Connection, retention: Retention | None = None) -> None:
        self.retention = retention if retention is not None else Retention()
        self._conn = conn
        self._owned = False
        conn.execute(TIMESERIES_DDL)

    @classmethod
    def open(cls, path: str | Path, retention: Retention | None = None) -> SQLiteTimeSeries:
        """A time-series store on its own file (created if missing); :meth:`close` it."""
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        series = cls(conn, retention)
        series._owned = True
        return series

    def close(self) -> None:
        """Close the connection if :meth:`open` made it (a shared one stays open)."""
        if self._owned:
            self._conn.close()

    def record(self, series: str, points: Sequence[Point]) -> None:
        validate_series(series)
        for point in points:
            validate_point(point)
        if not points:
            return
        rows = [(series, float(p.at), float(p.value)) for p in points]
        with _transaction(self._conn):
            self._conn.executemany(
                "INSERT OR REPLACE INTO timeseries_point (series, at, value) VALUES (?, ?, ?)",
                rows,
            )

    def read(self, series: str, start: float, end: float) -> list[Point]:
        rows = self._conn.execute(
            "SELECT at, value FROM timeseries_point WHERE series = ? AND at >= ? AND at < ? "
            "ORDER BY at",
            (series, float(start), float(end)),
        )
        return [Point(at, value) for at, value in rows]

    def latest(self, series: str, at_or_before: float | None = None) -> Point | None:
        if at_or_before is None:
            row = self._conn.execute(
                "SELECT at, value FROM timeseries_point WHERE series = ? ORDER BY at DESC LIMIT 1",
                (series,),
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT at, value FROM timeseries_point WHERE series = ? AND at <= ? "
                "ORDER BY at DESC LIMIT 1",
                (series, float(at_or_before)),
            ).fetchone()
        return Point(row[0], row[1]) if row is not None else None

    def series_names(self, prefix: str = "") -> list[str]:
        rows = self._conn.execute("SELECT DISTINCT series FROM timeseries_point ORDER BY series")
        return [name for (name,) in rows if name.startswith(prefix)]

    def thin(self, now: float) -> int:
        """Only points older than the first tier can go, so only those are read."""
        cutoff = thin_cutoff(now, self.retention)
        removed = 0
        with _transaction(self._conn):
            for name in self.series_names():
                old = [
                    Point(at, value)
                    for at, value in self._conn.execute(
                        "SELECT at, value FROM timeseries_point WHERE series = ? AND at < ?",
                        (name, cutoff),
                    )
                ]
                kept = {p.at for p in thinned(old, now, self.retention)}
                gone = [(name, p.at) for p in old if p.at not in kept]
                self._conn.executemany(
                    "DELETE FROM timeseries_point WHERE series = ? AND at = ?", gone
                )
                removed += len(gone)
        return removed


class _transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
