"""The submission server's transport glue: the only submission module that touches a
socket or a reactor for incoming connections.

It feeds received bytes to the sans-I/O :class:`~gateway.submission.parser.SMTPParser`,
runs one command at a time through :meth:`SubmissionSession.execute` (so PIPELINING,
RFC 2920, keeps replies in order even when a step waits on a thread or the store), and
performs the session's actions: password checks through ``run_blocking`` with the
shared login penalty (the same :class:`~gateway.security.penalty.AuthPenalty` as IMAP,
so failures on either protocol count together), SASL lines, DATA bodies, the ``accept``
call, STARTTLS (buffered plaintext discarded first), close. The engine (one command at a
time, blocking calls, reading paused, timers) is the one every server shares,
:mod:`gateway.serving.driver`.

Bounds: per-source connection cap; pending pipelined input capped (reading pauses);
timers before login, after login and during DATA (RFC 5321 §4.5.3.2) on an injected clock.
"""

from __future__ import annotations

from typing import Any

import structlog
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.security.auth import Authenticator
from gateway.security.connections import ConnectionCounts, ListenerPolicy
from gateway.security.connections import ListenerFactory as SharedListenerFactory
from gateway.security.logins import LoginLimits
from gateway.security.penalty import AuthPenalty
from gateway.serving.driver import CommandDriver, RunBlockingFn
from gateway.submission.parser import (
    Line,
    LineTooLong,
    MessageData,
    MessageTooLarge,
    NeedData,
    SMTPParser,
)
from gateway.submission.policy import RateLimiter, Refusal, SenderPolicy, SubmissionLimits
from gateway.submission.session import (
    Accept,
    Call,
    Close,
    ReadData,
    ReadLine,
    RunBlocking,
    StartTLS,
    SubmissionSession,
    reply,
)

log = structlog.get_logger(__name__)

MAX_BUFFERED_INPUT = 256 * 1024
"""Unparsed pipelined command input held while a command runs before reading pauses."""


