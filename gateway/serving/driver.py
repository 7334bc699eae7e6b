"""The command driver the three servers' protocols share: a session's generator handlers
stepped one at a time, with backpressure, resumed after blocking calls, under timers.

Every popgate server (IMAP, ManageSieve, submission) has the same three layers: a
sans-I/O parser, a session whose handlers are generators yielding response bytes and
actions, and one thin Twisted protocol. :class:`CommandDriver` is the part of that
protocol which is the same in all three:

- one command at a time (responses stay in order: RFC 3501 §5.5, RFC 2920 for SMTP
  PIPELINING, RFC 5804): :meth:`~CommandDriver._run` pulls input and advances the
  current generator until both wait; a re-entrant call (a Deferred firing synchronously)
  only asks the running loop for another round;
- a blocking call (the password check) runs through the factory's ``run_blocking``, off
  the reactor thread, inside the shared login limits (:mod:`gateway.security.logins`);
  its result, or a delayed refusal, resumes the command only if the command still
  waits for it (a token per wait);
- input backpressure: while a command runs and too much unparsed input waits, the
  transport stops reading (:meth:`~CommandDriver._hold_reading` says when);
- the inactivity timer (reset on each command; :meth:`~CommandDriver._timeout_delay`
  says how long), on the factory's injected clock, and closing or aborting.

What differs stays in each protocol, as overrides of the hooks named here: which input
events a waiting action takes (``_pump_input``), the actions themselves (``_perform``),
when a step may run (``_may_step``: IMAP also waits for output room, raw lines and
IDLE events, and may step on a store thread), what a finished command leaves behind
(``_command_done``), and the answers to an internal error or a timeout. It imports no
reactor: the factory's ``clock`` and ``run_blocking`` are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from gateway.security.connections import ListenerPolicy, peer_address

RunBlockingFn = Callable[[Callable[[], Any]], Deferred]
"""A factory's ``run_blocking(call) -> Deferred``: runs ``call`` off the reactor thread."""


