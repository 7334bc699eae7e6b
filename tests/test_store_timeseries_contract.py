"""The TimeSeries contract (gateway/store/timeseries.py), written once and run against
every backend; a stateful property test holds each backend to a dict of points thinned
by the pure rule, and property tests pin the rule itself.

Adding a backend is one line in BACKENDS.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.store.interfaces import StoreError
from gateway.store.memory_timeseries import MemoryTimeSeries
from gateway.store.postgres.timeseries import PGTimeSeries
from gateway.store.sqlite_timeseries import TIMESERIES_DDL, SQLiteTimeSeries
from gateway.store.timeseries import (
    DAY,
    HOUR,
    MAX_SERIES_NAME,
    BadSeries,
    Point,
    Retention,
    Tier,
    TimeSeries,
    thinned,
)
from gateway.testing.postgres import close_test_store, open_test_store

_PG_STORES: list = []


def open_postgresql(tmp: Path, retention: Retention) -> TimeSeries:
    """On a PostgreSQL store of its own (closed by :func:`close_all`)."""
    store = open_test_store()
    _PG_STORES.append(store)
    return PGTimeSeries(store, retention)


def close_all() -> None:
    while _PG_STORES:
        close_test_store(_PG_STORES.pop())


BACKENDS: dict[str, Callable[[Path, Retention], TimeSeries]] = {
    "memory": lambda tmp, retention: MemoryTimeSeries(retention),
    "sqlite": lambda tmp, retention: SQLiteTimeSeries.open(tmp / "ts.sqlite", retention),
    "postgresql": open_postgresql,
}

NOW = 1_750_000_000.0


@pytest.fixture(params=sorted(BACKENDS))
def make_series(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., TimeSeries]]:
    def make(retention: Retention | None = None) -> TimeSeries:
        return BACKENDS[request.param](tmp_path, retention or Retention())

    yield make
    close_all()


@pytest.fixture
def ts(make_series: Callable[..., TimeSeries]) -> TimeSeries:
    return make_series()


def test_errors_are_store_errors() -> None:
    assert issubclass(BadSeries, StoreError)


def test_record_then_read_range_is_half_open_and_sorted(ts: TimeSeries) -> None:
    ts.record("s", [Point(30.0, 3), Point(10.0, 1), Point(20.0, 2)])
    assert ts.read("s", 10, 30) == [Point(10.0, 1.0), Point(20.0, 2.0)]
    assert ts.read("s", 0, 100) == [Point(10.0, 1.0), Point(20.0, 2.0), Point(30.0, 3.0)]
    assert ts.read("other", 0, 100) == []


def test_recording_the_same_time_replaces_the_value(ts: TimeSeries) -> None:
    ts.record("s", [Point(10.0, 1)])
    ts.record("s", [Point(10.0, 5)])
    assert ts.read("s", 0, 100) == [Point(10.0, 5.0)]


def test_latest_with_and_without_a_bound(ts: TimeSeries) -> None:
    assert ts.latest("s") is None
    ts.record("s", [Point(10.0, 1), Point(20.0, 2)])
    assert ts.latest("s") == Point(20.0, 2.0)
    assert ts.latest("s", 15) == Point(10.0, 1.0)
    assert ts.latest("s", 20) == Point(20.0, 2.0)
    assert ts.latest("s", 5) is None


def test_series_are_separate_and_listed_by_prefix(ts: TimeSeries) -> None:
    ts.record("fetched:a", [Point(1.0, 1)])
    ts.record("fetched:b", [Point(1.0, 2)])
    ts.record("store:alice", [Point(1.0, 3)])
    ts.record("empty", [])
    assert ts.series_names() == ["fetched:a", "fetched:b", "store:alice"]
    assert ts.series_names("fetched:") == ["fetched:a", "fetched:b"]
    assert ts.read("fetched:b", 0, 2) == [Point(1.0, 2.0)]


@pytest.mark.parametrize("name", ["", "x" * (MAX_SERIES_NAME + 1), "a\nb", "a\x00", "a\x85"])
def test_bad_names_are_refused(ts: TimeSeries, name: str) -> None:
    with pytest.raises(BadSeries):
        ts.record(name, [Point(1.0, 1)])


@pytest.mark.parametrize("bad", [Point(math.nan, 1), Point(1.0, math.inf), Point(1.0, -math.inf)])
def test_a_bad_point_writes_nothing(ts: TimeSeries, bad: Point) -> None:
    with pytest.raises(BadSeries):
        ts.record("s", [Point(5.0, 1), bad])
    assert ts.read("s", 0, 100) == []


def test_unicode_names_round_trip(ts: TimeSeries) -> None:
    ts.record("store:jürgen 👪", [Point(1.0, 1)])
    assert ts.series_names() == ["store:jürgen 👪"]


def test_thin_keeps_recent_points_and_the_last_of_each_older_bucket(ts: TimeSeries) -> None:
    retention = ts.retention
    recent = [Point(NOW - 60 * i, float(i)) for i in range(10)]
    # Three days ago, every ten minutes over two hours: hourly buckets keep their last.
    base = math.floor((NOW - 3 * DAY) / HOUR) * HOUR
    older = [Point(base + 600 * i, 100.0 + i) for i in range(12)]
    ancient = [Point(NOW - retention.keep_for - 10, 7.0)]
    ts.record("s", recent + older + ancient)
    removed = ts.thin(NOW)
    kept = ts.read("s", 0, NOW + 1)
    assert kept == thinned(recent + older + ancient, NOW, retention)
    assert [p for p in kept if p.at >= NOW - 600] == sorted(recent)
    assert [p for p in kept if p.at < NOW - DAY] == [older[5], older[11]]
    assert removed == len(recent + older + ancient) - len(kept)
    assert ts.thin(NOW) == 0  # thinning twice changes nothing


def test_thin_forgets_a_series_with_only_ancient_points(ts: TimeSeries) -> None:
    ts.record("old", [Point(NOW - 1000 * DAY, 1)])
    assert ts.thin(NOW) == 1
    assert ts.series_names() == []


def test_sqlite_history_survives_reopening(tmp_path: Path) -> None:
    first = SQLiteTimeSeries.open(tmp_path / "s.sqlite")
    first.record("s", [Point(1.0, 2)])
    first.close()
    again = SQLiteTimeSeries.open(tmp_path / "s.sqlite")
    assert again.latest("s") == Point(1.0, 2.0)
    again.close()


def test_sqlite_ddl_is_idempotent_on_a_shared_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "store.sqlite"), isolation_level=None)
    conn.execute(TIMESERIES_DDL)
    ts = SQLiteTimeSeries(conn)
    SQLiteTimeSeries(conn).record("s", [Point(1.0, 1)])
    ts.close()  # not its connection: stays open
    assert conn.execute("SELECT count(*) FROM timeseries_point").fetchone() == (1,)
    conn.close()


# ---- the thinning rule --------------------------------------------------------------------

TIMES = st.floats(min_value=NOW - 500 * DAY, max_value=NOW + DAY, allow_nan=False)
POINTS = st.lists(st.builds(Point, TIMES, st.floats(-1e9, 1e9)), max_size=200)


@given(POINTS)
def test_thinned_points_are_a_sorted_subset_within_the_bounds(points: list[Point]) -> None:
    retention = Retention()
    kept = thinned(points, NOW, retention)
    assert kept == sorted(kept)
    assert set(kept) <= set(points)
    assert all(NOW - p.at <= retention.keep_for for p in kept)
    keys = []
    for p in kept:
        tiers = [t for t in retention.tiers if NOW - p.at > t.older_than]
        if tiers:  # the oldest tier that applies decides the bucket: one point in each
            keys.append((tiers[-1], math.floor(p.at / tiers[-1].every)))
    assert len(keys) == len(set(keys))
    assert thinned(kept, NOW, retention) == kept


@given(POINTS)
def test_the_newest_point_of_each_old_bucket_survives(points: list[Point]) -> None:
    """A cumulative counter keeps its running total at every bucket's end."""
    retention = Retention(tiers=(Tier(HOUR, HOUR),), keep_for=1000 * DAY)
    kept = set(thinned(points, NOW, retention))
    last: dict[int, Point] = {}
    for p in sorted(points):
        if NOW - p.at > HOUR:
            last[math.floor(p.at / HOUR)] = p
    for p in last.values():
        assert p in kept or any(q.at == p.at for q in kept)


