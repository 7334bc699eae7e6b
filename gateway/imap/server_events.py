"""The between-commands side of an IMAP connection: timers, protocol trace, IDLE/NOTIFY events.

:class:`ConnectionEvents` is a mixin of :class:`gateway.imap.server.IMAPServerProtocol`,
split off so that module stays readable; it shares the protocol's state and calls back
into its run loop (``_run``, ``_start``, ``_write``, ``_close``, ``_abort``,
``_drop_current``). Timers (RFC 3501 §5.4 autologout, RFC 2177 IDLE keep-alive) run on
the factory's injected clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from gateway.imap.handler import IdleEvent, ReadLine, WaitIdle
from gateway.imap.tracefile import ConnectionTrace

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from gateway.imap.factory import IMAPServerFactory
    from gateway.imap.framing import CommandParser
    from gateway.imap.session import IMAPSession
    from gateway.imap.stream import ConnectionStream
    from gateway.serving.socketwrites import SocketWrites

log = structlog.get_logger(__name__)


class ConnectionEvents:
    """Timers, trace and change notification for one IMAP connection (a mixin)."""

    factory: IMAPServerFactory
    session: IMAPSession
    parser: CommandParser
    peer: str
    _current: Any
    _waiting: Any
    _stepping: object | None
    _idle_events: list[IdleEvent]
    _notifying: bool
    _idling: bool
    _output_paused: bool
    _closing: bool
    _timeout_call: IDelayedCall | None
    _keepalive_call: IDelayedCall | None
    _next_turn_call: IDelayedCall | None
    _trace: ConnectionTrace | None
    _trace_wanted: bool
    _busy: bool
    _threads: Any
    _raw_line: bytes | None
    _raw_error: Any
    _direct: SocketWrites | None
    _stream: ConnectionStream
    _watching: int | None

    if TYPE_CHECKING:
        # Provided by IMAPServerProtocol (gateway.imap.server).
        def _run(self) -> None: ...
        def _start(self, run: Any) -> None: ...
        def _write(self, data: bytes) -> None: ...
        def _close(self) -> None: ...
        def _abort(self) -> None: ...
        def _drop_current(self) -> None: ...
        def _reset_timeout(self) -> None: ...
        def _end_burst(self) -> None: ...

    # -- timers --

    def _timeout_delay(self) -> float:
        limits = self.factory.limits
        if self._idling:
            return limits.idle_command_timeout
        if self.session.user is None:
            return limits.prelogin_timeout
        return limits.idle_timeout

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
        if self._stepping is not None or (busy and not self._output_paused):
            # (steps running on a store thread own the session until they return)
            self._reset_timeout()
            return
        if self._output_paused:
            log.info("imap.autologout", user=self.session.user, peer=self.peer)
            self._drop_current()
            self._abort()
            return
        super()._timed_out()  # type: ignore[misc]  # the driver's: BYE, then close

    def _timeout_reply(self) -> bytes:
        return self.session.autologout()

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
        turn, self._next_turn_call = self._next_turn_call, None
        if turn is not None and turn.active():
            turn.cancel()
        super()._cancel_timers()  # type: ignore[misc]  # the driver's: timeout, login delay

    # -- the protocol trace ([debug] trace_users, gateway.imap.tracefile) --

    def _update_trace(self) -> None:
        """Between two commands: start, keep or stop tracing for the logged-in user."""
        user = self.session.user
        factory = self.factory
        if user is None:
            return
        traced = user in factory.trace_users and factory.trace_root is not None
        if self._trace is not None and not self._trace.attached:
            if traced:
                assert factory.trace_root is not None
                self._trace.attach(factory.trace_root, user)
            else:
                self._stop_trace()
        elif self._trace is not None and not traced:
            self._stop_trace()
        elif self._trace is None and traced and self._trace_wanted:
            assert factory.trace_root is not None
            self._trace = ConnectionTrace(self.peer)
            self._trace.attach(factory.trace_root, user)
            self.parser.tap = self._trace.client.tap
        self._trace_wanted = False

    def _stop_trace(self) -> None:
        trace, self._trace = self._trace, None
        if trace is not None:
            trace.close()
            if getattr(self, "parser", None) is not None:
                self.parser.tap = None

    def trace_changed(self) -> None:
        """The traced users changed (a reload): follow at the next command boundary."""
        self._trace_wanted = True
        if self._current is None and not self._closing:
            self._update_trace()

    # -- change notification --

    def _update_watch(self) -> None:
        """Tell the factory which store changes concern this connection now (the mailbox
        it idles on, NOTIFY on or off), so that a push skips the others (issue 19)."""
        session = getattr(self, "session", None)
        after = None
        notify = False
        if session is not None and not self._closing:
            view = session.selected
            if self._idling and view is not None:
                after = view.mailbox.id
            notify = session.notifier is not None
        self.factory.watch(self, self._watching, after, notify)
        self._watching = after

    def access_changed(self) -> None:
        """A reload changed accounts or households: an idling session checks its access
        now (and says BYE if it lost it); others check before their next command."""
        if not self._idling or self._closing:
            return
        if IdleEvent.ACCESS not in self._idle_events:
            self._idle_events.append(IdleEvent.ACCESS)
        self._run()

    def mailbox_changed(self, mailbox_id: int) -> None:
        """RFC 2177: an IDLE client hears about changes to its mailbox at once; other
        sessions learn at their next command (the catch-up after every command). Under
        NOTIFY (RFC 5465) the mailboxes it watches count too, idle or not: between
        commands the notifications are sent at once, as a run without a tag."""
        if self._closing:
            return
        view = self.session.selected
        selected_id = view.mailbox.id if view is not None else None
        notifier = self.session.notifier
        wanted = notifier is not None and notifier.changed(mailbox_id, selected_id)
        if self._idling:
            if wanted or mailbox_id == selected_id:
                if notifier is None and self._push_now():
                    return
                if IdleEvent.CHANGED not in self._idle_events:
                    self._idle_events.append(IdleEvent.CHANGED)
                self._run()
            return
        if wanted and self._current is None:
            self._start_notifications()

    def _push_now(self) -> bool:
        """The short path of an IDLE push (issue 19, :func:`gateway.imap.catchup.idle_push`):
        while the IDLE command just waits for its next event (none queued before this
        one, output not held back by a slow reader, steps on this thread), the session's
        catch-up lines are written at once and the command is not stepped; False: the
        event takes the command's path."""
        if (
            self._busy
            or self._threads is not None
            or not isinstance(self._waiting, WaitIdle)
            or self._idle_events
            or self._output_paused
            or self._raw_line is not None
            or self._raw_error is not None
            or (self._direct is not None and self._direct.handed)
        ):
            return False
        try:
            out = self.session.idle_push()
        except Exception:
            # Never let one session break the fan-out to the others: the command's path
            # meets the same error inside the command, where it ends this connection.
            log.exception("imap.internal_error", peer=self.peer)
            return False
        if out is None:
            return False
        if out:
            direct = self._direct
            if direct is not None and self._trace is None and self._stream.codec is None:
                direct.send_now(self._stream.outgoing(out))  # counted; one send
            else:
                self._write(out)
                self._end_burst()  # COMPRESS's sync flush (RFC 4978 §4), the trace
        return True

    def _start_notifications(self) -> None:
        """RFC 5465 §1: NOTIFY's untagged responses may go out while no command runs."""
        self._notifying = True
        self._start(self.session.notifications())
        self._run()
