"""Commands about the connection itself: CAPABILITY, NOOP, CHECK, LOGOUT, ID, ENABLE, IDLE.

RFC 3501 §6.1 and §6.4.1, RFC 2971 (ID), RFC 5161 (ENABLE), RFC 2177 (IDLE). Handlers
follow :mod:`gateway.imap.handler`; the state changes they cause (logout, enabled
capabilities) go through the session's transitions.
"""

from __future__ import annotations

import structlog

from gateway.imap import wire
from gateway.imap.capabilities import SERVER_NAME
from gateway.imap.command import Command, Enable, Id
from gateway.imap.handler import (
    BadCommand,
    Handler,
    IdleEvent,
    Session,
    WaitIdle,
    logged,
    ok,
)

log = structlog.get_logger(__name__)


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("popgate")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def capability(session: Session, cmd: Command) -> Handler:
    """CAPABILITY, RFC 3501 §6.1.1. State: any."""
    yield f"* CAPABILITY {session.capability_text()}\r\n".encode()
    return ok("CAPABILITY completed")


_NOOP_OK = ok("NOOP completed")
_CHECK_OK = ok("CHECK completed")
"""NOOP's and CHECK's replies, made once (a phone's NOOP every few seconds is the most
frequent command a server sees)."""


def noop(session: Session, cmd: Command) -> Handler:
    """NOOP (RFC 3501 §6.1.2) and CHECK (§6.4.1): nothing to do here; the catch-up that
    follows every command reports what changed. State: any / selected."""
    yield from ()
    return _CHECK_OK if cmd.name.upper() == "CHECK" else _NOOP_OK


def logout(session: Session, cmd: Command) -> Handler:
    """LOGOUT, RFC 3501 §6.1.3: BYE, tagged OK, close. State: any."""
    session.log_out()
    yield b"* BYE IMAP4rev1 Server logging out\r\n"
    return ok("LOGOUT completed")


def id_(session: Session, cmd: Id) -> Handler:
    """ID, RFC 2971 §3.1: who we are. The client's name and version are logged (handy
    when a client misbehaves), nothing else of its list. State: any."""
    if cmd.params:
        given = {k.lower(): v for k, v in cmd.params if v is not None}
        log.info(
            "imap.client_id",
            peer=session.peer,
            name=logged(given.get("name", "")),
            version=logged(given.get("version", "")),
        )
    fields = (("name", SERVER_NAME), ("version", _server_version()))
    body = b" ".join(wire.quote(k.encode()) + b" " + wire.quote(v.encode()) for k, v in fields)
    yield b"* ID (" + body + b")\r\n"
    return ok("ID completed")


def enable(session: Session, cmd: Enable) -> Handler:
    """ENABLE, RFC 5161 §3.1: reports only what this command newly enabled.
    QRESYNC implies CONDSTORE (RFC 7162 §3.2.3). State: authenticated."""
    newly = session.enable(cmd.capabilities)
    yield ("* ENABLED" + "".join(" " + c for c in newly) + "\r\n").encode("ascii")
    return ok("ENABLE completed")


def idle(session: Session, cmd: Command) -> Handler:
    """IDLE, RFC 2177: ``+ idling``, then push changes to the selected mailbox as they
    happen, ``* OK Still here`` on each keep-alive tick, until the client sends ``DONE``
    (anything else is BAD and ends the IDLE). State: authenticated or selected."""
    yield b"+ idling\r\n"
    yield from session.notifications(idling=True)
    while True:
        event = yield WaitIdle()
        if isinstance(event, bytes):
            if event.strip().upper() == b"DONE":
                return ok("IDLE terminated")
            raise BadCommand("Expected DONE to end IDLE")
        if event is IdleEvent.KEEPALIVE:
            yield b"* OK Still here\r\n"
        elif event is IdleEvent.CHANGED:
            yield from session.notifications(idling=True)  # RFC 2177, RFC 5465
        elif event is IdleEvent.ACCESS:
            session.check_access()  # a reload may have ended this session's access
