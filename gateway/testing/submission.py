"""An in-process submission relay on real loopback sockets: the server, an outbound
queue (SQLite or memory), the relay service, and recorders for Sent copies and bounces.

Everything runs on the shared reactor thread (gateway.testing.reactor_thread.ReactorThread, as
gateway/testing/imapclient.py does): the queue's SQLite connection is created there and only
touched through :meth:`SubmissionGateway.call`. Password checks use the reactor's
thread pool (the production ``run_blocking``). The relay's retry schedule and poll
interval are shortened so "later" means a fraction of a second.

Listeners: ``port`` (submission, STARTTLS, plaintext AUTH allowed: loopback),
``strict_port`` (submission, STARTTLS, a listener policy that says "not local": AUTH
only after TLS), ``implicit_port`` (submissions, RFC 8314 implicit TLS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor as _global_reactor
from twisted.internet import threads

from gateway.security.auth import PasswordTable
from gateway.security.passwords import hash_password
from gateway.security.penalty import AuthPenalty, PenaltySettings
from gateway.security.tls import ServerTLS, TLSFiles
from gateway.store.memory_queue import MemoryOutboundQueue
from gateway.store.queue import OutboundQueue, QueueItem
from gateway.store.sqlite_queue import SQLiteOutboundQueue
from gateway.submission.accept import Acceptor
from gateway.submission.policy import (
    SenderPolicy,
    SmtpUpstream,
    SubmissionLimits,
    SubmissionRoute,
)
from gateway.submission.relay import RelayService
from gateway.submission.sent import SentCopy, SentDedup
from gateway.submission.server import ListenerFactory, ListenerPolicy, SubmissionFactory
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import CA

reactor: Any = _global_reactor
T = TypeVar("T")

HOST = "127.0.0.1"
USERS = {"alice": "alice-password", "bob": "bob-password"}
UPSTREAM_USER, UPSTREAM_PASSWORD = "relay-user", "relay-password"
RETRY = (0.3,)
"""Retry delay used by the tests' relay (seconds)."""

_hashes: dict[str, str] = {}


