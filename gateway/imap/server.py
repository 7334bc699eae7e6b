"""The IMAP server's transport glue: the only IMAP module that touches a socket or a reactor.

It feeds received bytes to the sans-I/O :class:`~gateway.imap.framing.CommandParser`,
runs one command at a time through :meth:`IMAPSession.execute` (commands are answered
strictly in order, RFC 3501 §5.5), performs the actions the session asks for (password
checks off the reactor thread, raw lines for AUTHENTICATE and IDLE, STARTTLS, close),
and applies backpressure both ways:

* output: the protocol is a streaming producer registered with its transport; while the
  transport's buffer is full (``pauseProducing``) no further chunk is pulled from the
  command's generator, so a 1 GB FETCH never sits in memory;
* input: commands are parsed lazily, only when the previous one has finished, so
  pipelined commands wait as unparsed bytes in the parser; once more than
  :attr:`IMAPLimits.max_buffered_input` bytes wait, the transport stops reading;
* fairness: after :attr:`IMAPLimits.max_pipelined_commands` pipelined commands in a
  row the connection lets the reactor serve others before going on.

Timers (RFC 3501 §5.4 autologout, RFC 2177 IDLE keep-alive) run on an injected clock.
"""

from __future__ import annotations

import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.access.households import Households
from gateway.access.quota import Quotas
from gateway.imap.command import (
    Command,
    ContinuationNeeded,
    NeedData,
    ParseError,
    RawLine,
)
from gateway.imap.framing import MAX_LITERALS, MAX_NESTING, MAX_SEQUENCE_RANGES, CommandParser
from gateway.imap.handler import (
    BadCommand,
    Close,
    IdleEvent,
    ReadLine,
    Refused,
    Run,
    RunBlocking,
    StartTLS,
    WaitIdle,
    logged,
)
from gateway.imap.session import ActivityHook, IMAPSession
from gateway.security.auth import Authenticator
from gateway.security.penalty import AuthPenalty, source_key
from gateway.store.interfaces import Store
from gateway.store.search import MAX_SEARCH_DEPTH

log = structlog.get_logger(__name__)

CONTINUE_LITERAL = b"+ Ready for literal data\r\n"

UTF8_ACCEPT_SUPPORTED = False
"""RFC 6855 UTF8=ACCEPT stays unannounced: the session and parser handle UTF-8 names and
quoted strings, but the parser lacks the APPEND ``UTF8 (~{n})`` data extension that
§4 of the RFC requires of a server announcing it."""

RunBlockingFn = Callable[[Callable[[], Any]], Deferred]


class ServerObserver(typing.Protocol):
    """What the server tells an observer (metrics) about its work; the IMAP code never
    imports the observer's module. Calls happen on the reactor thread and must not raise."""

    def connection_opened(self) -> None: ...

    def connection_closed(self, seconds: float) -> None: ...

    def command_done(self, name: str | None, seconds: float, status: str, code: str | None) -> None:
        """A command finished: ``name`` as "FETCH"/"UID FETCH" (None: unparseable input),
        ``status`` of its tagged reply (OK/NO/BAD, or BYE when the connection ended)."""


class NullObserver:
    """The default observer: notices nothing."""

    def connection_opened(self) -> None:
        pass

    def connection_closed(self, seconds: float) -> None:
        pass

    def command_done(self, name: str | None, seconds: float, status: str, code: str | None) -> None:
        pass


