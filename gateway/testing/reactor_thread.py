"""A reactor run in a background thread, for blocking test code (pytest without
pytest-twisted). The reactor is passed in, never imported globally.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer


class ReactorThread:
    """Runs ``reactor`` in a daemon thread so blocking code (pytest) can drive it.

    :meth:`call` runs a function in the reactor thread and waits (with a timeout) for
    its result, unwrapping Deferreds and re-raising failures in the caller. Objects tied
    to the reactor thread (an SQLite connection, a listening port) must be created and
    used through :meth:`call`.

    A reactor cannot be restarted once stopped, so test suites share one runner per
    reactor via :meth:`shared` and leave it running until the process exits.
    """

    _shared: dict[int, ReactorThread] = {}
    _shared_lock = threading.Lock()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._thread: threading.Thread | None = None
        self._external = False

    @classmethod
    def shared(cls, reactor: Any) -> ReactorThread:
        """The process-wide runner for ``reactor``, started on first use."""
        with cls._shared_lock:
            runner = cls._shared.get(id(reactor))
            if runner is None:
                runner = cls._shared[id(reactor)] = cls(reactor).start()
            return runner

    def start(self) -> ReactorThread:
        """Run the reactor in a new daemon thread, unless it already runs (started by
        other test helpers), in which case calls are simply sent to it."""
        if self._thread is not None or self._external:
            return self
        if self.reactor.running:
            self._external = True
            return self
        started = threading.Event()
        self.reactor.callWhenRunning(started.set)
        self._thread = threading.Thread(
            target=self.reactor.run,
            kwargs={"installSignalHandlers": False},
            name="reactor",
            daemon=True,
        )
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("reactor did not start")
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0, **kw: Any) -> Any:
        """``fn(*args, **kw)`` in the reactor thread; its (Deferred) result, or its error."""
        if not self.reactor.running or threading.current_thread() is self._thread:
            raise RuntimeError("call() is for other threads while the reactor runs")
        results: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            d = defer.maybeDeferred(fn, *args, **kw)
            d.addCallbacks(
                lambda value: results.put((True, value)),
                lambda failure: results.put((False, failure)),
            )

        self.reactor.callFromThread(run)
        try:
            ok, value = results.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{getattr(fn, '__name__', fn)!r} took over {timeout}s") from None
        if ok:
            return value
        value.raiseException()

    def stop(self) -> None:
        if self._thread is None:
            return
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(30)
        self._thread = None
