"""An in-process popgate IMAP server on a real loopback socket, and a raw client for
exact-bytes tests: the one socket-level IMAP driver of the test suites.

How it runs (chosen for robustness with plain pytest, no pytest-twisted):

* A Twisted reactor runs in one daemon thread for the whole test process
  (:class:`gateway.testing.reactor_thread.ReactorThread`, shared with the other suites), started on
  first use; a reactor cannot be restarted, so it is never stopped and the daemon thread
  ends with the process. The reactor is passed in; by default the global one.
* Everything that touches Twisted objects or the store runs *on the reactor thread*,
  through :meth:`ServerHandle.call`. :class:`SQLiteStore` is single-threaded by design,
  and its change listeners must fire on the reactor thread for IDLE pushes, so tests never
  call the store directly.
* Each :func:`running_server` gets a fresh SQLite file in the given directory, the user
  table, and an :class:`IMAPServerFactory` listening on 127.0.0.1 port 0 (through a
  :class:`ListenerFactory` when a listener policy is given, wrapped in TLS for IMAPS);
  on exit it stops listening, aborts remaining connections, waits for them to go, and
  closes the store.
* ``backend="postgresql"`` serves from a PostgreSQL store (a fresh schema of the
  process's shared test server, :mod:`gateway.testing.postgres`) instead: the factory
  gets a :class:`ThreadRunner`, so command steps run on store threads, listeners are
  handed to the reactor with ``callFromThread``, and the store's reactor-thread guard is
  on (a store call on the reactor fails the test). :meth:`ServerHandle.store_call` makes
  a test's own store calls where the backend wants them.
* Password checks go through :func:`thread_runner` (the production path: the reactor's
  thread pool) against :class:`gateway.testing.auth.CheapPasswords`, or against a real
  scrypt :class:`PasswordTable` with ``scrypt=True`` (the security tests). Timers may use
  a ``task.Clock`` (``fake_clock=True``), advanced with :meth:`ServerHandle.advance`;
  store-change notification always uses the real reactor.

:class:`RawClient` is a blocking socket client: send bytes, read lines until the tagged
completion (literals inside responses are read whole). Its socket timeout is only a
safety net against a hung test, never an assertion about speed.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import task
from twisted.internet.defer import inlineCallbacks
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.imap.factory import IMAPServerFactory, ListenerFactory
from gateway.imap.policy import IMAPLimits, ListenerPolicy, thread_runner
from gateway.security.auth import Authenticator, PasswordTable
from gateway.security.passwords import hash_password
from gateway.security.penalty import AuthPenalty, KnownSourceBook, PenaltySettings
from gateway.store.interfaces import Store
from gateway.store.runner import ThreadRunner
from gateway.store.sqlite import SQLiteStore
from gateway.testing.auth import CheapPasswords
from gateway.testing.messages import message
from gateway.testing.reactor_thread import ReactorThread

HOST = "127.0.0.1"
USER = "alice"
PASSWORD = "alice-password"
SOCKET_TIMEOUT = 20.0
"""Seconds a RawClient read may block before the test fails instead of hanging."""

REACTOR_CALL_TIMEOUT = 60.0
SHUTDOWN_POLLS = 200
"""Reactor turns (10 ms each) to wait for server connections to go at shutdown."""

WAIT_LIMIT = 30.0
"""Seconds :meth:`ServerHandle.wait_until` polls before failing (a safety net, not a
speed claim)."""

T = TypeVar("T")

_hashes: dict[str, str] = {}


def global_reactor() -> Any:
    """The global reactor, imported only when a caller passes none."""
    from twisted.internet import reactor

    return reactor


def ensure_reactor(reactor: Any = None) -> ReactorThread:
    """The process-wide thread running ``reactor`` (default: the global one), started once
    and shared with every other helper that runs the same reactor."""
    return ReactorThread.shared(reactor if reactor is not None else global_reactor())


def on_reactor(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the global reactor's thread and return its result (waiting for a
    Deferred); a call that hangs fails after ``REACTOR_CALL_TIMEOUT`` seconds instead."""
    return ensure_reactor().call(fn, *args, timeout=REACTOR_CALL_TIMEOUT, **kwargs)


def password_hash(password: str) -> str:
    """scrypt costs ~50 ms: hash each test password once per process."""
    if password not in _hashes:
        _hashes[password] = hash_password(password)
    return _hashes[password]


def scrypt_table(accounts: Mapping[str, str]) -> PasswordTable:
    """The product's authenticator over real scrypt hashes of ``accounts``."""
    return PasswordTable({name: password_hash(pw) for name, pw in accounts.items()})


def tagged_line(reply: bytes) -> bytes:
    """The tagged completion line of a command's reply (without its CRLF)."""
    return reply.rstrip(b"\r\n").split(b"\r\n")[-1]


BACKENDS = ("sqlite", "postgresql")
"""The stores :func:`running_server` can serve from."""


