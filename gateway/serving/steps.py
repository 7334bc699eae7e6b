"""Command steps on a store thread: how the servers' protocols (IMAP, ManageSieve) keep
database round trips off the reactor for a store that does not run inline (ARCHITECTURE.md,
"Store calls and the reactor").

:func:`run_steps` advances a command's generator on a store thread until it yields an
action, ends, or has produced :data:`STEP_OUTPUT_BUDGET` bytes; :class:`ThreadedSteps`
(mixed into :class:`~gateway.imap.server.IMAPServerProtocol` and
:class:`~gateway.managesieve.server.ManageSieveProtocol`, before their
:class:`~gateway.serving.driver.CommandDriver`) schedules one such batch at
a time per session and takes its result back on the reactor thread, where the bytes are
written and the action performed. So a session's state is only ever touched by one thread
at a time, and backpressure stays the protocol's (the next batch is scheduled only once
the transport wants more).

A batch that needs no database runs on the reactor thread instead, at once (bench/README.md,
"PostgreSQL mix tail, session 4"): under the 50-client mix every command waited ~20 ms
for a free store thread, a NOOP answered from the node's change log as long as a FETCH.
The protocol's :meth:`ThreadedSteps._inline_batch` hook decides (IMAP:
:mod:`gateway.imap.reactorsteps`) and returns what to leave when the batch is over (the
store's held catch-up answer), or None for a store thread.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.python.failure import Failure

Run = Generator[Any, Any, Any]
"""A command's generator (the session's handler run)."""

STEP_OUTPUT_BUDGET = 256 * 1024
"""Bytes of responses one batch of steps on a store thread may produce before handing
them to the reactor (backpressure is applied between batches)."""

DONE = object()
"""What :func:`run_steps` returns as the action when the command's generator ended."""


def run_steps(
    run: Run, throw: BaseException | None, value: Any, budget: int = STEP_OUTPUT_BUDGET
) -> tuple[list[bytes], Any]:
    """Advance a command's generator on a store thread: ``throw`` or ``send(value)``,
    then ``send(None)`` while it yields bytes, until it yields an action, ends
    (:data:`DONE`) or has produced ``budget`` bytes (action None: call again)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            item = run.throw(throw) if throw is not None else run.send(value)
        except StopIteration:
            return chunks, DONE
        throw = value = None
        if not isinstance(item, bytes):
            return chunks, item
        if item:
            chunks.append(item)
            size += len(item)
            if size >= budget:
                return chunks, None


class ThreadedSteps:
    """The protocol's side of :func:`run_steps` (its attributes are the protocol's and
    its driver's: ``_threads``, ``_busy``, ``_stepping``, ``_current``, ``_throw``, ``_send``,
    ``_closing``, ``_log``, ``event_prefix``; it calls the driver's ``_command_done``,
    ``_perform``, ``_run`` and ``_abort``)."""

    _threads: Any
    _busy: bool
    _stepping: object | None
    _current: Run | None
    _throw: BaseException | None
    _send: Any
    _closing: bool
    peer: str
    transport: Any
    _log: Any
    event_prefix: str

    _stepped: Run | None = None
    """The generator whose steps ran last (a fresh command's is not it yet)."""
    _last_action: Any = None
    """The action the last batch of :attr:`_stepped` ended on."""

    def _inline_batch(self, current: Run) -> Callable[[], None] | None:
        """Whether ``current``'s next batch of steps needs no database: if so, a callable
        to call when it is over (it runs on the reactor thread), else None (the default:
        a store thread)."""
        return None

    def _step_on_thread(self, current: Run) -> None:
        """Run the next batch of ``current``'s steps on a store thread (one at a time),
        or here when :meth:`_inline_batch` says it needs no database."""
        throw, self._throw = self._throw, None
        value, self._send = self._send, None
        token = self._stepping = object()
        release = self._inline_batch(current)
        if release is not None:
            try:
                result = run_steps(current, throw, value)
            except Exception:
                failure = Failure()
                release()
                self._steps_failed(failure, token, current)
                return
            release()
            self._steps_done(result, token, current)
            return
        assert self._threads is not None
        deferred = self._threads.run(run_steps, current, throw, value)
        deferred.addCallbacks(
            self._steps_done,
            self._steps_failed,
            callbackArgs=(token, current),
            errbackArgs=(token, current),
        )

    def _steps_done(self, result: tuple[list[bytes], Any], token: object, current: Run) -> None:
        if self._stepping is not token:
            return
        self._stepping = None
        if self._current is not current or self._closing:
            self._close_on_thread(current)  # dropped while its steps ran
            return
        chunks, action = result
        self._stepped = current
        self._last_action = action
        # The batch's chunks are one burst, as when the engine steps inline: a writer
        # that sends at once outside the engine (IMAP's direct socket writes) holds them
        # until the engine's end (the _run below) and sends them in one syscall. One
        # sendmsg per chunk was ~2.5 per command of the PostgreSQL mix, each ~0.1 ms of
        # the reactor's time and a TCP segment for the client to read (bench/README.md,
        # "PostgreSQL mix tail, session 6"); the bytes are the same.
        busy, self._busy = self._busy, True  # (an inline batch is inside the engine already)
        try:
            for chunk in chunks:
                self._write(chunk)
        finally:
            self._busy = busy
        if action is DONE:
            self._command_done()
        elif action is not None:
            self._perform(action)
        self._run()

    def _steps_failed(self, failure: Failure, token: object, current: Run) -> None:
        if self._stepping is not token:
            return
        self._stepping = None
        if self._current is not current or self._closing:
            return
        self._log.error(
            f"{self.event_prefix}.internal_error",
            peer=self.peer,
            exc_info=(failure.type, failure.value, failure.getTracebackObject()),
        )
        self._current = None
        self._abort()

    def _close_on_thread(self, current: Run) -> None:
        """Close a dropped command's generator where its steps run (its ``finally``
        blocks may call the store)."""
        assert self._threads is not None
        self._threads.run(current.close).addErrback(
            lambda f: self._log.error(
                f"{self.event_prefix}.internal_error", peer=self.peer, error=str(f.value)
            )
        )
