"""The ManageSieve server's transport glue: the only ManageSieve module that touches a
socket or a reactor.

It feeds received bytes to the sans-I/O :class:`~gateway.managesieve.parser.CommandParser`,
runs one command at a time through :meth:`ManageSieveSession.execute` (responses stay in
order), and performs the actions the session asks for: password checks off the reactor
thread with the shared login penalty (:mod:`gateway.security.penalty`), SASL continuation
strings, STARTTLS, close. The engine (one command at a time, blocking calls, reading
paused, timers) is the one every server shares, :mod:`gateway.serving.driver`.

Bounds: while a command runs, at most ``max_buffered_input`` unparsed bytes wait before
the transport stops reading; connections per source address and logged-in connections
per user and address are capped; timers (before and after login) run on an injected
clock. Responses are small (a script is at most the store's size limit), so output
needs no producer.

Where the store runs: with a store that runs inline (SQLite, memory) the glue advances
each command's generator right here, on the reactor thread; given a
:class:`~gateway.store.runner.ThreadRunner` (PostgreSQL) it advances it on a store
thread, one batch of steps at a time (:mod:`gateway.serving.steps`), and writes the
bytes and performs the actions back on the reactor thread, so no script-store round trip
runs on the reactor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.managesieve.handler import (
    Close,
    OwnerChecker,
    OwnerOf,
    ReadString,
    Refused,
    Run,
    RunBlocking,
    ScriptChecker,
    StartTLS,
)
from gateway.managesieve.parser import (
    MAX_DISCARD_SIZE,
    MAX_LINE_LENGTH,
    Command,
    CommandParser,
    NeedData,
    ProtocolError,
    StringResponse,
)
from gateway.managesieve.session import ManageSieveSession
from gateway.security.auth import Authenticator
from gateway.security.connections import ConnectionCounts, ListenerPolicy
from gateway.security.connections import ListenerFactory as SharedListenerFactory
from gateway.security.logins import LoginLimits
from gateway.security.penalty import AuthPenalty
from gateway.serving.driver import CommandDriver, RunBlockingFn
from gateway.serving.steps import ThreadedSteps
from gateway.store.runner import StoreRunner
from gateway.store.scripts import ScriptStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ManageSieveLimits:
    """Every bound the server applies to one connection (STYLE.md habit 2). The literal
    limit is the store's script size limit, so it is not repeated here."""

    max_line_length: int = MAX_LINE_LENGTH
    """Longest command line without its literals; longer is fatal (BYE)."""

    max_discard_size: int = MAX_DISCARD_SIZE
    """Largest over-size literal read and thrown away to stay in step; larger is fatal."""

    max_buffered_input: int = 256 * 1024
    """Unparsed pipelined input held while a command runs before reading pauses."""

    prelogin_timeout: float = 60.0
    """Seconds without a command before login, then ``BYE``."""

    idle_timeout: float = 30 * 60.0
    """Seconds without a command once logged in."""

    max_connections_per_ip: int = 100
    """Connections (logged in or not) from one address; the next gets ``BYE (TRYLATER)``."""

    max_connections_per_user_ip: int = 20
    """Logged-in connections of one user from one address; the next login is refused
    ``NO (TRYLATER)``. Script editors hold one or two; 0 means no limit."""


