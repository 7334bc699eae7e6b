"""Dovecot's own ManageSieve server (Pigeonhole ``managesieved``) as a reference peer.

popgate's ManageSieve server is compared with Pigeonhole's on status codes (OK/NO/BYE and
response codes) for the same command sequence. The instance is the private, unprivileged
Dovecot of :mod:`gateway.testing.dovecot` with the ``sieve`` protocol added through its
``extra_config``: a ``managesieve-login`` listener on a free loopback port, scripts in
``~/sieve`` with the active one linked from ``~/.dovecot.sieve``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor as _global_reactor
from twisted.internet import task
from twisted.internet.defer import inlineCallbacks

from gateway.access.filtering import check_script
from gateway.managesieve.server import (
    ListenerFactory,
    ListenerPolicy,
    ManageSieveFactory,
    ManageSieveLimits,
)
from gateway.security.penalty import AuthPenalty
from gateway.sieve import EXTENSIONS
from gateway.store.memory_scripts import MemoryScriptStore
from gateway.store.scripts import ScriptLimits
from gateway.testing.dovecot import DEBIAN_LIBEXEC, Dovecot, DovecotNotInstalled, DovecotStartError
from gateway.testing.imapclient import on_reactor, scrypt_table
from gateway.testing.ports import LOOPBACK, free_port
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import CA

MANAGESIEVE_PACKAGES: tuple[str, ...] = ("dovecot-managesieved", "dovecot-sieve")
"""Debian packages of Pigeonhole's ManageSieve server and the Sieve plugin it loads."""

READY_TIMEOUT = 15.0
"""Seconds to wait for the ManageSieve greeting after Dovecot started."""

MAX_SCRIPT_SIZE = 64 * 1024
"""sieve_max_script_size given to Pigeonhole, so size limits can be compared."""

MAX_SCRIPTS = 5
"""sieve_quota_max_scripts given to Pigeonhole, so script-count limits can be compared."""


def find_managesieved() -> Path:
    """The managesieve executable, or raise DovecotNotInstalled naming the packages."""
    binary = DEBIAN_LIBEXEC / "managesieve"
    if not binary.exists() or not (DEBIAN_LIBEXEC / "managesieve-login").exists():
        raise DovecotNotInstalled(
            f"{binary} missing; install the Debian packages: apt-get install "
            + " ".join(MANAGESIEVE_PACKAGES)
        )
    return binary


def _config(port: int) -> str:
    # Settings named as `doveconf -d` prints them for Dovecot 2.3.19 / Pigeonhole 0.5.19.
    return f"""
protocols = pop3 imap sieve
service managesieve-login {{
  chroot =
  inet_listener sieve {{
    address = {LOOPBACK}
    port = {port}
  }}
}}
protocol sieve {{
  managesieve_implementation_string = Dovecot Pigeonhole
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_max_script_size = {MAX_SCRIPT_SIZE}
  sieve_quota_max_scripts = {MAX_SCRIPTS}
  sieve_extensions = +vnd.dovecot.debug
}}
"""