@dataclass(frozen=True)
class IMAPLimits:
    """Every bound the server applies to one connection (STYLE.md habit 2)."""

    max_line_length: int = 64 * 1024
    """Longest command line (without literals); longer is a fatal protocol error."""

    max_literal_size: int = 64 * 1024 * 1024
    """Largest literal, which is also the largest APPENDable message."""

    max_buffered_input: int = 1024 * 1024
    """Unparsed pipelined input held while a command runs; above it the transport stops
    reading until the command finishes (backpressure instead of unbounded buffering)."""

    max_pipelined_commands: int = 100
    """Pipelined commands answered back to back; then the connection stops taking input
    for one reactor turn so that one client's flood cannot starve the others. (Memory is
    bounded by ``max_buffered_input``: commands wait unparsed, never as parsed objects,
    so 100 queued APPENDs cannot pin 100 literals.)"""

    prelogin_timeout: float = 60.0
    """Seconds without a command before login, then ``* BYE Autologout``."""

    idle_timeout: float = 30 * 60.0
    """Seconds without a command once logged in (RFC 3501 §5.4: at least 30 minutes)."""

    idle_command_timeout: float = 60 * 60.0
    """Longest single IDLE command (RFC 2177 asks clients to re-issue IDLE within 29
    minutes, so a well-behaved client never meets it)."""

    idle_keepalive: float = 120.0
    """Seconds between ``* OK Still here`` lines during IDLE, so NAT boxes keep the flow."""

    max_literals: int = MAX_LITERALS
    """Most literals in one command."""

    max_nesting: int = MAX_NESTING
    """Deepest parenthesis nesting in a command (``BAD [LIMIT]`` beyond)."""

    max_search_depth: int = MAX_SEARCH_DEPTH
    """Deepest NOT/OR/group recursion in a SEARCH program (``BAD [LIMIT]`` beyond)."""

    max_sequence_ranges: int = MAX_SEQUENCE_RANGES
    """Most comma-separated elements in one sequence set (``BAD`` beyond)."""

    max_connections_per_user_ip: int = 50
    """Logged-in connections one user may hold from one address; the next login gets
    ``NO [LIMIT]``. Generous: a household behind one NAT runs many devices, each with
    several connections (0: no limit)."""

    max_connections_per_ip: int = 1000
    """Connections (logged in or not) from one address; beyond it a new connection gets
    ``* BYE`` at once, which bounds what one slow-loris source can hold (0: no limit)."""

    @property
    def max_command_size(self) -> int:
        """A whole command, literals included (MULTIAPPEND may carry a few messages)."""
        return 2 * self.max_literal_size


def thread_runner(reactor: Any) -> RunBlockingFn:
    """The production ``run_blocking``: the reactor's thread pool."""

    def run(call: Callable[[], Any]) -> Deferred:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), call)

    return run


@dataclass(frozen=True)
class ListenerPolicy:
    """What one listener adds to the shared factory's settings."""

    implicit_tls: bool = False
    """Connections are TLS from their first byte (IMAPS, RFC 8314 §3.3)."""

    plaintext_auth: bool | None = None
    """Passwords without TLS on this listener; None: the factory's ``allow_plaintext_auth``."""


def _peer_host(transport: Any) -> str:
    """The peer's address for per-source accounting ("local" for UNIX sockets)."""
    try:
        host = getattr(transport.getPeer(), "host", None)
    except Exception:
        host = None
    return host if isinstance(host, str) and host else "local"


def _peer_text(transport: Any) -> str:
    try:
        peer = transport.getPeer()
    except Exception:
        return "unknown"
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