class CommandDriver:
    """The engine of one connection (a mixin of a Twisted ``Protocol``).

    The protocol sets :attr:`_log` (its module's logger, so events keep their logger
    name) and :attr:`event_prefix` (``imap``, ``managesieve``, ``submission``), calls
    :meth:`_init_driver` in its ``__init__`` with its factory (which has ``clock``,
    ``run_blocking`` and the per-source counts of
    :class:`~gateway.security.connections.ConnectionCounts`), and provides ``transport``,
    ``session`` and ``_login_limits`` (a :class:`~gateway.security.logins.LoginLimits`).
    """

    _log: Any
    event_prefix: str
    timeout_event: str = "autologout"
    """The event logged (after :attr:`event_prefix`) when the inactivity timer fires."""

    transport: Any
    session: Any
    _login_limits: Any

    def _init_driver(self, factory: Any, policy: ListenerPolicy | None) -> None:
        self.factory = factory
        self.policy = policy if policy is not None else ListenerPolicy()
        self.peer = "unknown"
        self.peer_host = "local"
        self._source_counted = False
        self._current: Any = None
        """The running command's generator (None between commands)."""
        self._waiting: Any = None
        """The action the current command waits on, if any."""
        self._send: Any = None
        self._throw: BaseException | None = None
        self._blocking: object | None = None
        """Identifies the current wait on a blocking call; a stale result is dropped."""
        self._closing = False
        self._busy = False
        self._again = False
        self._reading_paused = False
        self._timeout_call: Any = None
        self._login_delay_call: Any = None

    # -- hooks (overridden by each protocol) --

    def _pump_input(self) -> None:
        """Take parser events: the answer to a waiting action, or the next command."""
        raise NotImplementedError

    def _perform(self, action: Any) -> None:
        """Carry out an action the current command yielded."""
        raise NotImplementedError

    def _may_step(self) -> bool:
        """Whether the current command may take its next step now."""
        return self._waiting is None

    def _before_run(self) -> None:
        """Called once per outer :meth:`_run`, before its loop."""

    def _after_run(self) -> None:
        """Called once per outer :meth:`_run`, after its loop."""
        self._update_reading()

    def _hold_reading(self) -> bool:
        """Whether the transport should stop reading for now."""
        raise NotImplementedError

    def _timeout_delay(self) -> float:
        raise NotImplementedError

    def _timeout_reply(self) -> bytes:
        """What the client is told when the inactivity timer fires."""
        raise NotImplementedError

    def _internal_error(self) -> None:
        """A handler raised: the connection ends (abruptly, unless overridden)."""
        self._abort()

    def _write(self, data: bytes) -> None:
        self.transport.write(data)

    def _close_run(self, current: Any) -> None:
        """Close a dropped command's generator (its ``finally`` blocks run)."""
        current.close()

    def _shutting_down(self, graceful: bool) -> None:
        """The connection is closing (``graceful``) or being aborted: release what the
        protocol holds beyond the timers."""

    def _disconnect(self) -> None:
        self.transport.loseConnection()

    # -- admission --

    def _admit(self, refusal: bytes) -> bool:
        """The first step of ``connectionMade``: who the peer is, and whether its address
        may hold one more connection (the per-source cap; one source holding that many is
        abuse or a broken client). A refused peer is told ``refusal`` and the connection
        closes before any per-connection state exists."""
        self.peer_host, self.peer = peer_address(self.transport)
        if not self.factory.admit_source(self.peer_host):
            self._closing = True
            self._log.warning(
                f"{self.event_prefix}.connection_refused", peer=self.peer, reason="per_ip_limit"
            )
            self._write(refusal)
            self.transport.loseConnection()
            return False
        self._source_counted = True
        return True

    def _greet(self, greeting: bytes) -> None:
        """The last step of ``connectionMade``, once the session exists: the connection
        counts among the factory's, the greeting goes out, the timer starts."""
        self.factory.protocols.add(self)
        self._log.info(f"{self.event_prefix}.connect", peer=self.peer)
        self._write(greeting)
        self._reset_timeout()

    def _connection_ended(self) -> None:
        """The first step of ``connectionLost``: the command is dropped (its ``finally``
        blocks run), the timers stop, the factory forgets the connection."""
        self._closing = True
        self._drop_current()
        self._cancel_timers()
        self._login_limits.withdraw()  # no longer waiting for a password check's turn
        self.factory.protocols.discard(self)

    def _release_source(self) -> None:
        """Give back the per-source count :meth:`_admit` took (once)."""
        if self._source_counted:
            self._source_counted = False
            self.factory.release_source(self.peer_host)

    # -- the engine --

    def _run(self) -> None:
        """Pull input events and advance the current command until both wait. Re-entrant
        calls (a Deferred firing synchronously, a write pausing us) just ask for another
        round of the loop already running."""
        if self._busy:
            self._again = True
            return
        self._busy = True
        self._before_run()
        try:
            while True:
                self._again = False
                self._pump_input()
                if self._current is not None:
                    # (no command: nothing to step; a protocol's _advance may wrap the
                    # steps in a block, e.g. IMAP's group commit, not worth entering)
                    self._advance()
                if not self._again or self._closing:
                    break
        finally:
            self._busy = False
        self._after_run()

    def _start(self, run: Any) -> None:
        self._current = run
        self._send = None
        self._throw = None
        self._waiting = None

    def _advance(self) -> None:
        while not self._closing and self._current is not None:
            if not self._may_step():
                return
            current = self._current
            try:
                if self._throw is not None:
                    error, self._throw = self._throw, None
                    out = current.throw(error)
                else:
                    value, self._send = self._send, None
                    out = current.send(value)
            except StopIteration:
                self._command_done()
                return
            except Exception:
                self._log.exception(f"{self.event_prefix}.internal_error", peer=self.peer)
                self._current = None
                self._internal_error()
                return
            self._emit(out)

    def _emit(self, out: Any) -> None:
        """Write what a step yielded, or perform its action (a protocol may hold it)."""
        if isinstance(out, bytes):
            if out:
                self._write(out)
        else:
            self._perform(out)

    def _command_done(self) -> None:
        """The current command's generator ended: the next command may start."""
        self._current = None
        self._reset_timeout()
        self._again = True

    def _drop_current(self) -> None:
        current, self._current = self._current, None
        self._waiting = None
        self._blocking = None
        if current is not None:
            self._close_run(current)

    # -- blocking calls and the login limits --

    def _run_blocking(self, action: Any, login: str | None) -> None:
        """Run ``action.call`` through the factory's ``run_blocking`` and resume the
        command with its result; with ``login`` (the user name given) inside the login
        limits: maybe waiting for a turn or refused before any check, failures delayed."""
        self._waiting = action
        token = self._blocking = object()
        if login is not None:
            # The check may wait for its source's turn (gateway/security/penalty.py).
            self._login_limits.begin(
                self.peer_host,
                self.peer,
                login,
                lambda refused: self._start_blocking(action, token, login, refused),
            )
            return
        self._start_blocking(action, token, None, None)

    def _start_blocking(self, action: Any, token: object, login: str | None, refused: Any) -> None:
        """Run the blocking call (a password check once it has its turn), or answer the
        refusal (a spent failure budget) after the source's delay."""
        if refused is not None:
            self._resume_later(refused[0], token, refused[1], refused[2])
            return
        attempt = self._login_limits.attempt if login is not None else None
        if self._blocking is not token or self._closing:
            self._login_limits.abandon(attempt)
            return
        try:
            deferred = self.factory.run_blocking(action.call)
        except Exception:
            deferred = fail()
        deferred.addCallbacks(
            self._blocking_done,
            self._blocking_failed,
            callbackArgs=(token, attempt),
            errbackArgs=(token, attempt),
        )

    def _blocking_done(self, result: Any, token: object, attempt: Any) -> None:
        if self._blocking is not token or self._closing:
            # The command is gone (the client hung up): a password check still counts.
            self._login_limits.settle(attempt, result if isinstance(result, str) else None)
            return
        login = getattr(self._waiting, "login", None)
        if login is not None:
            # A password check: failures are delayed, successes take a connection slot.
            delay, user, error = self._login_limits.checked(
                self.peer_host, self.peer, login, result
            )
            self._resume_later(delay, token, user, error)
            return
        self._resume(token, result, None)

    def _blocking_failed(self, failure: Failure, token: object, attempt: Any) -> None:
        self._login_limits.abandon(attempt)
        self._resume(token, None, failure.value)

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

    # -- reading, closing, timers --

    def _update_reading(self) -> None:
        """Stop reading while :meth:`_hold_reading` says so, and read again after."""
        if self._closing:
            return
        hold = bool(self._hold_reading())
        if hold != self._reading_paused:
            self._reading_paused = hold
            if hold:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _close(self) -> None:
        """Close once everything written so far has been sent."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timers()
        self._shutting_down(True)
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        self._disconnect()

    def _abort(self) -> None:
        self._closing = True
        self._cancel_timers()
        self._shutting_down(False)
        self.transport.abortConnection()

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
        self._timeout_call = None
        if self._closing:
            return
        self._log.info(
            f"{self.event_prefix}.{self.timeout_event}", user=self.session.user, peer=self.peer
        )
        self._drop_current()
        self._write(self._timeout_reply())
        self._close()

    def _cancel_timers(self) -> None:
        for call in (self._timeout_call, self._login_delay_call):
            if call is not None and call.active():
                call.cancel()
        self._timeout_call = self._login_delay_call = None
