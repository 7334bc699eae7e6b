"""Where store calls run: on the reactor thread, or on a bounded pool of threads.

The store contract (:mod:`gateway.store.interfaces`) is synchronous; a caller on the
reactor makes each call through a :class:`StoreRunner` and gets a Deferred, so the same
caller code serves a backend that answers in microseconds (SQLite, memory:
:class:`InlineRunner`) and one that takes a network round trip per call (PostgreSQL:
:class:`ThreadRunner`). Which one a backend needs, it declares with its
``runs_inline`` attribute; :func:`runner_for` turns that into a runner.

Results and failures always arrive on the reactor thread: the inline runner calls on it,
the thread runner hands back through ``deferToThreadPool``. Exceptions keep their type
(a :class:`~gateway.store.errors.StoreError` raised by the store fails the Deferred with
that same error), so ``await runner.run(...)`` in a coroutine reads like the direct call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gateway.store.interfaces import Backend

P = ParamSpec("P")
T = TypeVar("T")


class StoreRunner(Protocol):
    """Runs one synchronous store call and returns a Deferred of its result."""

    @property
    def inline(self) -> bool:
        """True when :meth:`run` calls on the reactor thread before returning (the
        Deferred has already fired), False when the call runs on another thread."""

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        """Call ``fn(*args, **kwargs)``; the Deferred fires on the reactor thread with
        its result or fails with its exception."""


class InlineRunner:
    """Calls on the caller's (the reactor's) thread, at once: for backends with
    ``runs_inline = True``. Awaiting its Deferred costs no reactor turn, so a coroutine
    driven by it behaves exactly as if it called the store directly."""

    @property
    def inline(self) -> bool:
        return True

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        try:
            result = fn(*args, **kwargs)
        except Exception:
            return defer.fail()
        return defer.succeed(result)


class ThreadRunner:
    """Calls on a bounded :class:`~twisted.python.threadpool.ThreadPool`, results delivered
    back on the reactor thread: for backends with ``runs_inline = False``.

    The pool bounds how many store calls are in flight at once (and so how many database
    connections a backend's pool needs); its owner starts and stops it (a
    ``ThreadPoolService`` in the service tree, stopped before the store is closed: stopping
    the pool waits for the calls in progress). Calls from one caller that awaits each
    before the next keep their order; calls from several callers may run concurrently,
    so the backend must allow that.

    Cancelling a returned Deferred does not stop the call: it runs to completion on its
    thread, and the caller is told :class:`~twisted.internet.defer.CancelledError` at
    once. A cancelled writer must therefore assume its write may have committed, which
    is what the ledger's exactly-once rule already covers (the fetcher never DELEs after
    a cancellation).
    """

    def __init__(self, reactor: Any, threadpool: ThreadPool) -> None:
        if threadpool.max < 1:
            raise ValueError("the store's thread pool needs at least one thread")
        self.reactor = reactor
        self.threadpool = threadpool

    @property
    def inline(self) -> bool:
        return False

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args, **kwargs)


def runner_for(backend: Backend, threads: ThreadRunner | None = None) -> StoreRunner:
    """The runner ``backend`` needs: an :class:`InlineRunner` when it runs inline, else
    ``threads`` (a backend with network round trips must never be called on the reactor
    thread, so asking without one is an error, not a silent fallback)."""
    if backend.runs_inline:
        return InlineRunner()
    if threads is None:
        raise ValueError(f"{type(backend).__name__} does not run inline: it needs a ThreadRunner")
    return threads