@dataclass
class ServerHandle:
    port: int
    store: Store
    factory: IMAPServerFactory
    clock: task.Clock | None
    passwords: Mapping[str, str] = field(default_factory=dict)
    """The accounts the server accepts (name → password), for :meth:`login`."""

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return on_reactor(fn, *args, **kwargs)

    def store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call from the test: on the reactor thread for an inline store (its
        listeners fire there), on the test's own thread otherwise (the store is
        thread-safe and hands its listeners to the reactor itself)."""
        if self.store.runs_inline:
            return self.call(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def mailbox_id(self, name: str = "INBOX", user: str = USER) -> int:
        return self.store_call(lambda: self.store.get_mailbox(user, name).id)

    def append(
        self, name: str = "INBOX", raw: bytes | None = None, flags: tuple[str, ...] = ()
    ) -> int:
        """Deliver a message straight into the store (as the POP3 fetcher would)."""
        mailbox_id = self.mailbox_id(name)
        return self.store_call(self.store.append, mailbox_id, raw or message(), list(flags))

    def advance(self, seconds: float) -> None:
        """Move the fake clock (only with ``fake_clock=True``)."""
        assert self.clock is not None, "server was started without fake_clock"
        self.call(self.clock.advance, seconds)

    def pending_delays(self) -> list[float]:
        """Seconds until each pending fake-clock call (timeouts and login delays)."""
        clock = self.clock
        assert clock is not None, "server was started without fake_clock"

        def read() -> list[float]:
            now = clock.seconds()
            return sorted(
                round(c.getTime() - now, 6) for c in clock.getDelayedCalls() if c.active()
            )

        return self.call(read)

    def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Poll ``predicate`` on the reactor thread until it holds."""
        deadline = time.monotonic() + WAIT_LIMIT
        while not self.call(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            time.sleep(0.01)

    def connect(self) -> RawClient:
        return RawClient(self.port)

    def login(self, user: str = USER) -> RawClient:
        """A new connection, greeted and logged in as ``user``."""
        client = self.connect()
        client.login(user, self.passwords[user])
        return client

    def imaplib_client(self) -> imaplib.IMAP4:
        """A standard-library ``imaplib.IMAP4`` connection, greeted, not logged in."""
        return imaplib.IMAP4(HOST, self.port, timeout=SOCKET_TIMEOUT)

    def imapclient(self, user: str = USER) -> Any:
        """An ``imapclient.IMAPClient`` (the test extra) logged in as ``user``."""
        from imapclient import IMAPClient

        client = IMAPClient(HOST, port=self.port, ssl=False, timeout=SOCKET_TIMEOUT)
        client.login(user, self.passwords[user])
        return client

    def session_count(self) -> int:
        return self.call(lambda: len(self.factory.protocols))


@contextmanager
def running_server(
    directory: Path,
    *,
    fake_clock: bool = False,
    limits: IMAPLimits | None = None,
    tls_context_factory: Any = None,
    allow_plaintext_auth: bool = True,
    seed_user: bool = True,
    users: Mapping[str, str] | None = None,
    shared: Mapping[str, Iterable[str]] | None = None,
    quotas: Mapping[str, int] | None = None,
    policy: ListenerPolicy | None = None,
    penalty: PenaltySettings | None = None,
    scrypt: bool = False,
    authenticator: Authenticator | None = None,
    known_sources: KnownSourceBook | None = None,
    backend: str = "sqlite",
) -> Iterator[ServerHandle]:
    """A listening server for one test; see the module docstring.

    ``users`` (name → password) are accounts besides alice; ``shared`` (household →
    members) configures shared mailboxes as ``[shared.NAME]`` would; ``quotas`` are
    bytes by owner (``"alice"``, ``"shared:family"``). With ``policy`` the listener
    applies it, and with ``policy.implicit_tls`` wraps every connection in TLS with
    ``tls_context_factory`` (IMAPS). ``penalty`` turns the login penalty on. ``scrypt``
    checks passwords with the product's scrypt table instead of the cheap one;
    ``authenticator`` replaces either (e.g. one that counts or holds checks).
    ``known_sources`` is where the penalty keeps known sources (default: memory only).
    ``backend`` is one of :data:`BACKENDS`.
    """
    reactor = global_reactor()
    ensure_reactor(reactor)
    accounts = {USER: PASSWORD, **(users or {})}
    table: Authenticator = scrypt_table(accounts) if scrypt else CheapPasswords(accounts)
    if authenticator is not None:
        table = authenticator
    clock = task.Clock() if fake_clock else None
    pg_store, store_threads, release = _postgresql_parts(reactor, backend)
    if pg_store is not None and seed_user:
        pg_store.ensure_user(USER)

    def start() -> tuple[Store, IMAPServerFactory, Any]:
        store: Store
        if pg_store is not None:
            store = pg_store
            pg_store.forbidden_thread = threading.get_ident()  # the reactor's
        else:
            store = SQLiteStore(directory / "popgate.sqlite")
            if seed_user:
                store.ensure_user(USER)
        factory = IMAPServerFactory(
            store,
            table,
            reactor=reactor,
            run_blocking=thread_runner(reactor),
            limits=limits,
            tls_context_factory=tls_context_factory,
            allow_plaintext_auth=allow_plaintext_auth,
            clock=clock,
            penalty=(
                AuthPenalty(clock or reactor, penalty, known_sources)
                if penalty is not None
                else None
            ),
            store_runner=store_threads,
            group_commit=True,  # as the service runs it
        )
        if shared:
            factory.households.update(shared)
        if quotas:
            factory.quotas.update(quotas)
        listener: Any = factory
        if policy is not None:
            listener = ListenerFactory(factory, policy)
            if policy.implicit_tls:
                listener = TLSMemoryBIOFactory(tls_context_factory, False, listener)
        listening = reactor.listenTCP(0, listener, interface=HOST)
        return store, factory, listening

    store, factory, listening = on_reactor(start)
    handle = ServerHandle(listening.getHost().port, store, factory, clock, accounts)
    try:
        yield handle
    finally:
        on_reactor(_shutdown, reactor, listening, factory, store if pg_store is None else None)
        release()  # after the connections went: stops the store's threads, then closes it


def _postgresql_parts(
    reactor: Any, backend: str
) -> tuple[Any, ThreadRunner | None, Callable[[], None]]:
    """For ``backend="postgresql"``: the store (a fresh schema), a started ThreadRunner
    and what undoes both after the store is closed; (None, None, no-op) for SQLite."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")
    if backend == "sqlite":
        return None, None, lambda: None
    from twisted.python.threadpool import ThreadPool

    from gateway.store.postgres import PostgresStore
    from gateway.testing.postgres import acquire_schema, release_schema, shared_server

    server = shared_server()
    schema = acquire_schema(server)
    store = PostgresStore(
        server.dsn,
        password=server.password,
        schema=schema,
        pool_size=4,
        dispatcher=reactor.callFromThread,
    )
    pool = ThreadPool(minthreads=0, maxthreads=4, name="test-store")
    pool.start()

    def release() -> None:
        pool.stop()
        store.close()
        release_schema(server, schema)

    return store, ThreadRunner(reactor, pool), release


def _shutdown(reactor: Any, listening: Any, factory: IMAPServerFactory, store: Store | None) -> Any:
    @inlineCallbacks
    def run() -> Any:
        yield listening.stopListening()
        for protocol in list(factory.protocols):
            protocol.transport.abortConnection()
        for _ in range(SHUTDOWN_POLLS):
            if not factory.protocols:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        if store is not None:
            store.close()

    return run()


_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")


class RawClient:
    """A blocking IMAP client speaking raw bytes, for exact-bytes assertions."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (HOST, port), timeout=SOCKET_TIMEOUT
        )
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_line(self) -> bytes:
        """One response line with its CRLF; a line announcing a literal includes the
        literal and the rest of the line after it."""
        out = b""
        while True:
            while b"\r\n" not in self.buffer:
                if not self._fill():
                    raise ConnectionError(f"connection closed; partial data {self.buffer!r}")
            index = self.buffer.index(b"\r\n") + 2
            line, self.buffer = self.buffer[:index], self.buffer[index:]
            out += line
            m = _LITERAL_END.search(line)
            if m is None:
                return out
            size = int(m.group(1))
            while len(self.buffer) < size:
                if not self._fill():
                    raise ConnectionError("connection closed inside a literal")
            out += self.buffer[:size]
            self.buffer = self.buffer[size:]

    def read_until_tagged(self, tag: str) -> bytes:
        """Every line up to and including the tagged completion for ``tag``."""
        out = b""
        prefix = tag.encode() + b" "
        while True:
            line = self.read_line()
            out += line
            if line.startswith(prefix):
                return out

    def command(self, tag: str, text: str | bytes) -> bytes:
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.read_until_tagged(tag)

    def greeting(self) -> bytes:
        return self.read_line()

    def login(self, user: str = USER, password: str = PASSWORD) -> bytes:
        self.greeting()
        reply = self.command("L1", f'LOGIN {user} "{password}"')
        assert reply.startswith(b"L1 OK"), reply
        return reply

    def read_to_eof(self) -> bytes:
        """Everything until the server closes the connection."""
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def start_deflate(self) -> None:
        """After a ``COMPRESS DEFLATE`` answered OK: raw deflate both ways (RFC 4978 §4)."""
        assert not self.buffer, f"unread data before COMPRESS took effect: {self.buffer!r}"
        self.sock = DeflateSocket(self.sock)  # type: ignore[assignment]

    def start_tls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        assert not self.buffer, f"unread plaintext before TLS: {self.buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeflateSocket:
    """A socket as a COMPRESS client sees it after the OK (RFC 4978 §4): raw deflate
    (``wbits=-15``) both ways, each send sync-flushed. ``sock`` is the socket below."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH))

    def recv(self, size: int) -> bytes:
        """Inflated bytes; empty only at the end of the stream."""
        while True:
            chunk = self.sock.recv(size)
            if not chunk:
                return b""
            data = self._in.decompress(chunk)
            if data:
                return data

    def close(self) -> None:
        self.sock.close()
