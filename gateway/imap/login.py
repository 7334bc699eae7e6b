"""Commands of the not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE.

RFC 3501 §6.2 with RFC 2595 (STARTTLS), RFC 4616 (SASL PLAIN) and RFC 4959 (SASL-IR).
Password checks (scrypt) are yielded as :class:`RunBlocking` actions so they run off the
reactor thread, and the transport glue applies login penalties and limits around them.
"""

from __future__ import annotations

import base64
import binascii
from functools import partial

import structlog

from gateway.imap.capabilities import login_permitted
from gateway.imap.command import Authenticate, Command, Login
from gateway.imap.handler import (
    BadCommand,
    Handler,
    ReadLine,
    Refused,
    Reply,
    RunBlocking,
    Session,
    logged,
    ok,
)
from gateway.security.sasl import MalformedPlain, check_plain, decode_plain

log = structlog.get_logger(__name__)


def starttls(session: Session, cmd: Command) -> Handler:
    """STARTTLS, RFC 3501 §6.2.1. The TLS handshake starts right after the tagged OK;
    the glue discards whatever plaintext the client pipelined behind the command
    (RFC 2595 §3.1, CVE-2011-0411). State: not authenticated."""
    if session.tls_active:
        raise BadCommand("TLS is already active")
    if not session.tls_available:
        raise BadCommand("STARTTLS is not available on this listener")
    session.begin_tls()
    yield from ()
    return ok("Begin TLS negotiation now")


def _check_login_allowed(session: Session) -> None:
    if not login_permitted(session.situation()):
        raise Refused(
            "Plaintext authentication disallowed on non-secure connections", "PRIVACYREQUIRED"
        )


def _finish_login(session: Session, user: str, canonical: str | None) -> Reply:
    if canonical is None:
        log.warning("imap.auth_failed", user=logged(user), peer=session.peer)
        raise Refused("Authentication failed.", "AUTHENTICATIONFAILED")
    session.user_store(canonical).ensure_user(canonical)
    session.log_in(canonical)
    log.info("imap.login", user=canonical, peer=session.peer)
    return ok("Logged in", "CAPABILITY " + session.capability_text())


def login(session: Session, cmd: Login) -> Handler:
    """LOGIN, RFC 3501 §6.2.3. The password check (scrypt) runs off the reactor thread.
    State: not authenticated."""
    _check_login_allowed(session)
    try:
        user = cmd.user.decode("utf-8")
    except UnicodeDecodeError:
        user = cmd.user.decode("utf-8", "replace")
        canonical = None
    else:
        canonical = yield RunBlocking(
            partial(session.authenticator.authenticate, user, cmd.password), login=user
        )
    return _finish_login(session, user, canonical)


def authenticate(session: Session, cmd: Authenticate) -> Handler:
    """AUTHENTICATE PLAIN, RFC 3501 §6.2.2 with RFC 4616 and RFC 4959 (SASL-IR).
    State: not authenticated."""
    if cmd.mechanism.upper() != "PLAIN":
        raise Refused("Unsupported authentication mechanism")
    _check_login_allowed(session)
    if cmd.initial_response is None:
        response = yield ReadLine(b"+ \r\n")
    elif cmd.initial_response == b"=":
        response = b""
    else:
        response = cmd.initial_response
    if response.strip() == b"*":
        raise BadCommand("Authentication cancelled")
    try:
        message = base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise BadCommand("Invalid base64 in the SASL response") from None
    try:
        credentials = decode_plain(message)
    except MalformedPlain:
        log.warning("imap.auth_failed", user="", peer=session.peer, reason="malformed")
        raise Refused("Authentication failed.", "AUTHENTICATIONFAILED") from None
    # A foreign authzid (RFC 4616 §2: acting as another user is not supported) fails
    # inside the check, so it is delayed and counted like a wrong password.
    canonical = yield RunBlocking(
        partial(check_plain, session.authenticator, credentials), login=credentials.authcid
    )
    return _finish_login(session, credentials.authcid, canonical)
