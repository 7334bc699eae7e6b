"""The IMAP server's transport glue: the only IMAP module that touches a socket or a reactor.

It feeds received bytes to the sans-I/O :class:`~gateway.imap.framing.CommandParser`,
runs one command at a time through :meth:`IMAPSession.execute` (commands are answered
strictly in order, RFC 3501 §5.5), performs the actions the session asks for (password
checks off the reactor thread, raw lines for AUTHENTICATE and IDLE, STARTTLS, close),
and applies backpressure both ways:

* output: the protocol is a streaming producer registered with its transport; while the
  transport's buffer is full (``pauseProducing``) no further chunk is pulled from the
  command's generator, so a 1 GB FETCH never sits in memory; on plain TCP the chunks go
  to the socket with ``sendmsg`` (:mod:`gateway.serving.socketwrites`, no copies) and the
  transport only takes what the socket cannot, and after :data:`TURN_OUTPUT` bytes the
  other connections get a reactor turn;
* input: commands are parsed lazily, only when the previous one has finished, so
  pipelined commands wait as unparsed bytes in the parser; once more than
  :attr:`IMAPLimits.max_buffered_input` bytes wait, the transport stops reading;
* fairness: after :attr:`IMAPLimits.max_pipelined_commands` pipelined commands in a
  row, or when a long command yields :class:`~gateway.imap.handler.Pause`, the
  connection lets the reactor serve others before going on;
* byte budgets (issue 20): small literals and a listener-wide input budget before login,
  large literals spooled to disk and APPEND bytes in flight capped after it
  (:mod:`gateway.imap.budgets`); the parser's caps follow the session's state.

Where command steps run (ARCHITECTURE.md, "Store calls and the reactor"): with a store
that runs inline (SQLite, memory) each step of a command's generator runs on the reactor
thread, as it always has. With one that does not (PostgreSQL) the steps run through the
factory's :class:`~gateway.store.runner.ThreadRunner`: one batch of steps at a time per
session (:mod:`gateway.serving.steps`, up to a byte budget or the next action),
its bytes and action handed back to the reactor thread, which writes them, performs the
action and schedules the next batch only once the transport wants more. So no database
round trip happens on the reactor, and a session's state is only ever touched by one
thread at a time.

The engine itself (one command's generator stepped at a time, blocking calls under the
login limits, reading paused, the per-source cap, the inactivity timer) is the one the
three servers share, :class:`~gateway.serving.driver.CommandDriver`; this module supplies
IMAP's hooks. Timers (RFC 3501 §5.4 autologout, RFC 2177 IDLE keep-alive), the protocol
trace and IDLE/NOTIFY change notification are in :mod:`gateway.imap.server_events`.
The factories that build these connections are in :mod:`gateway.imap.factory`, the limits
and policies they apply in :mod:`gateway.imap.policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.imap.budgets import ConnectionBudget
from gateway.imap.command import (
    Command,
    ContinuationNeeded,
    NeedData,
    ParseError,
    RawLine,
)
from gateway.imap.deflate import DeflateError
from gateway.imap.durability import DurableSteps, WaitDurable
from gateway.imap.framing import CommandParser
from gateway.imap.handler import (
    BadCommand,
    Close,
    IdleEvent,
    Pause,
    ReadLine,
    Run,
    RunBlocking,
    StartCompress,
    StartTLS,
    WaitIdle,
)
from gateway.imap.login_limits import LoginLimits
from gateway.imap.policy import UTF8_ACCEPT_SUPPORTED, ListenerPolicy
from gateway.imap.reactorsteps import ReactorSteps
from gateway.imap.server_events import ConnectionEvents
from gateway.imap.session import IMAPSession
from gateway.imap.stream import ConnectionStream
from gateway.imap.tracefile import ConnectionTrace
from gateway.serving.driver import CommandDriver
from gateway.serving.socketwrites import SocketWrites, direct_socket

if TYPE_CHECKING:
    from gateway.imap.factory import IMAPServerFactory

log = structlog.get_logger(__name__)

CONTINUE_LITERAL = b"+ Ready for literal data\r\n"

TURN_OUTPUT = 1024 * 1024
"""Bytes one connection may write in one reactor turn before the others get theirs."""


def _no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off (TCP_NODELAY) on a TCP connection, through a TLS wrapper.

    The server already hands the kernel a whole burst per reactor turn (the transport
    joins the writes of a turn), so Nagle only ever holds back a burst's last partial
    segment, such as a command's tagged reply, until the client's delayed ACK (~40 ms
    on Linux): that stall was half the time of ``UID FETCH 1:500 BODY.PEEK[]`` (issue
    19). Dovecot uncorks and sets TCP_NODELAY at the end of each command for the same
    reason. A UNIX socket has no such option."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except (OSError, AttributeError):  # not a TCP socket after all, or already closed
        pass


@implementer(IPushProducer)
class IMAPServerProtocol(ReactorSteps, ConnectionEvents, DurableSteps, CommandDriver, Protocol):
    """One IMAP connection. Registers itself as the transport's streaming producer; the
    engine is :class:`~gateway.serving.driver.CommandDriver`, with IMAP's waits (raw
    lines, IDLE events, output room, fairness turns, steps on a store thread) as hooks."""

    factory: IMAPServerFactory
    session: IMAPSession
    parser: CommandParser
    _log = log
    event_prefix = "imap"

    __slots__ = (
        # CommandDriver's (gateway.serving.driver)
        "factory", "policy", "peer", "peer_host", "_source_counted", "_current",
        "_waiting", "_send", "_throw", "_blocking", "_closing", "_busy", "_again",
        "_reading_paused", "_timeout_call", "_login_delay_call",
        # this class's and ConnectionEvents'
        "session", "parser", "_login_limits", "_budget", "_threads", "_stepping",
        "_raw_requested", "_raw_line", "_raw_error", "_idle_events", "_notifying",
        "_idling", "_output_paused", "_keepalive_call", "_next_turn_call",
        "_turn_commands", "_connected_at", "_timing", "_stream", "_trace", "_trace_wanted",
        "_watching", "_parser_authenticated",
    )  # fmt: skip
    """Issue 19 (10,000 IDLE connections): the instance's own attributes in slots, so
    it carries no 1.5 KB dict of ~40 keys; Twisted's ``transport`` and ``connected``
    (class attributes of its Protocol) stay in a small one."""

    def __init__(self, factory: IMAPServerFactory, policy: ListenerPolicy | None = None) -> None:
        self._init_driver(factory, policy)
        self._login_limits = LoginLimits(factory)
        self._budget = ConnectionBudget(factory.budgets, factory.spool_dir)
        runner = factory.store_runner
        self._threads = None if runner.inline else runner
        """The store's thread runner when command steps must leave the reactor thread."""
        self._stepping: object | None = None
        """Token of the batch of steps running on a store thread, if any."""
        self._syncer = factory.commit_syncer if self._threads is None else None
        """Group commit (:mod:`gateway.imap.durability`), for an inline store that offers it."""
        self._step_seq = 0
        """The syncer's commit count when this batch of steps began (or last waited)."""
        self._held: Any = None
        """A step's output (bytes or action) held until its commit is on disk."""
        self._raw_requested = False
        self._parser_authenticated = False  # the state whose caps the parser has
        self._raw_line: bytes | None = None
        self._raw_error: ParseError | None = None
        self._idle_events: list[IdleEvent] = []
        """At most one of each IdleEvent, oldest first (an empty list is 56 bytes, a
        deque 624)."""
        self._notifying = False  # the current run is NOTIFY's, not a command
        self._idling = False
        self._watching: int | None = None
        """The mailbox this connection is registered as idling on (factory.watch)."""
        self._output_paused = False
        self._keepalive_call: IDelayedCall | None = None
        self._next_turn_call: IDelayedCall | None = None
        self._turn_commands = 0
        self._connected_at = 0.0
        self._timing: tuple[str | None, float] | None = None
        self._stream = ConnectionStream()
        self._trace: ConnectionTrace | None = None
        self._trace_wanted = False
        self._direct: SocketWrites | None = None
        """Output straight to the socket (plain TCP), :mod:`gateway.serving.socketwrites`."""
        self._turn_output = 0

    # -- connection lifetime --

    def connectionMade(self) -> None:
        factory = self.factory
        self._connected_at = factory.clock.seconds()
        _no_delay(self.transport)
        if not self._admit(b"* BYE Too many connections from your address\r\n"):
            return  # RFC 3501 §7.1.5 BYE
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
            activity=factory.session_activity,
            households=factory.households,
            quotas=factory.quotas,
            directory=factory.directory,
            sent_append=factory.sent_append,
            select_cache=factory.select_cache,
        )
        if factory.trace_users and factory.trace_root is not None:
            # Whose connection this is is known only at login: keep it in memory till then.
            self._trace = ConnectionTrace(self.peer)
        if self._threads is None:
            self.session.notifier_changed = self._update_watch
        self.parser = self._new_parser()
        sock = None if policy.implicit_tls else direct_socket(self.transport)
        if sock is not None:
            self._direct = SocketWrites(self.transport, sock)
            self.session.whole_literals = True
        self.transport.registerProducer(self, True)
        factory.observer.connection_opened()
        self._greet(self.session.greeting())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connection_ended()
        self._update_watch()
        self._budget.close()
        self._stop_trace()
        if getattr(self, "session", None) is not None:
            self.factory.observer.connection_closed(
                self.factory.clock.seconds() - self._connected_at
            )
        self._login_limits.release()
        self._release_source()
        log.info(
            "imap.disconnect",
            user=getattr(getattr(self, "session", None), "user", None),
            peer=self.peer,
            duration=round(self.factory.clock.seconds() - self._connected_at, 3),
            compressed=self._stream.compressed,
            wire_in=self._stream.wire_in,
            wire_out=self._stream.wire_out,
            plain_in=self._stream.plain_in,
            plain_out=self._stream.plain_out,
        )

    def _new_parser(self) -> CommandParser:
        parser = self.factory.limits.new_parser(
            spool=self._budget.open_spool,
            literal_gate=self._reserve_literal,
        )
        authenticated = self._parser_authenticated = self.session.user is not None
        self.factory.limits.apply_state(parser, authenticated)
        if self._trace is not None:
            parser.tap = self._trace.client.tap
        return parser

    def _reserve_literal(self, size: int) -> str | None:
        """The parser's literal gate: APPEND bytes in flight (gateway.imap.budgets); a
        bound method, not a closure per connection (issue 19)."""
        return self._budget.reserve(self.session.user, size)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.parser.receive_data(self._stream.received(data))
        self._run()

    def _write(self, data: bytes) -> None:
        """All output goes here: counted, and deflated once COMPRESS is on."""
        if self._trace is not None:
            self._trace.server.feed(data)
        out = self._stream.outgoing(data)
        if out:
            self._turn_output += len(out)
            self._to_socket(out)
            if self._direct is not None and not self._busy:
                self._direct.flush()

    def _to_socket(self, out: bytes) -> None:
        """Wire bytes to the socket's writer: the direct one on plain TCP, else the
        transport (:mod:`gateway.serving.socketwrites`)."""
        if self._direct is None:
            self.transport.write(out)
        else:
            self._direct.write(out)

    def _end_burst(self) -> None:
        """The engine waits (for the client, a blocking call or the transport): send
        what a compressor holds back (RFC 4978 §4 sync flush)."""
        out = self._stream.end_burst()
        if out:
            self._to_socket(out)
        if self._direct is not None:
            self._direct.flush()
        if self._trace is not None:
            self._trace.flush()

    def _inflate_input(self) -> None:
        """Give the parser the next bounded chunk of inflated input, unless the input
        must wait (the same test that pauses the transport: a zip bomb then stays a few
        KiB of compressed bytes)."""
        if not self._stream.pending or self._input_held():
            return
        try:
            data = self._stream.inflate()
        except DeflateError as exc:
            log.warning("imap.compress_error", peer=self.peer, error=str(exc)[:200])
            self._drop_current()
            self._abort()
            return
        self.parser.receive_data(data)
        if self._stream.pending:
            self._again = True

    # -- IPushProducer: the transport tells us when its buffer is full or drained --

    def pauseProducing(self) -> None:
        self._output_paused = True

    def resumeProducing(self) -> None:
        self._output_paused = False
        if self._direct is not None:
            self._direct.resumed()  # may hand the transport another piece (and pause us)
        self._run()

    def stopProducing(self) -> None:
        self._output_paused = True

    # -- the engine --

    def _before_run(self) -> None:
        self._turn_commands = 0
        self._turn_output = 0

    def _after_run(self) -> None:
        if not self._closing:
            self._end_burst()
        self._update_reading()
        held = self.parser.buffered_size if self.session.user is None and not self._closing else 0
        if (held or self._budget.prelogin_held) and not self._budget.hold_prelogin(held):
            # The listener-wide pre-login budget is spent (RFC 5530 LIMIT).
            self._drop_current()
            self._write(b"* BYE [LIMIT] Too much input before login\r\n")
            self._close()

    def _pump_input(self) -> None:
        """Take parser events: a raw line when one was asked for, otherwise the next
        command, but only when no command is running (so replies stay in order and
        state changes such as STARTTLS or ENABLE apply to what follows)."""
        if self._stream.codec is not None:
            self._inflate_input()
        parser = self.parser
        if parser.starved:
            return  # the usual end of a command's run: nothing more has arrived
        while not self._closing:
            if self._raw_requested:
                if self._raw_line is not None or self._raw_error is not None:
                    return
                event = parser.next_event()
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
            event = parser.next_event()
            if isinstance(event, NeedData):
                return
            if isinstance(event, ContinuationNeeded):
                # RFC 3501 §7.5; only reached with no command running, so the "+"
                # cannot land inside another command's responses.
                self._write(CONTINUE_LITERAL)
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

    def _may_step(self) -> bool:
        """The current command steps once its wait is over (a raw line, an IDLE event;
        a blocking call or a fairness pause resume it themselves), while the transport
        wants output, and on a store thread when the store does not run inline."""
        if self._stepping is not None:
            return False  # a batch of steps runs on a store thread; its callback resumes us
        waiting = self._waiting
        if waiting is not None:
            if isinstance(waiting, RunBlocking | Pause | WaitDurable):
                return False  # the Deferred's callback (or the next turn) resumes us
            if self._raw_error is not None:
                error, self._raw_error = self._raw_error, None
                self._waiting = None
                if error.fatal:
                    self._drop_current()
                    self._start(self.session.parse_error(error))
                else:
                    self._throw = BadCommand(error.message)
            elif self._raw_line is not None:
                self._send, self._raw_line = self._raw_line, None
                self._waiting = None
            elif isinstance(waiting, WaitIdle) and self._idle_events:
                self._send = self._idle_events.pop(0)
                self._waiting = None
            else:
                return False
        if self._output_paused or (self._direct is not None and self._direct.handed):
            return False
        if self._turn_output >= TURN_OUTPUT:
            # A client that reads as fast as we write never pauses us: let the reactor
            # serve the other connections between megabytes (issue 20's fairness).
            self._schedule_next_turn()
            return False
        if self._threads is not None:
            self._step_on_thread(self._current)
            return False
        return True

    def _perform(self, action: Any) -> None:
        if isinstance(action, RunBlocking):
            # Login limits (RFC 5530 UNAVAILABLE): maybe refused before any check.
            self._run_blocking(action, action.login)
        elif isinstance(action, ReadLine):
            self._write(action.prompt)
            self._waiting = action
            self._request_raw()
            self._again = True  # the line may already be buffered (a pipelining client)
        elif isinstance(action, WaitIdle):
            if not self._idling:
                self._idling = True
                self._update_watch()
                self._schedule_keepalive()
                self._reset_timeout()
            self._waiting = action
            self._request_raw()
            self._again = True  # DONE may already be buffered
        elif isinstance(action, Pause):
            # Resumed by _next_turn, after the reactor has served everyone else.
            self._waiting = action
            self._schedule_next_turn()
        elif isinstance(action, StartTLS):
            self._start_tls()
        elif isinstance(action, StartCompress):
            # RFC 4978 §3: the tagged OK went out uncompressed; everything after it is not.
            self._stream.start_compress(self.parser.take_unparsed())
            self.session.whole_literals = False  # deflate a long literal a piece at a time
            self._again = True
        elif isinstance(action, Close):
            self._close()
        else:  # pragma: no cover - the session yields nothing else
            raise TypeError(f"unknown session action {action!r}")

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
        if self._login_limits.slot is not None and self.session.user is None:
            self._login_limits.release()  # the password was right but the login failed anyway
        self._current = None
        self._waiting = None
        self._send = None
        self._throw = None
        self._raw_line = None
        self._raw_error = None
        if self._idling:
            self._idling = False
            self._update_watch()
            self._idle_events.clear()
            self._cancel_keepalive()
        session = self.session
        # RFC 6855 §3: after ENABLE UTF8=ACCEPT, the next commands may carry UTF-8.
        self.parser.utf8_accept = session.utf8_enabled()
        self._budget.command_done()  # its literals' reservations and spool files
        authenticated = session.user is not None
        if authenticated is not self._parser_authenticated:  # caps change with the state only
            self.factory.limits.apply_state(self.parser, authenticated)
            self._parser_authenticated = authenticated
        if self._notifying:
            self._notifying = False  # the client did nothing: its inactivity timer runs on
        else:
            self._reset_timeout()
            self._turn_commands += 1
        self._again = True
        if self._trace is not None or self._trace_wanted:
            self._update_trace()  # (nothing to start, keep or stop otherwise)
        notifier = session.notifier
        if notifier is not None and notifier.has_pending() and not self._closing:
            # Events that arrived after the command's own delivery (RFC 5465).
            self._notifying = True
            self._start(self.session.notifications())

    def _schedule_next_turn(self) -> None:
        if self._next_turn_call is None:
            self._next_turn_call = self.factory.reactor.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._next_turn_call = None
        if isinstance(self._waiting, Pause):
            self._waiting = None
        if not self._closing:
            self._run()

    def _close_run(self, current: Run) -> None:
        if self._threads is not None:
            if self._stepping is None:
                self._close_on_thread(current)
            # else: its steps are running; _steps_done closes it when they return
            return
        try:
            current.close()
        except Exception:
            log.exception("imap.internal_error", peer=self.peer)

    def _input_held(self) -> bool:
        """A command runs (or waits for its turn) and enough input is already waiting."""
        return (
            (self._current is not None or self._next_turn_call is not None)
            and not self._raw_requested
            and self.parser.buffered_size >= self.factory.limits.max_buffered_input
        )

    def _hold_reading(self) -> bool:
        """Stop reading while a command runs and too much input is already waiting
        (or compressed input waits to be inflated)."""
        return self._input_held() or bool(self._stream.pending)

    # -- STARTTLS and closing --

    def _start_tls(self) -> None:
        """RFC 3501 §6.2.1. Whatever the client sent after STARTTLS in plaintext is
        thrown away with the old parser: it must not be read as if it came over TLS
        (command injection, CVE-2011-0411)."""
        self.parser = self._new_parser()
        self._raw_requested = False
        self._raw_line = None
        self._stop_direct()  # the tagged OK goes out in plaintext, everything after via TLS
        self.transport.startTLS(self.factory.tls_context_factory)
        self.session.tls_started()

    def _shutting_down(self, graceful: bool) -> None:
        self._budget.hold_prelogin(0)
        if graceful:
            self._end_burst()

    def _stop_direct(self) -> None:
        if self._direct is not None:
            self._direct.stop()
            self._direct = None
            self.session.whole_literals = False

    def _disconnect(self) -> None:
        self._stop_direct()  # what is still unsent goes out before the close
        self.transport.unregisterProducer()
        self.transport.loseConnection()
