"""structlog set-up, done once per process: JSON lines for machines, colour-free key=value on a terminal.

Twisted's own log events are routed through the same pipeline so an operator reads one
stream. Nothing here ever formats a password or a message body: call sites pass only
names, counts and sizes, and :func:`scrub` drops keys that look secret as a last guard.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset({"password", "passwd", "secret", "pass", "credentials", "auth_response"})


def scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: a key that names a secret is masked, whatever called."""
    for key in SECRET_KEYS.intersection(event):
        event[key] = "***"
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process.

    ``fmt`` "auto" picks a readable console format on a terminal and JSON lines
    otherwise (systemd's journal, files, pipes).
    """
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def route_twisted_logs() -> None:
    """Send Twisted's log events (listener starts, unhandled errors) into structlog."""
    from twisted.logger import formatEvent, globalLogBeginner

    log = structlog.get_logger("twisted")

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

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
