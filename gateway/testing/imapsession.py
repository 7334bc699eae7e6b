"""IMAP drivers without a socket: the sans-I/O session alone, and the server protocol on a
``StringTransport`` with a fake clock. The socket-level driver is
:mod:`gateway.testing.imapclient`.

:class:`SessionDriver` runs commands through a real :class:`IMAPSession` on a real store,
without a reactor, and performs every action the session can yield
(:mod:`gateway.imap.handler`) the way the transport glue (:mod:`gateway.imap.server`)
does: bytes are collected, :class:`RunBlocking` runs
inline (a failure is thrown back into the command, as the glue does), :class:`ReadLine`
writes its prompt and :class:`WaitIdle` waits for the next line or :class:`IdleEvent` that
the test scripted, and :class:`Close` marks the connection closed. An action the test did
not script input for, :class:`StartTLS` and :class:`StartCompress` (which need a transport), or anything unknown
fails the test at once: no action is ever dropped silently.

:class:`WiredServer` is the whole server protocol (parser, session, glue, limits,
penalty) on a ``StringTransport`` and ``task.Clock``: no reactor, no socket, so an
example costs milliseconds (ordering, backpressure, fuzzing).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import StringTransport

from gateway.imap.command import Command, ContinuationNeeded
from gateway.imap.factory import IMAPServerFactory
from gateway.imap.framing import CommandParser
from gateway.imap.handler import (
    Close,
    IdleEvent,
    Pause,
    ReadLine,
    Reply,
    RunBlocking,
    StartCompress,
    StartTLS,
    WaitIdle,
)
from gateway.imap.policy import IMAPLimits
from gateway.imap.session import IMAPSession
from gateway.imap.states import COMMANDS, table_key
from gateway.security.auth import Authenticator
from gateway.security.penalty import AuthPenalty
from gateway.store.interfaces import Mailbox, Store
from gateway.store.sqlite import SQLiteStore
from gateway.testing.auth import CheapPasswords

USER = "alice"
PASSWORD = "pw"
DATE = datetime.datetime(
    2024, 2, 5, 10, 11, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
)
"""The INTERNALDATE :meth:`SessionDriver.add` gives by default."""

ClientInput = bytes | IdleEvent
"""What a test scripts for :class:`ReadLine` (a line) and :class:`WaitIdle` (a line or an
event)."""


class UnexpectedAction(AssertionError):
    """The session asked for something the test did not provide for."""


class SessionDriver:
    """A session on a fresh SQLite store (or on ``store``, e.g. a PostgreSQL test store,
    called on this thread), logged in as ``alice`` unless ``login=False``; messages are
    added straight to the store."""

    def __init__(
        self, path: Path, *, login: bool = True, store: Store | None = None, **store_options: Any
    ) -> None:
        self.store = store if store is not None else SQLiteStore(path, **store_options)
        self.session = IMAPSession(self.store, CheapPasswords({USER: PASSWORD}))
        self.parser = CommandParser()
        self.closed = False
        """The session yielded :class:`Close` (the glue would drop the connection)."""
        if login:
            assert self.run(f"L LOGIN {USER} {PASSWORD}".encode()).startswith(b"L OK")

    def close(self) -> None:
        self.store.close()

    def mailbox(self, name: str = "INBOX") -> Mailbox:
        return self.store.get_mailbox(USER, name)

    def add(
        self,
        raw: bytes,
        flags: tuple[str, ...] = (),
        date: datetime.datetime = DATE,
        mailbox: str = "INBOX",
    ) -> int:
        return self.store.append(self.mailbox(mailbox).id, raw, flags, date)

    def command(self, line: bytes) -> Command:
        self.parser.receive_data(line + b"\r\n")
        while True:
            event = self.parser.next_event()
            if not isinstance(event, ContinuationNeeded):
                assert isinstance(event, Command), event
                return event

    def run(self, line: bytes, inputs: Iterable[ClientInput] = ()) -> bytes:
        """The whole command through the session: untagged data, catch-up, tagged line.

        ``inputs`` are the client's answers, in order, to the session's :class:`ReadLine`
        and :class:`WaitIdle` actions (an AUTHENTICATE response, IDLE's ``DONE``); every
        one must be used up. They are taken one at a time, when the session asks, so a
        generator can change the store just before it answers (a delivery during IDLE).
        """
        out, _ = self.drive(self.session.execute(self.command(line)), inputs)
        return b"".join(out)

    def chunks(self, line: bytes, inputs: Iterable[ClientInput] = ()) -> tuple[list[bytes], Reply]:
        """The handler alone (its :data:`gateway.imap.states.COMMANDS` row), without the
        session's state check and catch-up: every chunk it yields, and its Reply."""
        cmd = self.command(line)
        handler = COMMANDS[table_key(cmd)].handler
        out, reply = self.drive(handler(self.session, cmd), inputs)
        assert isinstance(reply, Reply), reply
        return out, reply

    def call(self, line: bytes) -> tuple[bytes, Reply]:
        out, reply = self.chunks(line)
        return b"".join(out), reply

    def select(self, name: bytes = b"INBOX", examine: bool = False) -> None:
        verb = b"EXAMINE" if examine else b"SELECT"
        assert b"S OK" in self.run(b"S " + verb + b" " + name)

    def drive(
        self, gen: Generator[Any, Any, Any], inputs: Iterable[ClientInput]
    ) -> tuple[list[bytes], Any]:
        """Run ``gen`` to its end, performing each action as the transport glue would."""
        script = iter(inputs)
        out: list[bytes] = []
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                if thrown is not None:
                    item, thrown = gen.throw(thrown), None
                else:
                    item = gen.send(sent)
                sent = None
                if isinstance(item, bytes):
                    out.append(item)
                elif isinstance(item, RunBlocking):
                    try:
                        sent = item.call()
                    except Exception as exc:  # the glue throws a failed call back in
                        thrown = exc
                elif isinstance(item, ReadLine):
                    out.append(item.prompt)
                    sent = _next_input(script, item, lines_only=True)
                elif isinstance(item, WaitIdle):
                    sent = _next_input(script, item, lines_only=False)
                elif isinstance(item, Pause):
                    pass  # the reactor's turn for others: nothing else runs here
                elif isinstance(item, Close):
                    self.closed = True
                elif isinstance(item, StartTLS):
                    raise UnexpectedAction("StartTLS needs a transport: use running_server")
                elif isinstance(item, StartCompress):
                    raise UnexpectedAction("StartCompress needs a transport: use running_server")
                else:
                    raise UnexpectedAction(f"unknown session output {item!r}")
        except StopIteration as stop:
            result = stop.value
        finally:
            gen.close()
        left = list(script)
        if left:
            raise UnexpectedAction(f"scripted client input never asked for: {left!r}")
        return out, result


def _next_input(script: Iterator[ClientInput], action: object, *, lines_only: bool) -> ClientInput:
    value = next(script, None)
    if value is None:
        raise UnexpectedAction(f"the session waits for the client ({action!r}); script it")
    if lines_only and not isinstance(value, bytes):
        raise UnexpectedAction(f"{action!r} takes a line, not {value!r}")
    return value


class WiredServer:
    """A server protocol on a StringTransport with a fake clock: no reactor, no socket.

    ``store`` is any backend, already holding the users the test needs (the server closes
    it in :meth:`close`); ``passwords``
    (name → password) are checked by :class:`CheapPasswords` unless an ``authenticator``
    is given; ``penalty`` turns the login penalty on (with default settings).
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: task.Clock | None = None,
        passwords: dict[str, str] | None = None,
        authenticator: Authenticator | None = None,
        run_blocking: Callable[[Callable[[], Any]], Any] | None = None,
        limits: IMAPLimits | None = None,
        penalty: bool = False,
    ) -> None:
        self.store = store
        self.clock = clock if clock is not None else task.Clock()
        if authenticator is None:
            authenticator = CheapPasswords(passwords if passwords is not None else {})
        self.factory = IMAPServerFactory(
            store,
            authenticator,
            reactor=self.clock,
            run_blocking=run_blocking or maybeDeferred,
            clock=self.clock,
            limits=limits,
            penalty=AuthPenalty(self.clock) if penalty else None,
        )
        self.factory.doStart()
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        """Everything written since the last take."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def close(self) -> None:
        """Drop the connection, stop the factory and close the store."""
        self.protocol.connectionLost(None)
        self.factory.doStop()
        self.store.close()
