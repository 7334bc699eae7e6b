"""What an IMAP listener is configured with: connection limits, per-listener policy, the
observer it reports to, and the runner for blocking calls.

Plain values and small seams, so the service can build them from its config and tests
can pass their own (an inline runner, a recording observer) without a reactor.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred

from gateway.imap.budgets import (
    MAX_APPEND_IN_FLIGHT,
    MAX_APPEND_IN_FLIGHT_PER_USER,
    MAX_PRELOGIN_BUFFERED,
)
from gateway.imap.framing import (
    MAX_LINE_LENGTH,
    MAX_LITERAL_SIZE,
    MAX_LITERALS,
    MAX_NESTING,
    MAX_SEQUENCE_RANGES,
    PRELOGIN_MAX_LITERAL_SIZE,
    CommandParser,
    prelogin_command_size,
)
from gateway.imap.spool import SPOOL_THRESHOLD, LiteralSpool
from gateway.security.connections import ListenerPolicy as ListenerPolicy  # one for all servers
from gateway.serving.driver import RunBlockingFn as RunBlockingFn  # one for all servers
from gateway.store.search import MAX_SEARCH_DEPTH

UTF8_ACCEPT_SUPPORTED = True
"""RFC 6855 UTF8=ACCEPT is announced: the session and parser handle UTF-8 names and
quoted strings after ``ENABLE UTF8=ACCEPT``, and APPEND takes the ``UTF8 (~{n})`` data
extension of §4 (:func:`gateway.imap.grammar._utf8_literal`)."""


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

    max_line_length: int = MAX_LINE_LENGTH
    """Longest command line (without literals); longer is a fatal protocol error."""

    max_literal_size: int = MAX_LITERAL_SIZE
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

    max_prelogin_literal_size: int = PRELOGIN_MAX_LITERAL_SIZE
    """Largest literal before login; over it ``NO [TOOBIG]`` for ``{n}`` (no ``+``), BYE
    for ``{n+}`` (RFC 7888 §4: the bytes are already on their way)."""

    max_prelogin_buffered: int = MAX_PRELOGIN_BUFFERED
    """Input held by all unauthenticated connections together; the connection that would
    pass it gets ``* BYE [LIMIT]`` (:mod:`gateway.imap.budgets`)."""

    max_append_in_flight_per_user: int = MAX_APPEND_IN_FLIGHT_PER_USER
    """Literal bytes one user may have announced and not yet stored; beyond: ``NO [LIMIT]``."""

    max_append_in_flight: int = MAX_APPEND_IN_FLIGHT
    """Literal bytes in flight for all users together; beyond: ``NO [LIMIT]``."""

    spool_threshold: int = SPOOL_THRESHOLD
    """Literals larger than this are written to a spool file, not kept in memory."""

    @property
    def max_command_size(self) -> int:
        """A whole command, literals included (MULTIAPPEND may carry a few messages)."""
        return 2 * self.max_literal_size

    @property
    def max_prelogin_command_size(self) -> int:
        """A whole command before login: one full line plus LOGIN's two literals."""
        return prelogin_command_size(self.max_line_length, self.max_prelogin_literal_size)

    def new_parser(
        self,
        *,
        spool: Callable[[int], LiteralSpool] | None = None,
        literal_gate: Callable[[int], str | None] | None = None,
    ) -> CommandParser:
        """A parser with these caps (those of the authenticated state: see :meth:`apply_state`)."""
        return CommandParser(
            max_line_length=self.max_line_length,
            max_literal_size=self.max_literal_size,
            max_command_size=self.max_command_size,
            max_literals=self.max_literals,
            max_nesting=self.max_nesting,
            max_search_depth=self.max_search_depth,
            max_sequence_ranges=self.max_sequence_ranges,
            spool=spool,
            spool_threshold=self.spool_threshold,
            literal_gate=literal_gate,
        )

    def apply_state(self, parser: CommandParser, authenticated: bool) -> None:
        """Before login only small literals and commands (issue 20 item 2); the full sizes
        once authenticated. Parsing is lazy, so a command pipelined after LOGIN is read
        with the caps of the state LOGIN left."""
        if authenticated:
            parser.max_literal_size = self.max_literal_size
            parser.max_command_size = self.max_command_size
        else:
            parser.max_literal_size = self.max_prelogin_literal_size
            parser.max_command_size = self.max_prelogin_command_size


def thread_runner(reactor: Any) -> RunBlockingFn:
    """The production ``run_blocking``: the reactor's thread pool."""

    def run(call: Callable[[], Any]) -> Deferred:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), call)

    return run