def on_reactor(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return ReactorThread.shared(reactor).call(fn, *args, timeout=60.0, **kwargs)


def _hash(password: str) -> str:
    if password not in _hashes:
        _hashes[password] = hash_password(password)
    return _hashes[password]


def routes_for(smtp: SmtpUpstream | None) -> list[SubmissionRoute]:
    """alice and bob each have an upstream; both share the household's."""
    return [
        SubmissionRoute("alice-isp", ("alice@isp.example",), frozenset({"alice"}), smtp),
        SubmissionRoute("bob-isp", ("bob@isp.example",), frozenset({"bob"}), smtp),
        SubmissionRoute("family", ("family@home.example",), frozenset({"alice", "bob"}), smtp),
    ]


def upstream_for(port: int, ca: CA, tls: str = "starttls") -> SmtpUpstream:
    return SmtpUpstream(
        host="localhost",
        port=port,
        tls=tls,
        ca_file=str(ca.cert_path),
        username=UPSTREAM_USER,
        password=UPSTREAM_PASSWORD,
        timeout=10.0,
    )


@dataclass
class SubmissionGateway:
    port: int
    strict_port: int
    implicit_port: int
    queue: OutboundQueue
    relay: RelayService
    factory: SubmissionFactory
    sent: list[tuple[str, SentCopy]] = field(default_factory=list)
    bounces: list[tuple[str, bytes]] = field(default_factory=list)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return on_reactor(fn, *args, **kwargs)

    def items(self) -> list[QueueItem]:
        def all_items() -> list[QueueItem]:
            out = []
            item_id = 1
            while True:
                try:
                    out.append(self.queue.get(item_id))
                except Exception:
                    return out
                item_id += 1

        return self.call(all_items)

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; queue: {self.items()}")
            time.sleep(0.05)

    def wait_state(self, item_id: int, state: str, timeout: float = 20.0) -> QueueItem:
        self.wait(lambda: self.call(self.queue.get, item_id).state == state, timeout)
        return self.call(self.queue.get, item_id)


@contextmanager
def running_gateway(
    directory: Path,
    ca: CA,
    smtp: SmtpUpstream | None,
    *,
    limits: SubmissionLimits | None = None,
    backend: str = "sqlite",
    relay_running: bool = True,
    users: Mapping[str, str] = USERS,
) -> Iterator[SubmissionGateway]:
    cert, key = ca.issue(directory / "server-tls")
    tls = ServerTLS(TLSFiles(str(cert), str(key)))
    table = PasswordTable({name: _hash(pw) for name, pw in users.items()})

    def run_blocking(call: Callable[[], Any]) -> Any:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), call)

    def start() -> SubmissionGateway:
        queue: OutboundQueue = (
            SQLiteOutboundQueue(directory / "queue.sqlite")
            if backend == "sqlite"
            else MemoryOutboundQueue()
        )
        sent: list[tuple[str, SentCopy]] = []
        bounces: list[tuple[str, bytes]] = []
        policy = SenderPolicy(routes_for(smtp))

        def smtp_of(name: str) -> SmtpUpstream | None:
            route = policy.route_named(name)
            return route.smtp if route is not None else None

        relay = RelayService(
            queue,
            smtp_of,
            reactor=reactor,
            file_bounce=lambda user, raw: bounces.append((user, raw)),
            hostname="gw.test",
            poll_interval=0.2,
            schedule=RETRY,
        )

        def file_sent(user: str, copy: SentCopy) -> int:
            sent.append((user, copy))
            return len(sent)

        accept = Acceptor(
            queue,
            clock=reactor,
            file_sent=file_sent,
            dedup=SentDedup(),
            on_enqueued=relay.kick if relay_running else None,
        )
        factory = SubmissionFactory(
            policy=policy,
            authenticator=table,
            accept=accept,
            reactor=reactor,
            run_blocking=run_blocking,
            hostname="gw.test",
            limits=limits,
            tls_context_factory=tls,
            allow_plaintext_auth=False,
            penalty=AuthPenalty(reactor, PenaltySettings(initial_delay=0.01, max_delay=0.02)),
        )
        loose = reactor.listenTCP(
            0, ListenerFactory(factory, ListenerPolicy(plaintext_auth=True)), interface=HOST
        )
        strict = reactor.listenTCP(
            0, ListenerFactory(factory, ListenerPolicy(plaintext_auth=False)), interface=HOST
        )
        implicit = reactor.listenSSL(
            0, ListenerFactory(factory, ListenerPolicy(implicit_tls=True)), tls, interface=HOST
        )
        if relay_running:
            relay.startService()
        gateway = SubmissionGateway(
            port=loose.getHost().port,
            strict_port=strict.getHost().port,
            implicit_port=implicit.getHost().port,
            queue=queue,
            relay=relay,
            factory=factory,
            sent=sent,
            bounces=bounces,
        )
        gateway._ports = (loose, strict, implicit)  # type: ignore[attr-defined]
        return gateway

    gateway = on_reactor(start)
    try:
        yield gateway
    finally:
        on_reactor(_shutdown, gateway)


async def _shutdown_async(gateway: SubmissionGateway) -> None:
    if gateway.relay.running:
        await gateway.relay.stopService()
    for port in gateway._ports:  # type: ignore[attr-defined]
        await port.stopListening()
    for protocol in list(gateway.factory.protocols):
        protocol.transport.abortConnection()
    close = getattr(gateway.queue, "close", None)
    if close is not None:
        close()


def _shutdown(gateway: SubmissionGateway) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(_shutdown_async(gateway))


def message(
    sender: str = "alice@isp.example",
    to: str = "bob@example.org",
    bcc: str | None = "hidden@example.net",
    subject: str = "Hello",
    message_id: str = "<m1@isp.example>",
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}"]
    if bcc:
        lines.append(f"Bcc: {bcc}")
    lines += [f"Subject: {subject}", f"Message-ID: {message_id}", "", "Hi there.", ""]
    return "\r\n".join(lines).encode()
