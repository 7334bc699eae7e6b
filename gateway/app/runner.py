"""Running a service on the global reactor until SIGINT/SIGTERM, as ``popgate serve`` does.

Shared by ``popgate serve``, ``popgate demo`` and the benchmark's worker, so that all three
start, report start-up failures and stop the same way.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import Any

_gc_paused = False


def pause_gc_for_startup() -> None:
    """Turn the cyclic garbage collector off until :func:`run_reactor_with` has started
    the service; call it first thing in a command that serves.

    Start-up creates ~100,000 objects that live as long as the process (modules,
    classes, functions, the methods dataclasses generate) and almost no garbage; the
    collector's passes over them while they were being made were ~5% of start-up's
    instructions (callgrind, issue 19). Once the service has started they are frozen
    (:func:`gc.freeze`: moved to the permanent generation) before the collector is
    turned back on, so no later full collection walks them again either: one such pass
    over a started gateway cost ~40 ms of CPU on the reactor thread, after the freeze
    ~0. What start-up left as cyclic garbage (~1,700 objects) is frozen with them."""
    global _gc_paused
    gc.disable()
    _gc_paused = True


def _resume_gc() -> None:
    """End :func:`pause_gc_for_startup`'s pause (nothing when there was none)."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def run_reactor_with(build: Callable[[Any], Any]) -> int:
    """Start the service ``build(reactor)`` returns, run until SIGINT/SIGTERM, stop cleanly."""
    from twisted.internet import reactor

    from gateway.app import logs

    logs.route_twisted_logs()
    outcome = {"status": 0}

    def start() -> None:
        try:
            svc = build(reactor)
            svc.startService()
        except SystemExit as e:
            print(e, file=sys.stderr)
            outcome["status"] = 1
            reactor.stop()
            return
        except Exception as e:
            # a listener that cannot bind, a store that cannot open: say so, exit non-zero
            print(f"popgate: cannot start: {e}", file=sys.stderr)
            outcome["status"] = 1
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
        _resume_gc()

    reactor.callWhenRunning(start)
    try:
        reactor.run()
    finally:
        _resume_gc()
    return outcome["status"]