class SubmissionProtocol(CommandDriver, Protocol):
    """One submission connection (the engine is :class:`~gateway.serving.driver.CommandDriver`)."""

    session: SubmissionSession
    parser: SMTPParser
    _log = log
    event_prefix = "submission"
    timeout_event = "timeout"

    def __init__(self, factory: SubmissionFactory, policy: ListenerPolicy | None = None) -> None:
        self._init_driver(factory, policy)
        self._login_limits = LoginLimits(
            factory,
            protocol="submission",
            refused=lambda: Refusal(454, "4.7.0", "Too many failed logins; try again later"),
            over_limit=None,
        )

    # -- lifetime --

    def connectionMade(self) -> None:
        factory = self.factory
        if not self._admit(reply(421, "4.7.0", "Too many connections from your address")):
            return
        self.session = SubmissionSession(
            hostname=factory.hostname,
            policy=factory.policy,
            limits=factory.limits,
            authenticator=factory.authenticator,
            rate=factory.rate,
            accept=factory.accept,
            now=factory.clock.seconds,
            peer=self.peer,
            tls_active=self.policy.implicit_tls or ISSLTransport.providedBy(self.transport),
            tls_available=factory.tls_context_factory is not None,
            plaintext_auth_allowed=self.policy.plaintext_auth_or(factory.allow_plaintext_auth),
        )
        self.parser = SMTPParser(factory.limits.max_command_line)
        self._greet(self.session.greeting())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connection_ended()
        self._release_source()
        log.info("submission.disconnect", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.parser.receive_data(data)
        if self.parser.in_data:
            self._reset_timeout()
        self._run()

    # -- the driver's hooks --

    def _pump_input(self) -> None:
        if self._closing:
            return
        waiting = self._waiting
        if isinstance(waiting, ReadLine | ReadData):
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                return
            self._waiting = None
            self.parser.max_line = self.factory.limits.max_command_line
            if isinstance(event, Line):
                self._send = event.text
            elif isinstance(event, MessageData):
                self._send = event.raw
            elif isinstance(event, MessageTooLarge):
                self._send = event
            else:
                self._throw = Refusal(500, "5.5.6", "Line too long")
            self._reset_timeout()
            return
        if self._current is not None:
            return
        event = self.parser.next_event()
        if isinstance(event, NeedData):
            return
        self._reset_timeout()
        if isinstance(event, Line):
            self._start(self.session.execute(event.text))
        elif isinstance(event, LineTooLong):
            self.transport.write(self.session.line_too_long())
            self._again = True

    def _perform(self, action: Any) -> None:
        if isinstance(action, RunBlocking):
            self._run_blocking(action, action.login)
        elif isinstance(action, Call):
            self._waiting = action
            token = self._blocking = object()
            d = maybeDeferred(action.fn, *action.args)
            d.addCallbacks(
                self._resume_ok, self._failed, callbackArgs=(token,), errbackArgs=(token,)
            )
        elif isinstance(action, ReadLine):
            self._waiting = action
            self.parser.max_line = self.factory.limits.max_sasl_line
            self._again = True
        elif isinstance(action, ReadData):
            self._waiting = action
            self.parser.expect_data(action.max_size)
            self._reset_timeout()
            self._again = True
        elif isinstance(action, StartTLS):
            # CVE-2011-0411: plaintext pipelined behind STARTTLS is never executed.
            self.parser = SMTPParser(self.factory.limits.max_command_line)
            self.transport.startTLS(self.factory.tls_context_factory)
        elif isinstance(action, Close):
            self._close()
        else:  # pragma: no cover - the session yields nothing else
            raise TypeError(f"unknown session action {action!r}")

    def _resume_ok(self, result: Any, token: object) -> None:
        self._resume(token, result, None)

    def _failed(self, failure: Failure, token: object) -> None:
        self._resume(token, None, failure.value)

    def _internal_error(self) -> None:
        self.transport.write(reply(421, "4.3.0", "Internal error, closing connection"))
        self._close()

    def _hold_reading(self) -> bool:
        return (
            self._current is not None
            and not isinstance(self._waiting, ReadLine | ReadData)
            and self.parser.buffered_size >= MAX_BUFFERED_INPUT
        )

    def _timeout_delay(self) -> float:
        limits = self.factory.limits
        if isinstance(self._waiting, ReadData):
            return limits.data_timeout
        if self.session.user is None:
            return limits.prelogin_timeout
        return limits.idle_timeout

    def _timeout_reply(self) -> bytes:
        return self.session.timed_out()


class SubmissionFactory(ConnectionCounts, Factory):
    """Builds :class:`SubmissionProtocol` connections sharing one sender policy, rate
    limiter, authenticator and login penalty.

    ``accept(submission)`` commits a :class:`~gateway.submission.session.Submission`
    (queue row and Sent copy) and returns its queue id or a Deferred of it; the client
    gets 250 only after it returns. ``run_blocking(call) -> Deferred`` runs password
    checks off the reactor thread. ``penalty`` should be the IMAP factory's.
    ``policy`` may be replaced on reload (new sessions use the new one).
    """

    def __init__(
        self,
        *,
        policy: SenderPolicy,
        authenticator: Authenticator,
        accept: Accept,
        reactor: Any,
        run_blocking: RunBlockingFn,
        hostname: str = "localhost",
        limits: SubmissionLimits | None = None,
        tls_context_factory: Any = None,
        allow_plaintext_auth: bool = False,
        clock: IReactorTime | None = None,
        penalty: AuthPenalty | None = None,
    ) -> None:
        self.policy = policy
        self.authenticator = authenticator
        self.accept = accept
        self.reactor = reactor
        self.run_blocking = run_blocking
        self.hostname = hostname
        self.limits = limits if limits is not None else SubmissionLimits()
        self.tls_context_factory = tls_context_factory
        self.allow_plaintext_auth = allow_plaintext_auth
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.penalty = penalty
        self.rate = RateLimiter(self.limits.max_messages_per_hour)
        self.protocols: set[SubmissionProtocol] = set()
        ConnectionCounts.__init__(self)

    def buildProtocol(self, addr: Any) -> SubmissionProtocol:
        protocol = SubmissionProtocol(self)
        protocol.factory = self
        return protocol


class ListenerFactory(SharedListenerFactory):
    """One listener's view of the shared :class:`SubmissionFactory` (its own
    :class:`ListenerPolicy`: ``submission`` with STARTTLS or ``submissions``)."""

    protocol = SubmissionProtocol
