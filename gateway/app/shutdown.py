"""Stopping the gateway: stop signals that only schedule, and a stop that is ordered and bounded.

Two rules (issue 20, item 7):

- **A signal handler never logs and never takes a lock; it only schedules.** Python runs a
  handler in the main thread between two bytecodes of whatever that thread was doing, which
  may be a log write holding structlog's per-file, non-reentrant write lock
  (``structlog._output.WRITE_LOCKS``). Twisted's own SIGTERM handler logs "Received
  SIGTERM" right there: at ``log_level = "debug"`` during a busy fetch pass, it waited
  forever for the lock its own interrupted frame held, and the gateway never exited.
  :class:`StopSignals` replaces Twisted's SIGTERM/SIGINT handlers once the reactor has
  installed them (``callWhenRunning``, for ``popgate serve`` and ``twistd`` alike) with
  one that arms the hard deadline (``alarm(2)``, a system call) and hands the stop to the
  reactor with ``callFromThread`` (a list append and a byte written to the waker pipe);
  the log line is written from the reactor loop.
- **Stopping waits for work in flight, then closes the store, within a bounded time.**
  :class:`GatewayService` stops its children in two phases: first everything that uses
  the store (listeners, pollers, which wait up to ``poller.STOP_GRACE`` for a pass in
  flight and then cancel it, thread pools), then, once those have stopped or
  :data:`STOP_TIMEOUT` has passed, the children marked ``stop_last`` (the store). If the
  reactor itself is wedged, the kernel ends the process :data:`HARD_STOP_SECONDS` after
  the signal (SIGALRM's default action). systemd's ``TimeoutStopSec`` is larger still.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning

log = structlog.get_logger(__name__)

STOP_TIMEOUT = 20.0
"""Longest a stop waits for listeners, pollers and thread pools before closing the store
anyway (a poller waits ``STOP_GRACE`` = 10 s for a pass in flight, then cancels it)."""

HARD_STOP_SECONDS = 25
"""After a stop signal the process is gone within this many seconds, even if the reactor
thread is blocked: the handler arms ``alarm(2)`` and SIGALRM's default action ends it.
Greater than :data:`STOP_TIMEOUT`; systemd's ``TimeoutStopSec`` (30 s) is greater still."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop the gateway (SIGHUP reloads it: ``reloading.SighupReload``)."""


class StopSignals(service.Service):
    """Installs popgate's SIGTERM/SIGINT handlers over Twisted's, once the reactor runs.

    Only in the main thread (in-process tests run services on a reactor thread). The
    handlers stay installed while the gateway stops: putting Twisted's back would reopen
    the deadlock for a second signal.
    """

    name = "stop-signals"

    def __init__(
        self,
        reactor: Any,
        *,
        arm_deadline: Callable[[int], Any] = signal.alarm,
        hard_stop_seconds: int = HARD_STOP_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.arm_deadline = arm_deadline
        self.hard_stop_seconds = hard_stop_seconds
        self._armed = False
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        if threading.current_thread() is threading.main_thread():
            # twistd starts services before reactor.run(); `popgate serve` after: either
            # way this runs after the reactor has installed its own handlers.
            self.reactor.callWhenRunning(self.install)

    def install(self) -> None:
        """Replace the reactor's stop handlers; SIGALRM (the hard deadline) must end the
        process, so it gets its default action back."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: Any = None) -> None:
        """The signal handler: no logging, no locks (see the module docstring)."""
        if not self._armed:
            self._armed = True
            self.arm_deadline(self.hard_stop_seconds)
        self.reactor.callFromThread(self.stop_reactor, signum)

    def stop_reactor(self, signum: int) -> None:
        """On the reactor thread: say which signal arrived, then stop the reactor once."""
        name = signal.Signals(signum).name
        if self._stopping:
            log.info("service.stop_signal_again", signal=name)
            return
        self._stopping = True
        log.info("service.stop_signal", signal=name, message=f"Received {name}, shutting down.")
        # twistd ends the process with the same signal (a success status for systemd)
        self.reactor._exitSignal = signum
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


class GatewayService(service.MultiService):
    """The gateway's top service: stops in two phases within :data:`STOP_TIMEOUT` (see the
    module docstring). A child with a true ``stop_last`` attribute stops in the second."""

    def __init__(self, reactor: Any, *, stop_timeout: float = STOP_TIMEOUT) -> None:
        super().__init__()
        self.reactor = reactor
        self.stop_timeout = stop_timeout

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        children = list(self)
        children.reverse()
        last = [s for s in children if getattr(s, "stop_last", False)]
        first = [s for s in children if s not in last]
        pending = {id(s): s for s in first}

        def stopped(_: Any, child: Any) -> None:
            pending.pop(id(child), None)

        def failed(failure: Any, child: Any) -> None:
            log.error("service.stop_failed", service=_name(child), error=failure.getErrorMessage())

        waits = []
        for child in first:
            d = defer.maybeDeferred(child.stopService)
            d.addErrback(failed, child)
            d.addBoth(stopped, child)
            waits.append(d)
        phase_one: defer.Deferred[None] = defer.Deferred()
        timer = self.reactor.callLater(self.stop_timeout, self._timed_out, phase_one, pending)
        defer.DeferredList(waits).addBoth(
            lambda _: (timer.cancel() if timer.active() else None, _fire(phase_one))
        )

        def stop_last(_: Any) -> defer.Deferred[Any]:
            return defer.DeferredList([defer.maybeDeferred(s.stopService) for s in last])

        phase_one.addCallback(stop_last)
        phase_one.addCallback(lambda _: None)
        return phase_one

    def _timed_out(self, phase_one: defer.Deferred[None], pending: dict[int, Any]) -> None:
        log.warning(
            "service.stop_timeout",
            seconds=self.stop_timeout,
            still_stopping=sorted(_name(s) for s in pending.values()),
        )
        _fire(phase_one)


def _fire(d: defer.Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _name(svc: Any) -> str:
    return getattr(svc, "name", None) or type(svc).__name__