@implementer(IPushProducer)
class IMAPServerProtocol(Protocol):
    """One IMAP connection. Registers itself as the transport's streaming producer."""

    factory: IMAPServerFactory
    session: IMAPSession
    parser: CommandParser

    def __init__(self, factory: IMAPServerFactory, policy: ListenerPolicy | None = None) -> None:
        self.factory = factory
        self.policy = policy if policy is not None else ListenerPolicy()
        self.peer = "unknown"
        self.peer_host = "local"
        self._source_counted = False
        self._user_counted: tuple[str, str] | None = None
        self._login_delay_call: IDelayedCall | None = None
        self._current: Run | None = None
        self._waiting: RunBlocking | ReadLine | WaitIdle | None = None
        self._send: Any = None
        self._throw: BaseException | None = None
        self._blocking: object | None = None
        self._raw_requested = False
        self._raw_line: bytes | None = None
        self._raw_error: ParseError | None = None
        self._idle_events: deque[IdleEvent] = deque()
        self._idling = False
        self._output_paused = False
        self._reading_paused = False
        self._closing = False
        self._busy = False
        self._again = False
        self._timeout_call: IDelayedCall | None = None
        self._keepalive_call: IDelayedCall | None = None
        self._next_turn_call: IDelayedCall | None = None
        self._turn_commands = 0
        self._connected_at = 0.0
        self._timing: tuple[str | None, float] | None = None

    # -- connection lifetime --

    def connectionMade(self) -> None:
        factory = self.factory
        self._connected_at = factory.clock.seconds()
        self.peer = _peer_text(self.transport)
        self.peer_host = _peer_host(self.transport)
        if not factory.admit_source(self.peer_host):
            # One source holding this many connections is abuse (or a broken client);
            # refuse before any per-connection state exists (RFC 3501 §7.1.5 BYE).
            self._closing = True
            log.warning("imap.connection_refused", peer=self.peer, reason="per_ip_limit")
            self.transport.write(b"* BYE Too many connections from your address\r\n")
            self.transport.loseConnection()
            return
        self._source_counted = True
        policy = self.policy
        plaintext_auth = (
            policy.plaintext_auth
            if policy.plaintext_auth is not None
            else factory.allow_plaintext_auth
        )
        self.session = IMAPSession(
            factory.store,
            factory.authenticator,
            peer=self.peer,
            tls_active=policy.implicit_tls or ISSLTransport.providedBy(self.transport),
            tls_available=factory.tls_context_factory is not None,
            plaintext_auth_allowed=plaintext_auth,
            utf8_available=UTF8_ACCEPT_SUPPORTED,
            activity=factory.activity,
            households=factory.households,
            quotas=factory.quotas,
        )
        self.parser = self._new_parser()
        self.transport.registerProducer(self, True)
        factory.protocols.add(self)
        factory.observer.connection_opened()
        log.info("imap.connect", peer=self.peer)
        self.transport.write(self.session.greeting())
        self._reset_timeout()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self._drop_current()
        self._cancel_timers()
        self.factory.protocols.discard(self)
        if getattr(self, "session", None) is not None:
            self.factory.observer.connection_closed(
                self.factory.clock.seconds() - self._connected_at
            )
        self._release_user_slot()
        if self._source_counted:
            self._source_counted = False
            self.factory.release_source(self.peer_host)
        log.info(
            "imap.disconnect",
            user=getattr(getattr(self, "session", None), "user", None),
            peer=self.peer,
            duration=round(self.factory.clock.seconds() - self._connected_at, 3),
        )

    def _new_parser(self) -> CommandParser:
        limits = self.factory.limits
        return CommandParser(
            max_line_length=limits.max_line_length,
            max_literal_size=limits.max_literal_size,
            max_command_size=limits.max_command_size,
            max_literals=limits.max_literals,
            max_nesting=limits.max_nesting,
            max_search_depth=limits.max_search_depth,
            max_sequence_ranges=limits.max_sequence_ranges,
        )

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.parser.receive_data(data)
        self._run()

    # -- IPushProducer: the transport tells us when its buffer is full or drained --

    def pauseProducing(self) -> None:
        self._output_paused = True

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._run()

    def stopProducing(self) -> None:
        self._output_paused = True

    # -- the engine --

    def _run(self) -> None:
        """Pull input events and advance the current command until both wait. Re-entrant
        calls (a Deferred firing synchronously, a write pausing us) just ask for another
        round of the loop already running."""
        if self._busy:
            self._again = True
            return
        self._busy = True
        self._turn_commands = 0
        try:
            while True:
                self._again = False
                self._pump_input()
                self._advance()
                if not self._again or self._closing:
                    break
        finally:
            self._busy = False
        self._update_reading()

    def _pump_input(self) -> None:
        """Take parser events: a raw line when one was asked for, otherwise the next
        command, but only when no command is running (so replies stay in order and
        state changes such as STARTTLS or ENABLE apply to what follows)."""
        while not self._closing:
            if self._raw_requested:
                if self._raw_line is not None or self._raw_error is not None:
                    return
                event = self.parser.next_event()
                if isinstance(event, NeedData):
                    return
                self._raw_requested = False
                if self._current is None:
                    # Nobody waits for it any more (IDLE ended without DONE, e.g. on an
                    # internal error): a late DONE is dropped; a broken stream still ends.
                    if isinstance(event, ParseError) and event.fatal:
                        self._start(self.session.parse_error(event))
                        return
                    continue
                if isinstance(event, RawLine):
                    self._raw_line = event.data
                elif isinstance(event, ParseError):
                    self._raw_error = event
                return
            if self._current is not None:
                return
            if self._turn_commands >= self.factory.limits.max_pipelined_commands:
                self._schedule_next_turn()
                return
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                return
            if isinstance(event, ContinuationNeeded):
                # RFC 3501 §7.5; only reached with no command running, so the "+"
                # cannot land inside another command's responses.
                self.transport.write(CONTINUE_LITERAL)
                continue
            if isinstance(event, Command):
                self._reset_timeout()
                name = event.name.upper()
                if event.uid and not name.startswith("UID "):
                    name = "UID " + name
                self._timing = (name, self.factory.clock.seconds())
                self._start(self.session.execute(event))
                return
            if isinstance(event, ParseError):
                self._timing = (None, self.factory.clock.seconds())
                self._start(self.session.parse_error(event))
                return
            # A RawLine nobody asked for cannot happen; ignore anything else.

    def _start(self, run: Run) -> None:
        self._current = run
        self._send = None
        self._throw = None
        self._waiting = None

    def _advance(self) -> None:
        while not self._closing and self._current is not None:
            waiting = self._waiting
            if waiting is not None:
                if isinstance(waiting, RunBlocking):
                    return  # the Deferred's callback resumes us
                if self._raw_error is not None:
                    error, self._raw_error = self._raw_error, None
                    self._waiting = None
                    if error.fatal:
                        self._drop_current()
                        self._start(self.session.parse_error(error))
                        continue
                    self._throw = BadCommand(error.message)
                elif self._raw_line is not None:
                    self._send, self._raw_line = self._raw_line, None
                    self._waiting = None
                elif isinstance(waiting, WaitIdle) and self._idle_events:
                    self._send = self._idle_events.popleft()
                    self._waiting = None
                else:
                    return
            if self._output_paused:
                return
            current = self._current
            try:
                if self._throw is not None:
                    error_in, self._throw = self._throw, None
                    out = current.throw(error_in)
                else:
                    value, self._send = self._send, None
                    out = current.send(value)
            except StopIteration:
                self._command_done()
                return
            except Exception:
                log.exception("imap.internal_error", peer=self.peer)
                self._current = None
                self._abort()
                return
            if isinstance(out, bytes):
                if out:
                    self.transport.write(out)
            else:
                self._perform(out)

    def _perform(self, action: Any) -> None:
        if isinstance(action, RunBlocking):
            self._waiting = action
            token = self._blocking = object()
            if action.login is not None and self._login_refused(action.login, token):
                return
            try:
                deferred = self.factory.run_blocking(action.call)
            except Exception:
                deferred = fail()
            deferred.addCallbacks(
                self._blocking_done,
                self._blocking_failed,
                callbackArgs=(token,),
                errbackArgs=(token,),
            )
        elif isinstance(action, ReadLine):
            self.transport.write(action.prompt)
            self._waiting = action
            self._request_raw()
            self._again = True  # the line may already be buffered (a pipelining client)
        elif isinstance(action, WaitIdle):
            if not self._idling:
                self._idling = True
                self._schedule_keepalive()
                self._reset_timeout()
            self._waiting = action
            self._request_raw()
            self._again = True  # DONE may already be buffered
        elif isinstance(action, StartTLS):
            self._start_tls()
        elif isinstance(action, Close):
            self._close()
        else:  # pragma: no cover - the session yields nothing else
            raise TypeError(f"unknown session action {action!r}")

    def _blocking_done(self, result: Any, token: object) -> None:
        if self._blocking is not token or self._closing:
            return
        action = self._waiting
        if isinstance(action, RunBlocking) and action.login is not None:
            self._password_checked(action.login, result, token)
            return
        self._resume(token, result, None)

    def _resume(self, token: object, result: Any, error: BaseException | None) -> None:
        """Continue the command waiting on a blocking call (or on a login delay)."""
        self._login_delay_call = None
        if self._blocking is not token or self._closing:
            return
        self._blocking = None
        self._waiting = None
        if error is not None:
            self._throw = error
        else:
            self._send = result
        self._run()

    def _resume_later(
        self, delay: float, token: object, result: Any, error: BaseException | None
    ) -> None:
        if delay <= 0:
            self._resume(token, result, error)
        else:
            self._login_delay_call = self.factory.clock.callLater(
                delay, self._resume, token, result, error
            )

    # -- login penalties and limits --

    def _login_refused(self, user: str, token: object) -> bool:
        """Before a password check: refuse it unchecked when the source's or the user's
        failure budget is spent (``NO [UNAVAILABLE]``, RFC 5530), after the source's
        current delay so a retry loop gains nothing."""
        penalty = self.factory.penalty
        if penalty is None:
            return False
        reason = penalty.refusal(self.peer_host, user)
        if reason is None:
            return False
        log.warning("imap.auth_refused", user=logged(user), peer=self.peer, budget=reason)
        error = Refused("Too many failed logins; try again later", "UNAVAILABLE")
        self._resume_later(penalty.current_delay(self.peer_host), token, None, error)
        return True

    def _password_checked(self, user: str, canonical: str | None, token: object) -> None:
        """After a password check: a failure is answered after the source's doubling
        delay (the same for unknown users and wrong passwords, so timing tells nothing);
        a success resets it and takes one of the user's per-address connection slots."""
        penalty = self.factory.penalty
        if canonical is None:
            delay = penalty.failed(self.peer_host, user) if penalty is not None else 0.0
            self._resume_later(delay, token, None, None)
            return
        if penalty is not None:
            penalty.succeeded(self.peer_host, canonical)
        if self._user_counted is None:
            key = (canonical, self.peer_host)
            if not self.factory.take_user_slot(key):
                log.warning("imap.login_refused", user=canonical, peer=self.peer, reason="limit")
                error = Refused("Too many connections for this user from your address", "LIMIT")
                self._resume(token, None, error)
                return
            self._user_counted = key
        self._resume(token, canonical, None)

    def _release_user_slot(self) -> None:
        key, self._user_counted = self._user_counted, None
        if key is not None:
            self.factory.release_user_slot(key)

    def _blocking_failed(self, failure: Failure, token: object) -> None:
        if self._blocking is not token or self._closing:
            return
        self._blocking = None
        self._waiting = None
        self._throw = failure.value
        self._run()

    def _request_raw(self) -> None:
        if not self._raw_requested and self._raw_line is None:
            self.parser.read_raw_line()
            self._raw_requested = True

    def _report_command(self) -> None:
        """Tell the observer how the command that just ended went, and how long it took."""
        timing, self._timing = self._timing, None
        if timing is None:
            return
        reply = self.session.last_reply
        self.factory.observer.command_done(
            timing[0],
            self.factory.clock.seconds() - timing[1],
            reply.status if reply is not None else "BYE",
            reply.code if reply is not None else None,
        )

    def _command_done(self) -> None:
        self._report_command()
        if self._user_counted is not None and self.session.user is None:
            self._release_user_slot()  # the password was right but the login failed anyway
        self._current = None
        self._waiting = None
        self._send = None
        self._throw = None
        self._raw_line = None
        self._raw_error = None
        if self._idling:
            self._idling = False
            self._idle_events.clear()
            self._cancel_keepalive()
        # RFC 6855 §3: after ENABLE UTF8=ACCEPT, the next commands may carry UTF-8.
        self.parser.utf8_accept = self.session.utf8_enabled()
        self._reset_timeout()
        self._turn_commands += 1
        self._again = True

    def _schedule_next_turn(self) -> None:
        if self._next_turn_call is None:
            self._next_turn_call = self.factory.reactor.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._next_turn_call = None
        if not self._closing:
            self._run()

    def _drop_current(self) -> None:
        current, self._current = self._current, None
        self._waiting = None
        self._blocking = None
        if current is not None:
            try:
                current.close()
            except Exception:
                log.exception("imap.internal_error", peer=self.peer)

    def _update_reading(self) -> None:
        """Stop reading while a command runs and too much input is already waiting."""
        if self._closing:
            return
        hold = (
            (self._current is not None or self._next_turn_call is not None)
            and not self._raw_requested
            and self.parser.buffered_size >= self.factory.limits.max_buffered_input
        )
        if hold and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not hold and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    # -- STARTTLS and closing --

    def _start_tls(self) -> None:
        """RFC 3501 §6.2.1. Whatever the client sent after STARTTLS in plaintext is
        thrown away with the old parser: it must not be read as if it came over TLS
        (command injection, CVE-2011-0411)."""
        self.parser = self._new_parser()
        self._raw_requested = False
        self._raw_line = None
        self.transport.startTLS(self.factory.tls_context_factory)
        self.session.tls_started()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel_timers()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _abort(self) -> None:
        self._closing = True
        self._cancel_timers()
        self.transport.abortConnection()

    # -- timers --

    def _timeout_delay(self) -> float:
        limits = self.factory.limits
        if self._idling:
            return limits.idle_command_timeout
        if self.session.user is None:
            return limits.prelogin_timeout
        return limits.idle_timeout

    def _reset_timeout(self) -> None:
        if self._closing:
            return
        delay = self._timeout_delay()
        call = self._timeout_call
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._timeout_call = self.factory.clock.callLater(delay, self._timed_out)

    def _timed_out(self) -> None:
        """RFC 3501 §5.4 autologout. A command still producing output is not cut short
        unless the client has stopped reading it (then the connection is dropped)."""
        self._timeout_call = None
        if self._closing:
            return
        busy = (
            self._current is not None
            and not self._idling
            and not isinstance(self._waiting, ReadLine)
        )
        if busy and not self._output_paused:
            self._reset_timeout()
            return
        log.info("imap.autologout", user=self.session.user, peer=self.peer)
        if self._output_paused:
            self._drop_current()
            self._abort()
            return
        self._drop_current()
        self.transport.write(self.session.autologout())
        self._close()

    def _schedule_keepalive(self) -> None:
        self._keepalive_call = self.factory.clock.callLater(
            self.factory.limits.idle_keepalive, self._keepalive
        )

    def _keepalive(self) -> None:
        self._keepalive_call = None
        if not self._idling or self._closing:
            return
        if IdleEvent.KEEPALIVE not in self._idle_events:  # a client not reading gets one
            self._idle_events.append(IdleEvent.KEEPALIVE)
        self._schedule_keepalive()
        self._run()

    def _cancel_keepalive(self) -> None:
        call, self._keepalive_call = self._keepalive_call, None
        if call is not None and call.active():
            call.cancel()

    def _cancel_timers(self) -> None:
        self._cancel_keepalive()
        delayed, self._login_delay_call = self._login_delay_call, None
        if delayed is not None and delayed.active():
            delayed.cancel()
        turn, self._next_turn_call = self._next_turn_call, None
        if turn is not None and turn.active():
            turn.cancel()
        call, self._timeout_call = self._timeout_call, None
        if call is not None and call.active():
            call.cancel()

    # -- change notification --

    def mailbox_changed(self, mailbox_id: int) -> None:
        """RFC 2177: an IDLE client hears about changes to its mailbox at once; other
        sessions learn at their next command (the catch-up after every command)."""
        view = self.session.selected
        if not self._idling or self._closing or view is None or view.mailbox.id != mailbox_id:
            return
        if IdleEvent.CHANGED not in self._idle_events:
            self._idle_events.append(IdleEvent.CHANGED)
        self._run()