class ManageSieveProtocol(ThreadedSteps, CommandDriver, Protocol):
    """One ManageSieve connection (the engine is :class:`~gateway.serving.driver.CommandDriver`)."""

    session: ManageSieveSession
    parser: CommandParser
    _log = log
    event_prefix = "managesieve"

    def __init__(self, factory: ManageSieveFactory, policy: ListenerPolicy | None = None) -> None:
        self._init_driver(factory, policy)
        self._threads = factory.threads
        """The store's thread runner when command steps must leave the reactor thread."""
        self._stepping: object | None = None
        """Token of the batch of steps running on a store thread, if any."""
        self._login_limits = LoginLimits(
            factory,
            protocol="managesieve",
            refused=lambda: Refused("Too many failed logins; try again later", "TRYLATER"),
            over_limit=lambda: Refused(
                "Too many connections for this user from your address", "TRYLATER"
            ),
        )

    # -- connection lifetime --

    def connectionMade(self) -> None:
        factory = self.factory
        if not self._admit(b'BYE (TRYLATER) "Too many connections from your address"\r\n'):
            return
        self.session = ManageSieveSession(
            factory.store,
            factory.authenticator,
            factory.checker,
            sieve_extensions=factory.sieve_extensions,
            owner_of=factory.owner_of,
            owner_checker=factory.owner_checker,
            max_redirects=factory.max_redirects,
            peer=self.peer,
            tls_active=self.policy.implicit_tls or ISSLTransport.providedBy(self.transport),
            tls_available=factory.tls_context_factory is not None,
            plaintext_auth_allowed=self.policy.plaintext_auth_or(factory.allow_plaintext_auth),
        )
        self.parser = self._new_parser()
        self._greet(self.session.greeting())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._connection_ended()
        self._login_limits.release()
        self._release_source()
        log.info("managesieve.disconnect", peer=self.peer)

    def _new_parser(self) -> CommandParser:
        limits = self.factory.limits
        return CommandParser(
            max_line_length=limits.max_line_length,
            max_literal_size=self.factory.store.limits.max_script_size,
            max_discard_size=limits.max_discard_size,
        )

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.parser.receive_data(data)
        self._run()

    # -- the driver's hooks --

    def _pump_input(self) -> None:
        if self._closing:
            return
        if isinstance(self._waiting, ReadString):
            event = self.parser.next_event()
            if isinstance(event, StringResponse):
                self._waiting, self._send = None, event.value
            elif isinstance(event, ProtocolError):
                self._waiting = None
                if event.fatal:
                    self._drop_current()
                    self._start(self.session.protocol_error(event))
                else:
                    self._throw = Refused("Invalid SASL response")
            return
        if self._current is not None:
            return
        event = self.parser.next_event()
        if isinstance(event, NeedData):
            return
        self._reset_timeout()
        if isinstance(event, Command):
            self._start(self.session.execute(event))
        elif isinstance(event, ProtocolError):
            self._start(self.session.protocol_error(event))

    def _may_step(self) -> bool:
        if self._waiting is not None:
            return False
        if self._threads is not None:
            if self._stepping is None:
                self._step_on_thread(self._current)
            return False
        return True

    def _close_run(self, current: Run) -> None:
        if self._stepping is not None:
            return  # its steps are running on a store thread: closed when they return
        if self._threads is not None:
            self._close_on_thread(current)  # its finally blocks may call the store
        else:
            current.close()

    def _perform(self, action: Any) -> None:
        if isinstance(action, RunBlocking):
            self._run_blocking(action, action.login)
        elif isinstance(action, ReadString):
            self.transport.write(action.prompt)
            self._waiting = action
            self.parser.expect_string()
            self._again = True  # the answer may already be buffered
        elif isinstance(action, StartTLS):
            # RFC 5804 §2.2 / CVE-2011-0411: plaintext pipelined behind STARTTLS dies here.
            self.parser = self._new_parser()
            self.transport.startTLS(self.factory.tls_context_factory)
            self.session.tls_started()
        elif isinstance(action, Close):
            self._close()
        else:  # pragma: no cover - the session yields nothing else
            raise TypeError(f"unknown session action {action!r}")

    def _command_done(self) -> None:
        # A slot taken for a login that did not complete, or left by UNAUTHENTICATE.
        if self._login_limits.slot is not None and self.session.user is None:
            self._login_limits.release()
        super()._command_done()

    def _hold_reading(self) -> bool:
        return (
            self._current is not None
            and not isinstance(self._waiting, ReadString)
            and self.parser.buffered_size >= self.factory.limits.max_buffered_input
        )

    def _timeout_delay(self) -> float:
        limits = self.factory.limits
        return limits.prelogin_timeout if self.session.user is None else limits.idle_timeout

    def _timeout_reply(self) -> bytes:
        return self.session.autologout()


class ManageSieveFactory(ConnectionCounts, Factory):
    """Builds :class:`ManageSieveProtocol` connections sharing one script store,
    authenticator, checker and login penalty.

    ``checker(script_text)`` validates Sieve (the Sieve engine's); ``owner_checker(owner,
    script_text)``, when given, is used instead with the script's owner (whether
    ``redirect``/``vacation`` are allowed depends on the owner's upstreams);
    ``max_redirects`` is the MAXREDIRECTS capability (None: not announced);
    ``store_runner`` says where script-store calls run: a runner that is not inline (the
    PostgreSQL store's :class:`~gateway.store.runner.ThreadRunner`) makes every
    command's steps run on its threads; None or an inline runner keeps them here;
    ``sieve_extensions`` is what the SIEVE capability lists; ``owner_of(user)`` maps a canonical user to the
    script owner (households); ``run_blocking(call) -> Deferred`` runs the password
    check off the reactor thread; ``penalty`` should be the one the IMAP factory uses, so
    failures on either protocol count together. ``allow_plaintext_auth`` false means
    passwords only after STARTTLS (SASL "" until then, NO (ENCRYPT-NEEDED)).
    """

    def __init__(
        self,
        store: ScriptStore,
        authenticator: Authenticator,
        checker: ScriptChecker,
        *,
        reactor: Any,
        run_blocking: RunBlockingFn,
        sieve_extensions: Iterable[str] = (),
        owner_of: OwnerOf | None = None,
        limits: ManageSieveLimits | None = None,
        tls_context_factory: Any = None,
        allow_plaintext_auth: bool = True,
        clock: IReactorTime | None = None,
        penalty: AuthPenalty | None = None,
        owner_checker: OwnerChecker | None = None,
        max_redirects: int | None = None,
        store_runner: StoreRunner | None = None,
    ) -> None:
        self.store = store
        self.threads = (
            store_runner if store_runner is not None and not store_runner.inline else None
        )
        """The runner command steps go through, or None: on the reactor thread."""
        self.authenticator = authenticator
        self.checker = checker
        self.owner_checker = owner_checker
        self.max_redirects = max_redirects
        self.reactor = reactor
        self.run_blocking = run_blocking
        self.sieve_extensions = tuple(sieve_extensions)
        self.owner_of = owner_of
        self.limits = limits if limits is not None else ManageSieveLimits()
        self.tls_context_factory = tls_context_factory
        self.allow_plaintext_auth = allow_plaintext_auth
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.penalty = penalty
        self.protocols: set[ManageSieveProtocol] = set()
        ConnectionCounts.__init__(self)

    def buildProtocol(self, addr: Any) -> ManageSieveProtocol:
        return ManageSieveProtocol(self)


class ListenerFactory(SharedListenerFactory):
    """One listener's view of the shared :class:`ManageSieveFactory` (its own
    :class:`ListenerPolicy`, shared store, limits, penalty and connection counts)."""

    protocol = ManageSieveProtocol
