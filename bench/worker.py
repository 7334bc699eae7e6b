"""Child-process entry points of the benchmark: ``python -m bench.worker serve|ingest``.

Each runs real popgate code on Twisted's global reactor in a process of its own (a
reactor cannot be restarted, and the parent must stay free to drive clients):

* ``serve``: the gateway as ``popgate serve`` runs it (:func:`gateway.app.runner.run_reactor_with`
  over :func:`gateway.app.service.build_service`), plus :class:`LagProbe`;
* ``ingest``: one :func:`gateway.pop3.fetcher.fetch_once` pass into a fresh store (a
  SQLite file, or with ``--dsn`` an empty PostgreSQL database, its calls on store threads
  as the service makes them); prints a JSON report on stdout (with ``vmhwm``, the
  process's peak RSS in bytes, for the first-import figure).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

PROBE_INTERVAL = 0.005
"""Seconds between lag-probe ticks: a tick scheduled for t that runs at t + x saw x of lag."""

MAX_PROBE_SAMPLES = 1_000_000
"""Lag samples kept between resets (about 80 minutes at one every 5 ms)."""


class LagProbe:
    """Measures reactor lag: how late a timer fires compared with when it was due.

    A reactor that runs a 300 ms piece of blocking work shows ~300 ms of lag to every
    timer and every connection waiting meanwhile, so this is the latency any client
    could see added by popgate's event loop. SIGUSR1 resets the samples; SIGUSR2 writes
    {count, p50, p99, max} in milliseconds to the report file.
    """

    def __init__(self, reactor: Any, report: Path, interval: float = PROBE_INTERVAL) -> None:
        self.reactor = reactor
        self.report = report
        self.interval = interval
        self.samples: list[float] = []
        self._due = 0.0

    def start(self) -> None:
        signal.signal(signal.SIGUSR1, lambda *_: self.samples.clear())
        signal.signal(signal.SIGUSR2, lambda *_: self.write())
        self._schedule()

    def _schedule(self) -> None:
        self._due = time.monotonic() + self.interval
        self.reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, time.monotonic() - self._due)
        if len(self.samples) < MAX_PROBE_SAMPLES:
            self.samples.append(lag)
        self._schedule()

    def write(self) -> None:
        ordered = sorted(self.samples)

        def at(fraction: float) -> float:
            if not ordered:
                return 0.0
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

        figures = {
            "count": len(ordered),
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "max_ms": (ordered[-1] * 1000) if ordered else 0.0,
        }
        temporary = self.report.with_suffix(".tmp")
        temporary.write_text(json.dumps(figures))
        temporary.replace(self.report)


PROFILE_DIR_VARIABLE = "POPGATE_BENCH_PROFILE_DIR"
"""When set, ``serve`` profiles its reactor thread (cProfile) and writes
``serve-PID.prof`` there at shutdown: what the event loop itself spends its time on."""

PROFILE_CPU_VARIABLE = "POPGATE_BENCH_PROFILE_CPU"
"""When also set (to anything), the profile counts the reactor thread's CPU time
(``time.thread_time``) instead of wall time: on a machine busy with other work, wall
time charges the moments the thread waited for a CPU to whatever it was running."""


def profile_reactor_thread(reactor: Any) -> None:
    """cProfile the reactor thread (the calling one) until shutdown, if asked."""
    import cProfile
    import os

    directory = os.environ.get(PROFILE_DIR_VARIABLE)
    if not directory:
        return
    profiler = (
        cProfile.Profile(time.thread_time)
        if os.environ.get(PROFILE_CPU_VARIABLE)
        else cProfile.Profile()
    )
    profiler.enable()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(str(Path(directory) / f"serve-{os.getpid()}.prof"))

    reactor.addSystemEventTrigger("before", "shutdown", dump)


def serve(args: argparse.Namespace) -> int:
    from gateway.app.runner import pause_gc_for_startup, run_reactor_with

    pause_gc_for_startup()  # as `popgate serve` (gateway/cli/serve.py)
    from gateway.app import config as configmod
    from gateway.app import logs
    from gateway.app.service import build_service

    cfg = configmod.load(args.config)
    logs.configure(cfg.log_level, cfg.log_format)

    def build(reactor: Any) -> Any:
        service = build_service(cfg, reactor)
        LagProbe(reactor, Path(args.probe)).start()
        profile_reactor_thread(reactor)
        return service

    return run_reactor_with(build)


def peak_rss() -> int:
    """This process's peak resident set (``VmHWM``, Linux /proc) in bytes; 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def ingest(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from gateway.access.filtering import SieveDelivery
    from gateway.app import logs
    from gateway.app.config import Upstream
    from gateway.pop3.fetcher import fetch_once
    from gateway.store.runner import InlineRunner, StoreRunner, ThreadRunner
    from gateway.store.sqlite import SQLiteStore

    logs.configure("warning", "json", stream=sys.stderr)
    store: Any
    runner: StoreRunner = InlineRunner()
    pool: Any = None
    if args.dsn:
        from twisted.python.threadpool import ThreadPool

        from gateway.app.service import STORE_THREADS
        from gateway.store.postgres import PostgresStore

        password = Path(args.password_file).read_text().strip() if args.password_file else None
        store = PostgresStore(args.dsn, password=password, pool_size=STORE_THREADS)
        pool = ThreadPool(minthreads=0, maxthreads=STORE_THREADS, name="store")
        pool.start()
        runner = ThreadRunner(reactor, pool)
    else:
        store = SQLiteStore(args.store)
    if args.sieve:
        store.put_script("alice", "bench", Path(args.sieve).read_text())
        store.set_active("alice", "bench")
    # As the service wires it: Sieve in front of the store (a pass-through without a script).
    ledger = SieveDelivery(store, store, store, addresses={"bench": None})
    upstream = Upstream(
        name="bench",
        owner="alice",
        host=args.host,
        port=args.port,
        tls="none",
        username=args.user,
        password=args.password,
        timeout=120.0,
    )
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.perf_counter()
        d = fetch_once(upstream, ledger, reactor=reactor, runner=runner)

        def done(result: Any) -> None:
            outcome["seconds"] = time.perf_counter() - started
            outcome["fetched"] = result.fetched
            outcome["bytes"] = result.bytes
            outcome["errors"] = result.errors

        def failed(failure: Any) -> None:
            outcome["error"] = failure.getErrorMessage()

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if pool is not None:
        pool.stop()
    store.close()
    outcome["vmhwm"] = peak_rss()
    print(json.dumps(outcome))
    return 0 if "error" not in outcome else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--config", required=True)
    p.add_argument("--probe", required=True)
    p.set_defaults(func=serve)
    p = sub.add_parser("ingest")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--sieve", help="a Sieve script to make the owner's active one")
    p.add_argument("--dsn", help="fetch into this (empty) PostgreSQL database instead")
    p.add_argument("--password-file", help="the PostgreSQL role's password")
    p.set_defaults(func=ingest)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