class IMAPServerFactory(Factory):
    """Builds :class:`IMAPServerProtocol` connections sharing one store and authenticator.

    ``run_blocking(call) -> Deferred`` runs a blocking call (scrypt) off the reactor
    thread: :func:`thread_runner` in production; tests may run it inline. ``clock``
    (default: the reactor) drives timeouts and keep-alives. ``allow_plaintext_auth``
    false means passwords only over TLS (LOGINDISABLED until STARTTLS, RFC 3501 §6.2.3).
    ``activity(user, mailbox)`` is told when a client selects, idles on, polls or asks
    STATUS of a mailbox (the service wires it to fetch-on-demand).
    ``penalty`` (:class:`~gateway.security.penalty.AuthPenalty`) delays failed logins and
    enforces failure budgets; None turns both off (tests of other features).
    """

    def __init__(
        self,
        store: Store,
        authenticator: Authenticator,
        *,
        reactor: Any,
        run_blocking: RunBlockingFn,
        limits: IMAPLimits | None = None,
        tls_context_factory: Any = None,
        allow_plaintext_auth: bool = True,
        clock: IReactorTime | None = None,
        activity: ActivityHook | None = None,
        penalty: AuthPenalty | None = None,
    ) -> None:
        self.store = store
        self.activity = activity
        self.authenticator = authenticator
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.run_blocking = run_blocking
        self.limits = limits if limits is not None else IMAPLimits()
        self.tls_context_factory = tls_context_factory
        self.allow_plaintext_auth = allow_plaintext_auth
        self.penalty = penalty
        self.households = Households()
        """Shared mailboxes and their members; the service fills it from the config."""
        self.quotas = Quotas()
        """Storage limits by owner (RFC 9208); the service fills it from the config."""
        self.observer: ServerObserver = NullObserver()
        """Told about connections and commands (the service sets the metrics here)."""
        self.protocols: set[IMAPServerProtocol] = set()
        self._per_source: dict[str, int] = {}
        self._per_user_source: dict[tuple[str, str], int] = {}
        self._changed: set[int] = set()
        self._flush_call: IDelayedCall | None = None

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return IMAPServerProtocol(self)

    def admit_source(self, host: str) -> bool:
        """Count a new connection from ``host``; False if it is one too many."""
        key = source_key(host)
        count = self._per_source.get(key, 0)
        limit = self.limits.max_connections_per_ip
        if limit and count >= limit:
            return False
        self._per_source[key] = count + 1
        return True

    def release_source(self, host: str) -> None:
        _decrement(self._per_source, source_key(host))

    def take_user_slot(self, key: tuple[str, str]) -> bool:
        """Count one more logged-in connection of (user, address); False if over the limit."""
        count = self._per_user_source.get(key, 0)
        limit = self.limits.max_connections_per_user_ip
        if limit and count >= limit:
            return False
        self._per_user_source[key] = count + 1
        return True

    def release_user_slot(self, key: tuple[str, str]) -> None:
        _decrement(self._per_user_source, key)

    def startFactory(self) -> None:
        self.store.add_listener(self._store_changed)

    def stopFactory(self) -> None:
        self.store.remove_listener(self._store_changed)
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()

    def _store_changed(self, mailbox_id: int) -> None:
        """The store's listener. Sessions are told on the next reactor turn, not from
        inside the writer's call stack (which may be another session's command)."""
        self._changed.add(mailbox_id)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush_changes)

    def _flush_changes(self) -> None:
        self._flush_call = None
        changed, self._changed = self._changed, set()
        for protocol in list(self.protocols):
            for mailbox_id in sorted(changed):
                protocol.mailbox_changed(mailbox_id)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class ListenerFactory(Factory):
    """One listener's view of the shared :class:`IMAPServerFactory`: connections get this
    listener's :class:`ListenerPolicy` but share the store, limits, penalties and
    connection counts. Starting the first listener starts the shared factory."""

    def __init__(self, imap: IMAPServerFactory, policy: ListenerPolicy) -> None:
        self.imap = imap
        self.policy = policy

    def doStart(self) -> None:
        self.imap.doStart()

    def doStop(self) -> None:
        self.imap.doStop()

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return IMAPServerProtocol(self.imap, self.policy)
