"""The known-sources contract (gateway/store/known_sources.py), written once and run
against every backend, its SQLite migration, and the login penalty across a restart
(issue 20, item 6).

Adding a backend is one entry in BACKENDS: a function that opens the store over a
"file" in a temp dir, so that calling it again reopens the same data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from gateway.security.penalty import (
    KNOWN_GOOD_TTL,
    KNOWN_SOURCE_REFRESH,
    KNOWN_SOURCES_PER_USER,
    AuthPenalty,
    KnownSourceBook,
    PenaltySettings,
)
from gateway.store.known_sources import KnownSources
from gateway.store.memory import MemoryState, MemoryStore
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from gateway.store.sqlite import SQLiteStore
from tests.test_store_contract import FakeClock, forget_memory, open_postgresql

Opener = Callable[[], Any]


def _sqlite(tmp: Path) -> Opener:
    return lambda: SQLiteStore(tmp / "popgate.sqlite")


def _memory(tmp: Path) -> Opener:
    state = MemoryState()
    return lambda: MemoryStore(state=state)


def _postgresql(tmp: Path) -> Opener:
    return lambda: open_postgresql(tmp, FakeClock())


BACKENDS: dict[str, Callable[[Path], Opener]] = {
    "sqlite": _sqlite,
    "memory": _memory,
    "postgresql": _postgresql,
}


@pytest.fixture(params=sorted(BACKENDS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend's store; calling it again reopens the same data (a restart)."""
    make = BACKENDS[request.param](tmp_path)
    opened: list[Any] = []

    def open_store() -> Any:
        store = make()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()
    forget_memory(tmp_path)


def remember(store: Any, user: str, source: str, seen: float, **kw: Any) -> None:
    store.remember_source(
        user, source, seen, keep=kw.get("keep", 16), forget_before=kw.get("forget_before", 0.0)
    )


def test_both_backends_fulfil_the_contract_and_the_penalty_port(opener: Opener) -> None:
    store = opener()
    assert isinstance(store, KnownSources)
    book: KnownSourceBook = store  # the penalty's view of it (a type check, run by mypy)
    assert book.known_sources("nobody") == {}


def test_remembers_per_user_and_moves_forward_only(opener: Opener) -> None:
    store = opener()
    remember(store, "alice", "192.0.2.1", 100.0)
    remember(store, "alice", "2001:db8::/64", 150.0)
    remember(store, "bob", "192.0.2.1", 120.0)
    remember(store, "alice", "192.0.2.1", 200.0)
    remember(store, "alice", "192.0.2.1", 50.0)  # an older time never moves it back
    assert store.known_sources("alice") == {"192.0.2.1": 200.0, "2001:db8::/64": 150.0}
    assert store.known_sources("bob") == {"192.0.2.1": 120.0}


def test_keeps_the_most_recent_sources_and_forgets_old_ones(opener: Opener) -> None:
    store = opener()
    for i in range(20):
        remember(store, "alice", f"10.0.0.{i}", 1000.0 + i, keep=16)
    kept = store.known_sources("alice")
    assert sorted(kept) == sorted(f"10.0.0.{i}" for i in range(4, 20))
    remember(store, "alice", "10.0.0.99", 2000.0, keep=16, forget_before=1010.0)
    assert sorted(store.known_sources("alice").values()) == [
        *(1000.0 + i for i in range(10, 20)),
        2000.0,
    ]


def test_sources_survive_reopening(opener: Opener) -> None:
    store = opener()
    remember(store, "alice", "192.0.2.1", 100.0)
    store.close()
    again = opener()
    assert again.known_sources("alice") == {"192.0.2.1": 100.0}


# ---- SQLite schema version 4 (known sources) -----------------------------------------------------------


def test_a_version_3_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """A store written before known sources existed (schema version 3) opens at the
    current version (4 added known sources) with its mail intact, and the new table works."""
    path = tmp_path / "popgate.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:3]) == 3
    conn.execute("INSERT INTO mailbox (owner, name, uidvalidity) VALUES ('alice', 'INBOX', 7)")
    conn.close()
    with SQLiteStore(path) as store:
        assert schema_version(store.db) == SCHEMA_VERSION >= 4
        assert [(m.name, m.uidvalidity) for m in store.list_mailboxes("alice")] == [("INBOX", 7)]
        remember(store, "alice", "192.0.2.1", 1.0)
        assert store.known_sources("alice") == {"192.0.2.1": 1.0}


# ---- the penalty over a store, across a restart ------------------------------------------

HOME = "198.51.100.7"


def _penalty(clock: task.Clock, store: Any) -> AuthPenalty:
    return AuthPenalty(clock, PenaltySettings(user_budget=3, ip_budget=0), known_sources=store)


def test_a_restart_keeps_the_owners_usual_address_exempt(opener: Opener) -> None:
    """Before the restart alice logged in from home; after it (a new penalty over the
    reopened store) a spraying botnet spends her budget, and home still gets in."""
    clock = task.Clock()
    clock.advance(1_000_000)
    store = opener()
    _penalty(clock, store).succeeded(HOME, "alice")
    store.close()
    clock.advance(3600)
    store = opener()
    penalty = _penalty(clock, store)
    for i in range(3):
        penalty.failed(f"203.0.113.{i}", "alice")
    assert penalty.refusal("203.0.113.99", "alice") == "user"
    assert penalty.refusal(HOME, "alice") is None
    assert penalty.known(HOME, "alice")
    clock.advance(KNOWN_GOOD_TTL + 1)  # ...but not forever
    for i in range(3):
        penalty.failed(f"203.0.113.{i}", "alice")
    assert penalty.refusal(HOME, "alice") == "user"


def test_writes_are_bounded(opener: Opener) -> None:
    """One write per new (user, source), then at most one per refresh interval; at most
    KNOWN_SOURCES_PER_USER sources per user, in the cache as in the store."""
    clock = task.Clock()
    store = opener()
    writes: list[tuple[str, str]] = []
    real = store.remember_source

    def counted(user: str, source: str, seen: float, **kw: Any) -> None:
        writes.append((user, source))
        real(user, source, seen, **kw)

    store.remember_source = counted
    penalty = _penalty(clock, store)
    for _ in range(50):
        penalty.succeeded(HOME, "alice")
        clock.advance(1)
    assert writes == [("alice", HOME)]
    clock.advance(KNOWN_SOURCE_REFRESH)
    penalty.succeeded(HOME, "alice")
    assert len(writes) == 2
    for i in range(KNOWN_SOURCES_PER_USER + 4):
        penalty.succeeded(f"10.1.0.{i}", "alice")
        clock.advance(1)
    assert len(store.known_sources("alice")) == KNOWN_SOURCES_PER_USER
    assert not penalty.known(HOME, "alice")  # the oldest went first


def test_a_failing_store_never_stops_a_login(opener: Opener) -> None:
    class Broken:
        def remember_source(self, *args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        def known_sources(self, user: str) -> dict[str, float]:
            raise sqlite3.OperationalError("disk I/O error")

    penalty = AuthPenalty(task.Clock(), known_sources=Broken())
    penalty.succeeded(HOME, "alice")
    assert penalty.known(HOME, "alice")  # kept in memory until the restart