class ManageSieved:
    """A private Dovecot with ManageSieve on ``127.0.0.1:port``; users as in Dovecot.

    Use as a context manager; ``add_user`` before or after start.
    """

    host: str = LOOPBACK

    def __init__(self, *, ca: CA | None = None) -> None:
        find_managesieved()
        self.port = free_port()
        self.dovecot = Dovecot(ca=ca, extra_config=_config(self.port))

    def add_user(self, name: str, password: str) -> None:
        self.dovecot.add_user(name, password)
        home = self.dovecot.mail_dir / name
        (home / "sieve").mkdir(parents=True, exist_ok=True)
        self.dovecot._chown_tree(home)

    def start(self) -> ManageSieved:
        self.dovecot.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not _greets(self.port):
            if time.monotonic() > deadline:
                raise DovecotStartError(
                    f"no ManageSieve greeting on port {self.port}\n{self.dovecot.log_tail()}"
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.dovecot.stop()

    def __enter__(self) -> ManageSieved:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _greets(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            return b"IMPLEMENTATION" in sock.recv(1024)
    except OSError:
        return False


def sieve_connect_binary() -> str | None:
    """The sieve-connect client (Debian ``sieve-connect``), or None."""
    return shutil.which("sieve-connect") or (
        "/usr/bin/sieve-connect" if os.path.exists("/usr/bin/sieve-connect") else None
    )


# ---- popgate's own ManageSieve server, in-process on a real loopback socket ---------------
# (the same arrangement as gateway/testing/imapclient.py: one shared reactor thread; everything
# touching Twisted or the store runs on it)

USER = "alice"
PASSWORD = "alice-password"
SIEVE_EXTENSIONS = EXTENSIONS
"""What the test server's SIEVE capability lists: the real engine's, as the service does."""

SOCKET_TIMEOUT = 20.0
"""Seconds a client read may block before the test fails instead of hanging."""

T = TypeVar("T")
reactor: Any = _global_reactor


def _inline(call: Callable[[], Any]) -> Any:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(call)


@dataclass
class PopgateSieve:
    """A running popgate ManageSieve server (see :func:`popgate_managesieve`)."""

    port: int
    store: MemoryScriptStore
    factory: ManageSieveFactory
    clock: task.Clock | None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return on_reactor(fn, *args, **kwargs)

    def connect(self) -> SieveClient:
        return SieveClient(self.port)


@contextmanager
def popgate_managesieve(
    *,
    users: Mapping[str, str] | None = None,
    limits: ManageSieveLimits | None = None,
    script_limits: ScriptLimits | None = None,
    tls_context_factory: Any = None,
    plaintext_auth: bool = True,
    penalty: bool = False,
    fake_clock: bool = False,
    owner_of: Callable[[str], str] | None = None,
    checker: Callable[[str], Any] = check_script,
) -> Iterator[PopgateSieve]:
    """popgate's ManageSieve server on 127.0.0.1, port 0, with a fresh in-memory
    store, user ``alice`` (plus ``users``) and the real Sieve checker (as the service wires it)."""
    runner = ReactorThread.shared(reactor)
    accounts = {USER: PASSWORD, **(users or {})}
    clock = task.Clock() if fake_clock else None

    def start() -> tuple[MemoryScriptStore, ManageSieveFactory, Any]:
        store = MemoryScriptStore(script_limits)
        factory = ManageSieveFactory(
            store,
            scrypt_table(accounts),
            checker,
            reactor=reactor,
            run_blocking=_inline,
            sieve_extensions=SIEVE_EXTENSIONS,
            owner_of=owner_of,
            limits=limits,
            tls_context_factory=tls_context_factory,
            clock=clock,
            penalty=AuthPenalty(clock or reactor) if penalty else None,
        )
        listener = ListenerFactory(factory, ListenerPolicy(plaintext_auth=plaintext_auth))
        return store, factory, reactor.listenTCP(0, listener, interface=LOOPBACK)

    store, factory, listening = runner.call(start)
    try:
        yield PopgateSieve(listening.getHost().port, store, factory, clock)
    finally:
        runner.call(_shutdown, listening, factory)


@inlineCallbacks
def _shutdown(listening: Any, factory: ManageSieveFactory) -> Any:
    yield listening.stopListening()
    for protocol in list(factory.protocols):
        protocol.transport.abortConnection()
    for _ in range(200):
        if not factory.protocols:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)


_STATUS = re.compile(rb"^(OK|NO|BYE)\b")
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\r\n$")


class SieveClient:
    """A blocking raw ManageSieve client for exact-bytes tests: ``command`` sends a line
    (or several, literals included) and returns every response line up to the status."""

    def __init__(self, port: int, host: str = LOOPBACK) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=SOCKET_TIMEOUT
        )
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SieveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        """One response line with CRLF; a line ending in ``{n}`` includes the literal
        and the rest of the line after it."""
        out = b""
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; partial {self.buffer!r}")
                self.buffer += chunk
            i = self.buffer.index(b"\r\n") + 2
            line, self.buffer = self.buffer[:i], self.buffer[i:]
            out += line
            m = _LITERAL_AT_END.search(line)
            if m is None:
                return out
            size = int(m.group(1))
            while len(self.buffer) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed inside a literal")
                self.buffer += chunk
            out += self.buffer[:size]
            self.buffer = self.buffer[size:]

    def response(self) -> list[bytes]:
        """Lines up to and including the next OK/NO/BYE line."""
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if _STATUS.match(line):
                return lines

    def command(self, data: str | bytes) -> list[bytes]:
        raw = data.encode() if isinstance(data, str) else data
        self.send(raw if raw.endswith(b"\r\n") else raw + b"\r\n")
        return self.response()

    def status(self, data: str | bytes) -> bytes:
        """The status line only."""
        return self.command(data)[-1]

    def login(self, user: str = USER, password: str = PASSWORD) -> bytes:
        import base64

        ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.status(f'AUTHENTICATE "PLAIN" "{ir}"')

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> list[bytes]:
        """STARTTLS, the handshake, then the capability response the server re-issues."""
        assert self.status("STARTTLS").startswith(b"OK")
        assert not self.buffer
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.response()
