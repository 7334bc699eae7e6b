"""structlog set-up, done once per process: JSON lines for machines, colour-free key=value on a terminal.

Twisted's own log events are routed through the same pipeline so an operator reads one
stream. Nothing here ever formats a password or a message body: call sites pass only
names, counts and sizes, and :func:`scrub` drops keys that look secret as a last guard.

Warnings and errors are also kept, already scrubbed, in a small ring buffer
(:data:`RECENT_ERRORS`), which ``popgate status`` shows as "recent errors": an operator
asking "why did mail not arrive?" sees the last few problems without searching the journal.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import Any, TextIO

import structlog

from gateway.core.display import printable, printable_lines

SECRET_KEYS = frozenset({"password", "passwd", "secret", "pass", "credentials", "auth_response"})

RECENT_ERRORS_SIZE = 50
"""How many warning/error events the ring buffer keeps (the oldest fall out)."""

MAX_RECENT_VALUE = 300
"""A string field kept in the ring buffer is cut to this many characters."""

_RECENT_SKIPPED_KEYS = frozenset({"exc_info", "traceback", "stack", "stack_info"})
"""Fields left out of the ring buffer: big, and already in the log stream."""

_RECENT_LEVELS = frozenset({"warning", "error", "critical", "exception"})


def scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: a key that names a secret is masked, whatever called."""
    for key in SECRET_KEYS.intersection(event):
        event[key] = "***"
    return event


def _plain(value: Any) -> Any:
    """A JSON-safe, bounded copy of one field value."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple) and len(value) <= 20:
        return [_plain(v) for v in value]
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_RECENT_VALUE else text[: MAX_RECENT_VALUE - 1] + "…"


class RecentErrors:
    """A bounded ring buffer of the last warning/error events, as a structlog processor.

    It sits after :func:`scrub` in the chain, so nothing secret is kept. Thread-safe:
    Twisted's thread pool may log too.
    """

    def __init__(self, size: int = RECENT_ERRORS_SIZE) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, _logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        level = str(event.get("level", name)).lower()
        if level in _RECENT_LEVELS:
            kept = {
                key: _plain(value)
                for key, value in event.items()
                if key not in _RECENT_SKIPPED_KEYS and not key.startswith("_")
            }
            kept["level"] = "error" if level in ("exception", "critical") else level
            with self._lock:
                self._events.append(kept)
        return event

    def snapshot(self) -> list[dict[str, Any]]:
        """The kept events, oldest first."""
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


RECENT_ERRORS = RecentErrors()
"""The process's ring buffer, filled once :func:`configure` has run."""


def processors(renderer: Any, recent: RecentErrors | None = None) -> list[Any]:
    """The processor chain shared by the service and the tests (one definition)."""
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub,
    ]
    if recent is not None:
        chain.append(recent)
    chain += [structlog.processors.format_exc_info, renderer]
    return chain


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    recent: RecentErrors | None = RECENT_ERRORS,
) -> None:
    """Configure structlog for the whole process.

    ``fmt`` "auto" picks a readable console format on a terminal and JSON lines
    otherwise (systemd's journal, files, pipes). Events below ``level`` are dropped
    before any processing, so debug events cost almost nothing in production.
    """
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = console_renderer()
    structlog.configure(
        processors=processors(renderer, recent),
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        # WriteLogger writes to exactly this stream; PrintLogger would follow a replaced
        # sys.stdout, which twistd turns into a log observer: a loop with ours.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def console_renderer() -> Any:
    """structlog's console renderer, with every string escaped first (a user name or an
    upstream's error text must not drive the terminal: gateway/core/display.py). A
    formatted traceback keeps its line breaks; every other value is one line."""
    render = structlog.dev.ConsoleRenderer(colors=False)

    def escaped(logger: Any, name: str, event: dict[str, Any]) -> str:
        safe = {
            key: (printable_lines(v) if key == "exception" else printable(v))
            if isinstance(v, str)
            else v
            for key, v in event.items()
        }
        return render(logger, name, safe)

    return escaped


def configure_for_tests() -> None:
    """Quiet logging for test runs: every event goes through the real processor chain
    (so a secret or an unserialisable field still fails loudly) but nothing is printed.
    ``structlog.testing.capture_logs()`` keeps working on top of it."""
    structlog.configure(
        processors=processors(structlog.processors.JSONRenderer()),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def twisted_observer() -> Any:
    """A Twisted log observer that re-emits Twisted's events (listener starts, unhandled
    errors) through structlog, so an operator reads one stream in one format.

    Also usable as ``twistd --logger gateway.app.logs.twisted_observer`` (the systemd unit
    does this): twistd then writes no text lines of its own next to the JSON ones.
    """
    from twisted.logger import ILogObserver, formatEvent
    from zope.interface import provider

    log = structlog.get_logger("twisted")

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        text = formatEvent(event)
        level = event.get("log_level")
        name = getattr(level, "name", "info")
        if failure is not None:
            log.error(
                "twisted.error",
                message=text,
                error=failure.getErrorMessage(),
                traceback=failure.getTraceback(),
            )
        elif name in ("error", "critical"):
            log.error("twisted.log", message=text)
        elif name == "warn":
            log.warning("twisted.log", message=text)
        else:
            log.debug("twisted.log", message=text)

    return observer


def route_twisted_logs() -> None:
    """Send Twisted's log events into structlog (``popgate serve``; twistd uses
    ``--logger gateway.app.logs.twisted_observer`` instead)."""
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([twisted_observer()], redirectStandardIO=False)
