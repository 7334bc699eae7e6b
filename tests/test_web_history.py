"""The history recorder (gateway/web/history.py): counters that survive restarts through
the time-series store, and the reads the pictures make."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from gateway.store.memory_timeseries import MemoryTimeSeries
from gateway.store.sqlite_timeseries import SQLiteTimeSeries
from gateway.store.timeseries import HOUR, Point
from gateway.web.history import (
    FETCHED_BYTES,
    FETCHED_MESSAGES,
    STORE_BYTES,
    HistoryRecorder,
    hourly_increments,
    increase,
    step_values,
)

START = 1_750_000_000.0


def _recorder(series, clock, totals, sizes, **kw) -> HistoryRecorder:
    return HistoryRecorder(
        series, clock=clock, fetched=lambda: dict(totals), store_sizes=lambda: dict(sizes), **kw
    )


def test_samples_every_interval_and_thins(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(START)
    series = MemoryTimeSeries()
    totals = {"home": (0, 0)}
    recorder = _recorder(series, clock, totals, {"alice": 100}, interval=60, thin_interval=3600)
    recorder.startService()
    totals["home"] = (3, 300)
    clock.advance(60)
    recorder.stopService()
    assert series.read(FETCHED_MESSAGES + "home", 0, START + 61) == [
        Point(START, 0),
        Point(START + 60, 3),
    ]
    assert series.latest(FETCHED_BYTES + "home") == Point(START + 60, 300)
    assert series.latest(STORE_BYTES + "alice") == Point(START + 60, 100)
    clock.advance(600)
    assert len(series.read(STORE_BYTES + "alice", 0, START + 1000)) == 2  # stopped


def test_counters_survive_a_restart_through_sqlite(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(START)
    path = tmp_path / "store.sqlite"
    first = SQLiteTimeSeries.open(path)
    totals = {"home": (5, 500)}
    _recorder(first, clock, totals, {}).sample()
    first.close()
    # a new process: the poller counts from zero again
    clock.advance(3600)
    again = SQLiteTimeSeries.open(path)
    totals = {"home": (2, 200)}
    recorder = _recorder(again, clock, totals, {})
    recorder.sample()
    assert again.latest(FETCHED_MESSAGES + "home") == Point(START + 3600, 7)
    totals["home"] = (4, 400)
    clock.advance(60)
    recorder.sample()
    assert again.latest(FETCHED_MESSAGES + "home").value == 9
    assert increase(again, FETCHED_MESSAGES + "home", START + 1, START + 4000) == 4
    again.close()


def test_a_poller_total_that_goes_down_was_reset() -> None:
    clock = Clock()
    series = MemoryTimeSeries()
    totals = {"home": (10, 0)}
    recorder = _recorder(series, clock, totals, {})
    recorder.sample()
    totals["home"] = (3, 0)  # e.g. the poller was rebuilt
    clock.advance(1)
    recorder.sample()
    assert series.latest(FETCHED_MESSAGES + "home").value == 13


def test_step_values_and_hourly_increments() -> None:
    points = [Point(10, 1), Point(20, 5)]
    assert step_values(points, 0, [5, 10, 15, 25]) == [0, 1, 1, 5]
    series = MemoryTimeSeries()
    base = (START // HOUR) * HOUR
    series.record("c", [Point(base - 30 * HOUR, 100), Point(base - 2 * HOUR + 5, 103)])
    series.record("c", [Point(base + 10, 110)])
    start, hourly = hourly_increments(series, "c", base + 20, hours=24)
    assert start == base - 23 * HOUR
    assert len(hourly) == 24
    assert sum(hourly) == 10  # 100 was reached before the window
    assert hourly[-3] == 3 and hourly[-2] == 0 and hourly[-1] == 7
