"""Stopping the gateway (gateway/app/shutdown.py, issue 20 item 7): stop signals only schedule,
the store closes after the passes in flight, and a stop always ends within a bounded time."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from structlog._output import WRITE_LOCKS
from twisted.application import service
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.base import ReactorBase
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool

from gateway.app import logs
from gateway.app.config import Upstream
from gateway.app.service import StoreService, ThreadPoolService
from gateway.app.shutdown import HARD_STOP_SECONDS, STOP_TIMEOUT, GatewayService, StopSignals
from gateway.pop3.poller import STOP_GRACE, UpstreamPoller
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.fakepop3 import FakePOP3Server
from gateway.testing.reactor_thread import ReactorThread

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "systemd" / "popgate.service"


class FakeReactor:
    """Records what a signal handler schedules; never runs anything itself."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[Any, tuple[Any, ...]]] = []
        self.stopped = 0
        self._exitSignal: int | None = None

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.scheduled.append((f, args))

    def stop(self) -> None:
        self.stopped += 1


def _in_thread(fn: Any, *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_stop_handler_returns_while_a_log_write_holds_the_lock_where_twisteds_blocks() -> None:
    """The cause of the hang: Twisted's SIGTERM handler logs, and popgate's log chain ends
    in structlog's WriteLogger, whose per-file lock is not reentrant. While a log write
    holds that lock (here another thread; in the hang, the very frame the signal
    interrupted), Twisted's handler blocks on it; popgate's handler only schedules."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream, recent=None)
    observer = logs.twisted_observer()
    globalLogPublisher.addObserver(observer)
    try:
        structlog.get_logger("test").debug("warm.up")  # creates the stream's write lock
        lock = WRITE_LOCKS[stream]
        twisted_reactor, popgate_reactor = FakeReactor(), FakeReactor()
        armed: list[int] = []
        handler = StopSignals(popgate_reactor, arm_deadline=armed.append)
        with lock:  # a log write in progress
            twisted = _in_thread(ReactorBase.sigTerm, twisted_reactor, signal.SIGTERM)
            popgate = _in_thread(handler.handle, signal.SIGTERM)
            popgate.join(2)
            twisted.join(1)
            assert not popgate.is_alive(), "popgate's stop handler waited for the log lock"
            assert twisted.is_alive(), "Twisted's handler no longer logs: revisit shutdown.py"
            assert popgate_reactor.scheduled and armed == [HARD_STOP_SECONDS]
        twisted.join(5)
        assert not twisted.is_alive()
        # the log line is written later, from the reactor loop, and the reactor stopped once
        f, args = popgate_reactor.scheduled[0]
        f(*args)
        handler.handle(signal.SIGTERM)  # a second signal: no second deadline, no second stop
        f, args = popgate_reactor.scheduled[1]
        f(*args)
        assert popgate_reactor.stopped == 1 and armed == [HARD_STOP_SECONDS]
        assert popgate_reactor._exitSignal == signal.SIGTERM  # twistd exits with it
        assert "Received SIGTERM, shutting down." in stream.getvalue()
    finally:
        globalLogPublisher.removeObserver(observer)
        logs.configure_for_tests()


def test_a_stop_signal_arriving_inside_a_log_write_does_not_deadlock(tmp_path: Path) -> None:
    """The hang itself, in a child process: SIGTERM delivered to the main thread while its
    WriteLogger holds the lock. With popgate's handler the write finishes and the stop is
    scheduled; (Twisted's handler hangs this script forever)."""
    script = tmp_path / "signal_in_write.py"
    script.write_text(
        textwrap.dedent(
            """
            import io, os, signal, sys
            import structlog
            from twisted.logger import globalLogPublisher
            from gateway.app import logs
            from gateway.app.shutdown import StopSignals

            class Reactor:
                scheduled = []
                def callFromThread(self, f, *args):
                    self.scheduled.append(f)

            class SignalInWrite(io.StringIO):
                def write(self, s):
                    if not getattr(self, "fired", False):
                        self.fired = True
                        os.kill(os.getpid(), signal.SIGTERM)  # WriteLogger holds its lock
                    return super().write(s)

            logs.configure("debug", "json", stream=SignalInWrite())
            globalLogPublisher.addObserver(logs.twisted_observer())
            reactor = Reactor()
            signal.signal(signal.SIGTERM, StopSignals(reactor, arm_deadline=lambda s: None).handle)
            structlog.get_logger("x").debug("pop3.progress")
            print("scheduled", len(reactor.scheduled))
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGTERM would not do: that is the bug
        proc.communicate()
        raise AssertionError("the stop signal deadlocked inside a log write") from None
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "scheduled 1"


class Recorder(service.Service):
    def __init__(self, name: str, events: list[str], result: Any = None) -> None:
        self.name = name
        self.events = events
        self.result = result

    def stopService(self) -> Any:
        super().stopService()
        self.events.append(self.name)
        return self.result


def test_the_store_stops_after_everything_else_has_stopped() -> None:
    """Children marked ``stop_last`` (the store) stop only once the others' Deferreds fired."""
    clock, events = Clock(), []
    top = GatewayService(clock)
    store = Recorder("store", events)
    store.stop_last = True  # type: ignore[attr-defined]
    store.setServiceParent(top)
    pass_over: defer.Deferred[None] = defer.Deferred()
    Recorder("poller", events, pass_over).setServiceParent(top)
    Recorder("listener", events).setServiceParent(top)
    top.startService()
    done = top.stopService()
    assert events == ["listener", "poller"] and not done.called
    clock.advance(STOP_TIMEOUT / 2)
    pass_over.callback(None)
    assert events == ["listener", "poller", "store"] and done.called


def test_a_stop_ends_within_stop_timeout_even_when_a_child_never_finishes() -> None:
    clock, events = Clock(), []
    top = GatewayService(clock)
    store = Recorder("store", events)
    store.stop_last = True  # type: ignore[attr-defined]
    store.setServiceParent(top)
    Recorder("stuck", events, defer.Deferred()).setServiceParent(top)
    top.startService()
    with structlog.testing.capture_logs() as captured:
        done = top.stopService()
        clock.advance(STOP_TIMEOUT - 0.1)
        assert not done.called
        clock.advance(0.1)
    assert done.called and events == ["stuck", "store"]
    assert [e["still_stopping"] for e in captured if e["event"] == "service.stop_timeout"] == [
        ["stuck"]
    ]


def test_stopping_the_gateway_waits_for_a_pass_in_flight_before_closing_the_store(
    tmp_path: Path,
) -> None:
    """A pass stalled in RETR when the stop begins: the store stays open until the pass has
    ended (here: the upstream answers during the grace period), so what it received is
    committed and nothing fails with "store is closed"."""
    rt = ReactorThread.shared(global_reactor)
    mails = samplemail.generate(2, seed=11)
    server = FakePOP3Server("u", "p", messages=mails)
    held: list[Any] = []

    def hold_second_retr(proto: Any, verb: str, args: list[bytes]) -> None:
        if verb == "RETR" and args == [b"2"]:
            server.faults.stall_on.add("RETR")
            held.append(proto)

    server.command_hook = hold_second_retr
    port = rt.call(server.listen, global_reactor)
    store = rt.call(SQLiteStore, tmp_path / "store.db")
    rt.call(store.ensure_user, "alice")
    upstream = Upstream(
        name="up",
        owner="alice",
        host="127.0.0.1",
        port=port.getHost().port,
        tls="none",
        username="u",
        password="p",
        timeout=30.0,
    )
    top = GatewayService(global_reactor)
    StoreService(store).setServiceParent(top)
    poller = UpstreamPoller(upstream, store, reactor=global_reactor, first_delay=0, stop_grace=30)
    poller.setServiceParent(top)
    stopped: list[Any] = []
    with structlog.testing.capture_logs() as captured:
        rt.call(top.startService)
        deadline = time.monotonic() + 20
        while not held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held, "the pass never reached RETR 2"
        rt.call(lambda: top.stopService().addBoth(stopped.append) and None)
        time.sleep(0.5)
        assert not stopped and rt.call(lambda: store._conn is not None), "store closed early"

        def release() -> None:
            server.faults.stall_on.clear()
            held[0].stalled = False
            held[0].do_RETR([b"2"])

        rt.call(release)
        deadline = time.monotonic() + 20
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        assert stopped == [None]
        assert rt.call(lambda: store._conn is None)
        assert not [e for e in captured if e["event"] == "pop3.fetch_failed"], captured
        with SQLiteStore(tmp_path / "store.db") as again:
            assert len(again.known_uidls("up")) == 2
    finally:
        rt.call(port.stopListening)


def test_stopping_a_thread_pool_never_blocks_the_reactor_and_drops_queued_work() -> None:
    """A call still running: stopService returns at once (the join happens on a helper
    thread) and fires when the call ends; work still queued is dropped (CancelledError)."""
    rt = ReactorThread.shared(global_reactor)
    pool = ThreadPool(minthreads=0, maxthreads=1, name="test-pool")
    svc = ThreadPoolService(pool, global_reactor)
    rt.call(svc.startService)
    release, started, ran, results = threading.Event(), threading.Event(), [], []

    def running() -> bool:
        started.set()
        return release.wait(30)

    rt.call(lambda: svc.run(running).addBoth(results.append) and None)
    # Only once the first call runs on the pool's thread are the next three surely queued
    # behind it (on a loaded machine the pool may not have picked it up yet).
    assert started.wait(20)
    for i in range(3):
        rt.call(lambda i=i: svc.run(ran.append, i).addBoth(results.append) and None)
    stopped: list[Any] = []
    # A join on the reactor thread would hold this call until ``release`` (30 s): rt.call
    # would then time out. Returning with the Deferred unfired is the proof, not a clock.
    rt.call(lambda: svc.stopService().addBoth(stopped.append) and None, timeout=20.0)
    assert not stopped
    release.set()
    deadline = time.monotonic() + 10
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stopped == [None] and not any(t.is_alive() for t in pool.threads) and ran == []
    time.sleep(0.1)
    cancelled = [r for r in results if not isinstance(r, bool)]
    assert len(cancelled) == 3 and all(r.check(defer.CancelledError) for r in cancelled)


def test_the_stop_bounds_are_ordered_and_systemd_waits_longer_than_all_of_them() -> None:
    """A poller's grace < the gateway's stop timeout < the hard deadline < systemd's."""
    match = re.search(r"^TimeoutStopSec=(\d+)s?$", UNIT.read_text(), re.M)
    assert match, "systemd/popgate.service states no TimeoutStopSec"
    assert STOP_GRACE < STOP_TIMEOUT < HARD_STOP_SECONDS < int(match.group(1))
