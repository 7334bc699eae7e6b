"""Where store calls run (gateway/store/runner.py), and the POP3 fetcher's store work run
through a thread pool against a real SQLite store: the path a backend with network round
trips (PostgreSQL, issue 13) will take, exercised now.

The reactor runs in a background thread (gateway.testing.reactor_thread.ReactorThread); a
fetch pass is started on it with ``rt.call``, and each of its store calls is then made on a
pool thread, its result coming back on the reactor thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.python.threadpool import ThreadPool

from gateway.access.quota import DeliveryQuotaGuard, Quotas
from gateway.pop3.errors import FetchError
from gateway.pop3.fetcher import FetchResult
from gateway.store.interfaces import (
    INBOX,
    Delivery,
    Ledger,
    LedgerEntry,
    MailboxNotFound,
    OverQuota,
)
from gateway.store.memory import MemoryStore
from gateway.store.runner import InlineRunner, StoreRunner, ThreadRunner, runner_for
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.fakepop3 import normalize_message
from gateway.testing.pop3fetch import OWNER, FetchHarness
from gateway.testing.reactor_thread import ReactorThread


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threadpool = ThreadPool(minthreads=0, maxthreads=1, name="store-test")
    threadpool.start()
    yield threadpool
    threadpool.stop()


@pytest.fixture
def threaded(rt: ReactorThread, pool: ThreadPool) -> ThreadRunner:
    return ThreadRunner(rt.reactor, pool)


def reactor_thread_id(rt: ReactorThread) -> int:
    return rt.call(threading.get_ident)


# ---- the runners ------------------------------------------------------------------------


def test_inline_runner_calls_at_once_on_the_callers_thread() -> None:
    runner = InlineRunner()
    assert runner.inline is True
    d = runner.run(lambda a, *, b: (a, b, threading.get_ident()), 1, b=2)
    results: list[Any] = []
    d.addCallback(results.append)  # already fired: no reactor turn needed
    assert results == [(1, 2, threading.get_ident())]


def test_inline_runner_fails_with_the_stores_own_error() -> None:
    d = InlineRunner().run(MemoryStore().get_mailbox, "nobody", INBOX)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(MailboxNotFound)


def test_thread_runner_calls_on_a_pool_thread_and_answers_on_the_reactor(
    rt: ReactorThread, threaded: ThreadRunner
) -> None:
    assert threaded.inline is False
    reactor_id = reactor_thread_id(rt)
    seen: dict[str, int] = {}

    def work(x: int) -> int:
        seen["call"] = threading.get_ident()
        return x * 2

    def start() -> defer.Deferred[int]:
        def back(result: int) -> int:
            seen["answer"] = threading.get_ident()
            return result

        return threaded.run(work, 21).addCallback(back)

    assert rt.call(start) == 42
    assert seen["call"] != reactor_id
    assert seen["answer"] == reactor_id


def test_thread_runner_fails_with_the_stores_own_error(
    rt: ReactorThread, threaded: ThreadRunner
) -> None:
    store = MemoryStore()
    with pytest.raises(MailboxNotFound):
        rt.call(lambda: threaded.run(store.get_mailbox, "nobody", INBOX))


def test_thread_runner_needs_a_thread() -> None:
    with pytest.raises(ValueError):
        ThreadRunner(global_reactor, ThreadPool(minthreads=0, maxthreads=0))


class NetworkBackend:
    """Stands for a backend with network round trips: it must not run inline."""

    runs_inline = False

    def close(self) -> None:
        pass


def test_runner_for_follows_what_the_backend_declares(
    threaded: ThreadRunner, tmp_path: Path
) -> None:
    with SQLiteStore(tmp_path / "s.db") as sqlite_store:
        assert isinstance(runner_for(sqlite_store), InlineRunner)
        assert isinstance(runner_for(sqlite_store, threaded), InlineRunner)
    assert isinstance(runner_for(MemoryStore()), InlineRunner)
    assert runner_for(NetworkBackend(), threaded) is threaded
    with pytest.raises(ValueError, match="ThreadRunner"):
        runner_for(NetworkBackend())


# ---- the fetcher through a thread pool -------------------------------------------------------


class ThreadRecordingLedger:
    """A :class:`Ledger` that notes the thread of every call and passes it on unchanged."""

    def __init__(self, base: Ledger) -> None:
        self.base = base
        self.calls: list[tuple[str, int]] = []

    def _note(self, name: str) -> None:
        self.calls.append((name, threading.get_ident()))

    def known_uidls(self, upstream: str) -> set[str]:
        self._note("known_uidls")
        return self.base.known_uidls(upstream)

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        self._note("deliver")
        return self.base.deliver(owner, mailbox, delivery)

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        self._note("deliver_many")
        return self.base.deliver_many(owner, mailbox, deliveries, dedup=dedup)

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        self._note("record_skipped")
        self.base.record_skipped(upstream, uidl, reason)

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        self._note("record_imported")
        return self.base.record_imported(upstream, uidls, reason)

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        self._note("forget_uidls")
        self.base.forget_uidls(upstream, uidls)

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        self._note("ledger_entries")
        return self.base.ledger_entries(upstream)


class ThreadedHarness(FetchHarness):
    """A FakePOP3Server and an SQLiteStore whose fetcher calls run on ``runner``'s pool,
    through a :class:`ThreadRecordingLedger` (``recording``) unless a pass is given another.

    The store is opened with ``check_same_thread=False``: the one-thread pool makes the
    fetcher's calls, the test reads the results once the pass is over."""

    def __init__(
        self,
        rt: ReactorThread,
        directory: Path,
        runner: StoreRunner,
        *,
        max_message_size: int = 1_000_000,
        **server_kw: Any,
    ) -> None:
        store = rt.call(
            lambda: SQLiteStore(
                directory / "store.db", max_message_size=max_message_size, check_same_thread=False
            )
        )
        super().__init__(rt, directory, store=store, runner=runner, **server_kw)
        self.own_store = True
        self.recording = ThreadRecordingLedger(store)
        self.listen()

    def fetch(
        self, progress: Any = None, *, ledger: Ledger | None = None, **overrides: Any
    ) -> FetchResult:
        chosen = ledger if ledger is not None else self.recording
        return super().fetch(progress, ledger=chosen, **overrides)


