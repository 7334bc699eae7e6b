"""An in-process popgate IMAP listener with the security knobs exposed (listener policy,
implicit TLS, login penalty, limits, fake clock), for the tests/test_security_*.py files.

It runs on the shared reactor thread of :mod:`tests.imap_helpers` and hands back the
same :class:`~tests.imap_helpers.ServerHandle`, so :class:`RawClient` works unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.imap.factory import IMAPServerFactory, ListenerFactory
from gateway.imap.policy import IMAPLimits, ListenerPolicy, thread_runner
from gateway.security.auth import PasswordTable
from gateway.security.penalty import AuthPenalty, PenaltySettings
from gateway.store.sqlite import SQLiteStore
from tests.imap_helpers import (
    HOST,
    PASSWORD,
    USER,
    ServerHandle,
    _shutdown,
    on_reactor,
    password_hash,
    reactor,
)

WAIT_LIMIT = 30.0
"""Seconds :func:`wait_until` polls before failing (a safety net, not a speed claim)."""


def wait_until(handle: ServerHandle, predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` on the reactor thread until it holds."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not handle.call(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


@contextmanager
def serving(
    directory: Path,
    *,
    policy: ListenerPolicy | None = None,
    tls: Any = None,
    limits: IMAPLimits | None = None,
    penalty: PenaltySettings | None = None,
    fake_clock: bool = True,
    users: dict[str, str] | None = None,
) -> Iterator[ServerHandle]:
    """A listener on 127.0.0.1:0. With ``policy.implicit_tls`` the listener wraps every
    connection in TLS with ``tls`` (IMAPS). ``penalty`` turns the login penalty on."""
    policy = policy if policy is not None else ListenerPolicy()
    clock = task.Clock() if fake_clock else None
    table = PasswordTable(
        {name: password_hash(pw) for name, pw in (users or {USER: PASSWORD}).items()}
    )

    def start() -> tuple[SQLiteStore, IMAPServerFactory, Any]:
        store = SQLiteStore(directory / "popgate.sqlite")
        for name in users or {USER: PASSWORD}:
            store.ensure_user(name)
        factory = IMAPServerFactory(
            store,
            table,
            reactor=reactor,
            run_blocking=thread_runner(reactor),
            limits=limits,
            tls_context_factory=tls,
            allow_plaintext_auth=True,
            clock=clock,
            penalty=AuthPenalty(clock or reactor, penalty) if penalty is not None else None,
        )
        wrapped: Any = ListenerFactory(factory, policy)
        if policy.implicit_tls:
            wrapped = TLSMemoryBIOFactory(tls, False, wrapped)
        listening = reactor.listenTCP(0, wrapped, interface=HOST)
        return store, factory, listening

    store, factory, listening = on_reactor(start)
    handle = ServerHandle(listening.getHost().port, store, factory, clock)
    try:
        yield handle
    finally:
        on_reactor(_shutdown, listening, factory, store)


def pending_delays(handle: ServerHandle) -> list[float]:
    """Seconds until each pending fake-clock call (timeouts and login delays)."""
    clock = handle.clock
    assert clock is not None

    def read() -> list[float]:
        now = clock.seconds()
        return sorted(round(c.getTime() - now, 6) for c in clock.getDelayedCalls() if c.active())

    return handle.call(read)
