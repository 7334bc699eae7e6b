"""A whole popgate node on PostgreSQL, in-process, with the reactor-thread guard raising:
the proof that no server makes a database round trip on the reactor.

:func:`postgres_node` builds the gateway exactly as ``popgate serve`` does
(:func:`gateway.app.service.build_service`, from a config file written by
:class:`~gateway.testing.gateway_proc.GatewayProcess`) on the shared test reactor
(:class:`~gateway.testing.reactor_thread.ReactorThread`), over a PostgreSQL store on a
clean schema of the shared test server. Before anything is built the store is told that
the reactor thread is forbidden (``forbidden_thread``, ``guard_raises = True``: a
connection taken there raises :class:`~gateway.store.postgres.ReactorThreadCall`), and
every connection the store takes is checked by :class:`ReactorGuard`, which records the
stack of each one taken on the reactor thread, so a call whose error a server swallowed
is still seen. A test drives the node's listeners with real clients and ends with
``node.guard.assert_clean()``.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer

from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.reactor_thread import ReactorThread

STORE_POOL = 8
"""Connections of the node's store (as many as the service's store threads)."""


@dataclass
class ReactorGuard:
    """Counts the store's connections taken on the reactor thread (with their stacks),
    on top of the store's own raising guard."""

    store: Any
    calls: list[str] = field(default_factory=list)

    def install(self, reactor_thread: int) -> None:
        """Forbid ``reactor_thread`` (raise there) and record every attempt on it."""
        store = self.store
        store.forbidden_thread = reactor_thread
        store.guard_raises = True
        original = store._connection

        def checked(*args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
            if threading.get_ident() == store.forbidden_thread:
                self.calls.append("".join(traceback.format_stack(limit=25)))
            return original(*args, **kwargs)

        store._connection = checked

    def raise_again(self) -> None:
        """The service sets ``guard_raises = False`` (log only) when it starts; tests
        want the exception."""
        self.store.guard_raises = True

    def assert_clean(self) -> None:
        assert (
            not self.calls
        ), f"{len(self.calls)} store call(s) on the reactor thread; the first:\n{self.calls[0]}"


@dataclass
class PGNode:
    """A running in-process node: its config (ports in ``process``), service tree, store."""

    process: GatewayProcess
    top: Any
    store: Any
    guard: ReactorGuard
    runner: ReactorThread

    @property
    def state_dir(self) -> Path:
        return self.process.state_dir

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the reactor thread; its (Deferred's) result."""
        return self.runner.call(fn, *args, **kwargs)


@contextmanager
def postgres_node(
    workdir: Path,
    *,
    users: dict[str, str],
    upstreams: list[dict[str, Any]] = (),  # type: ignore[assignment]
    extra_server: dict[str, Any] | None = None,
    tables: dict[str, dict[str, Any]] | None = None,
    managesieve: bool = False,
) -> Iterator[PGNode]:
    """The node, started; stopped (store closed, schema given back) on exit. The
    arguments are :class:`GatewayProcess`'s (the ``[store]`` table is added here)."""
    from twisted.internet import reactor

    from gateway.app import config as configmod
    from gateway.app.service import build_service
    from gateway.testing.postgres import open_test_store, shared_server

    server = shared_server()
    store = open_test_store(pool_size=STORE_POOL)
    password_file = workdir / "pg-password"
    workdir.mkdir(parents=True, exist_ok=True)
    server.write_password_file(password_file)
    process = GatewayProcess(
        workdir / "node",
        users=users,
        upstreams=list(upstreams),
        extra_server=extra_server,
        tables={
            "store": {
                "backend": "postgresql",
                "dsn": server.dsn,
                "password_file": str(password_file),
            },
            "cluster": {"node": "guarded"},
            **(tables or {}),
        },
        managesieve=managesieve,
    )
    cfg = configmod.load(process.config_path)
    runner = ReactorThread.shared(reactor)
    guard = ReactorGuard(store)

    def start() -> Any:
        guard.install(threading.get_ident())
        top = build_service(cfg, reactor, store=store)
        top.startService()
        return top

    try:
        top = runner.call(start)
    except BaseException:
        store.close()
        raise
    runner.call(guard.raise_again)  # after the service's own (logging) guard setting
    node = PGNode(process, top, store, guard, runner)
    try:
        yield node
    finally:
        runner.call(lambda: defer.maybeDeferred(top.stopService), timeout=60)