@pytest.fixture
def make(rt: ReactorThread, threaded: ThreadRunner, tmp_path: Path) -> Iterator[Any]:
    made: list[ThreadedHarness] = []

    def factory(**kw: Any) -> ThreadedHarness:
        directory = tmp_path / f"h{len(made)}"
        directory.mkdir()
        harness = ThreadedHarness(rt, directory, threaded, **kw)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


def test_threaded_fetch_stores_every_message_and_never_touches_the_store_on_the_reactor(
    rt: ReactorThread, make: Any
) -> None:
    messages = samplemail.generate(12, 3)
    h = make(messages=messages)
    result = h.fetch()
    assert result.fetched == 12 and result.errors == 0
    assert h.inbox() == [normalize_message(m) for m in messages]
    reactor_id = reactor_thread_id(rt)
    assert h.recording.calls and all(thread != reactor_id for _name, thread in h.recording.calls)
    assert [name for name, _t in h.recording.calls] == ["known_uidls", "deliver_many"]
    # A second pass knows every UIDL (read through the pool too) and fetches nothing.
    assert h.fetch().fetched == 0
    assert len(h.inbox()) == 12


def test_threaded_fetch_deletes_upstream_only_after_the_commit(make: Any) -> None:
    messages = samplemail.generate(5, 4)
    h = make(messages=messages)
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 5 and result.deleted == 5
    assert h.server.messages == []
    names = [name for name, _t in h.recording.calls]
    # the deletion plan is read from the ledger after the batch committed
    assert names.index("deliver_many") < names.index("ledger_entries")
    assert len(h.inbox()) == 5


def test_threaded_fetch_retries_one_by_one_and_records_what_is_too_large(make: Any) -> None:
    """The store's own size limit fails the batch; the one-at-a-time retry and the
    skipped entry go through the pool like every other call."""
    small = [b"Subject: small %d\r\n\r\nhello\r\n" % i for i in range(2)]
    big = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
    h = make(messages=[small[0], big, small[1]], max_message_size=2000)
    result = h.fetch(max_message_size=1_000_000)  # the upstream's limit lets it through
    assert result.fetched == 2 and result.skipped == 1
    names = [name for name, _t in h.recording.calls]
    assert names.count("deliver_many") == 4  # the batch, then each of its three messages
    assert "record_skipped" in names
    entries = {e.uidl: e.state for e in h.rt.call(h.store.ledger_entries, "isp")}
    assert sorted(entries.values()) == ["delivered", "delivered", "skipped"]


def test_threaded_fetch_over_quota_fails_the_pass_and_deletes_nothing(make: Any) -> None:
    h = make(messages=samplemail.generate(3, 6))
    guard = DeliveryQuotaGuard(h.store, Quotas({OWNER: 10}))
    with pytest.raises(FetchError) as info:
        h.fetch(ledger=guard, keep_on_server=False)
    assert info.value.kind == "store"
    assert OverQuota.__name__ in str(info.value)
    assert len(h.server.messages) == 3  # held upstream, nothing deleted
    assert h.rt.call(h.store.known_uidls, "isp") == set()