# ---- each backend against the model ------------------------------------------------------

SERIES = st.sampled_from(["a", "b"])
MODEL_TIMES = st.integers(min_value=-60, max_value=10).map(lambda h: NOW + h * HOUR + 17)


def _model_backend(name: str) -> type[RuleBasedStateMachine]:
    retention = Retention(tiers=(Tier(2 * HOUR, HOUR), Tier(12 * HOUR, 6 * HOUR)), keep_for=DAY)

    class Model(RuleBasedStateMachine):
        """Every operation on the backend and on a dict of points must agree."""

        def __init__(self) -> None:
            super().__init__()
            # One directory per example, removed with it (hypothesis runs ~100 of them).
            self.directory = tempfile.TemporaryDirectory()
            self.ts = BACKENDS[name](Path(self.directory.name), retention)
            self.points: dict[str, dict[float, float]] = {"a": {}, "b": {}}

        @rule(series=SERIES, at=MODEL_TIMES, value=st.integers(0, 100))
        def record(self, series: str, at: float, value: int) -> None:
            self.ts.record(series, [Point(at, value)])
            self.points[series][at] = float(value)

        @rule(now=MODEL_TIMES)
        def thin(self, now: float) -> None:
            removed = 0
            for series, points in self.points.items():
                kept = thinned([Point(a, v) for a, v in points.items()], now, retention)
                removed += len(points) - len(kept)
                self.points[series] = {p.at: p.value for p in kept}
            assert self.ts.thin(now) == removed

        @rule(series=SERIES, bound=MODEL_TIMES)
        def latest(self, series: str, bound: float) -> None:
            before = [a for a in self.points[series] if a <= bound]
            expected = Point(max(before), self.points[series][max(before)]) if before else None
            assert self.ts.latest(series, bound) == expected

        @invariant()
        def agrees(self) -> None:
            for series, points in self.points.items():
                expected = sorted(Point(a, v) for a, v in points.items())
                assert self.ts.read(series, -math.inf, math.inf) == expected
            assert self.ts.series_names() == sorted(s for s, p in self.points.items() if p)

        def teardown(self) -> None:
            close_all()
            if isinstance(self.ts, SQLiteTimeSeries):
                self.ts.close()
            self.directory.cleanup()

    Model.__name__ = f"TimeSeriesModel_{name}"
    return Model


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_agrees_with_the_model(backend: str) -> None:
    machine = _model_backend(backend)
    machine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
    machine.TestCase().runTest()
