"""Running a service on the global reactor until SIGINT/SIGTERM, as ``popgate serve`` does.

Shared by ``popgate serve``, ``popgate demo`` and the benchmark's worker, so that all three
start, report start-up failures and stop the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


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

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["status"]
