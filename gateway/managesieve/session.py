"""The ManageSieve session: connection states, the command table, every command handler,
and the one mapping from errors to responses (RFC 5804).

Sans-I/O like the IMAP session: :meth:`ManageSieveSession.execute` turns one parsed
command into a generator that yields ``bytes`` to write and *actions* (defined with the
replies in :mod:`gateway.managesieve.handler`) that the transport glue in
:mod:`gateway.managesieve.server` performs before resuming it. This module is the only one
that changes the session state.

Responses (RFC 5804 §1.3, §4): ``OK`` / ``NO`` / ``BYE``, an optional response code in
parentheses, an optional human-readable string. There is no BAD: a malformed command is
``NO``. Exception text never reaches a client, except the position and message of a
script error, which is the point of PUTSCRIPT/CHECKSCRIPT.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable
from functools import partial
from typing import Any

import structlog

from gateway.managesieve.handler import (
    AfterTLS,
    Close,
    Handler,
    Output,
    OwnerChecker,
    OwnerOf,
    ReadString,
    Refused,
    Reply,
    Run,
    RunBlocking,
    ScriptChecker,
    StartTLS,
    response,
)
from gateway.managesieve.parser import (
    Command,
    LiteralTooLarge,
    ProtocolError,
    UnknownCommand,
)
from gateway.managesieve.wire import quoted, string_s2c
from gateway.security.auth import Authenticator
from gateway.security.sasl import MalformedPlain, check_plain, decode_plain
from gateway.store.interfaces import StoreError
from gateway.store.scripts import (
    BadScriptName,
    ScriptExists,
    ScriptIsActive,
    ScriptNotFound,
    ScriptStore,
    ScriptTooLarge,
    TooManyScripts,
    script_size,
    validate_script_name,
)

log = structlog.get_logger(__name__)

IMPLEMENTATION = "popgate"
VERSION = "1.0"  # RFC 5804 §1.7: CHECKSCRIPT, RENAMESCRIPT, NOOP, UNAUTHENTICATE available
SASL_MECHANISMS: tuple[str, ...] = ("PLAIN",)

MAX_RESPONSE_TEXT = 200
"""Response text built from client input is cut to this many characters."""

MAX_LOGGED_NAME = 128
"""A user or script name (client input) is cut to this many characters in log events."""

MAX_FAILED_COMMANDS = 10
"""Commands answered NO for their syntax (or unknown) in a row before ``BYE``: a client
that speaks another protocol is not served forever (Pigeonhole does the same)."""


class State(enum.Enum):
    """RFC 5804 §1.4. The session moves only through the methods below."""

    NON_AUTHENTICATED = "non-authenticated"  # after the greeting, until AUTHENTICATE
    AUTHENTICATED = "authenticated"  # logged in; ``owner`` names whose scripts are used
    LOGOUT = "logout"  # the last response is out; the connection is being closed


def _short(text: str) -> str:
    """Client input echoed in a response: printable, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    if len(cleaned) > MAX_RESPONSE_TEXT:
        cleaned = cleaned[: MAX_RESPONSE_TEXT - 3] + "..."
    return cleaned


# ---- the command table ------------------------------------------------------------------

_ANY = frozenset({State.NON_AUTHENTICATED, State.AUTHENTICATED})
_NOT_AUTH = frozenset({State.NON_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED})

COMMANDS: dict[str, tuple[frozenset[State], str]] = {
    # any state
    "CAPABILITY": (_ANY, "_capability"),  # §2.4
    "LOGOUT": (_ANY, "_logout"),  # §2.3
    "NOOP": (_ANY, "_noop"),  # §2.13
    # non-authenticated (§2.1, §2.2)
    "STARTTLS": (_NOT_AUTH, "_starttls"),
    "AUTHENTICATE": (_NOT_AUTH, "_authenticate"),
    # authenticated (§2.5-§2.12, §2.14)
    "HAVESPACE": (_AUTH, "_havespace"),
    "PUTSCRIPT": (_AUTH, "_putscript"),
    "CHECKSCRIPT": (_AUTH, "_checkscript"),
    "LISTSCRIPTS": (_AUTH, "_listscripts"),
    "SETACTIVE": (_AUTH, "_setactive"),
    "GETSCRIPT": (_AUTH, "_getscript"),
    "DELETESCRIPT": (_AUTH, "_deletescript"),
    "RENAMESCRIPT": (_AUTH, "_renamescript"),
    "UNAUTHENTICATE": (_AUTH, "_unauthenticate"),
}
"""Which commands are legal in which state, and which handler runs them."""


class ManageSieveSession:
    """One client connection's ManageSieve state."""

    def __init__(
        self,
        store: ScriptStore,
        authenticator: Authenticator,
        checker: ScriptChecker,
        *,
        sieve_extensions: Iterable[str] = (),
        owner_of: OwnerOf | None = None,
        owner_checker: OwnerChecker | None = None,
        max_redirects: int | None = None,
        peer: str = "",
        tls_active: bool = False,
        tls_available: bool = False,
        plaintext_auth_allowed: bool = True,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.checker = checker
        self.sieve_extensions = tuple(sieve_extensions)
        self.owner_of: OwnerOf = owner_of if owner_of is not None else _identity
        self.owner_checker = owner_checker
        self.max_redirects = max_redirects
        self.peer = peer
        self.tls_active = tls_active
        self.tls_available = tls_available
        self.plaintext_auth_allowed = plaintext_auth_allowed
        self.state = State.NON_AUTHENTICATED
        self.user: str | None = None
        self.owner: str | None = None
        self.failed_commands = 0
        self.last_reply: Reply | None = None
        self._after: list[Output | AfterTLS] = []

    # -- facts --

    def auth_permitted(self) -> bool:
        """Passwords only over TLS, or where the operator allows plaintext (loopback)."""
        return self.tls_active or self.plaintext_auth_allowed

    def capability_lines(self) -> bytes:
        """RFC 5804 §1.7 capability response lines (without the final OK). SASL is empty
        while passwords are refused here; STARTTLS only while it can still be done;
        OWNER once logged in; MAXREDIRECTS when the server can redirect (RFC 5804 §1.7:
        the most redirects one script run may do). NOTIFY is left out (no notify
        extension)."""
        caps: list[tuple[str, str | None]] = [("IMPLEMENTATION", IMPLEMENTATION)]
        if self.state is State.NON_AUTHENTICATED:
            mechanisms = " ".join(SASL_MECHANISMS) if self.auth_permitted() else ""
            caps.append(("SASL", mechanisms))
        caps.append(("SIEVE", " ".join(self.sieve_extensions)))
        if self.max_redirects is not None:
            caps.append(("MAXREDIRECTS", str(self.max_redirects)))
        if self.state is State.NON_AUTHENTICATED and self.tls_available and not self.tls_active:
            caps.append(("STARTTLS", None))
        if self.owner is not None and self.user is not None:
            caps.append(("OWNER", self.user))
        caps.append(("UNAUTHENTICATE", None))
        caps.append(("VERSION", VERSION))
        return b"".join(
            quoted(k.encode())
            + (b" " + string_s2c(v.encode("utf-8")) if v is not None else b"")
            + b"\r\n"
            for k, v in caps
        )

    def greeting(self) -> bytes:
        """RFC 5804 §1.7: the server speaks first, with its capabilities."""
        return self.capability_lines() + response(Reply("OK", f"{IMPLEMENTATION} ready"))

    # -- state transitions (the only place the state changes) --

    def _logged_in(self, user: str) -> None:
        self.user = user
        self.owner = self.owner_of(user)
        self.state = State.AUTHENTICATED

    def _logged_out(self) -> None:
        self.user = None
        self.owner = None
        self.state = State.NON_AUTHENTICATED

    def _enter_logout(self) -> None:
        self.state = State.LOGOUT

    def tls_started(self) -> None:
        self.tls_active = True

    def autologout(self) -> bytes:
        """The inactivity timer fired: the BYE to send before closing."""
        self._enter_logout()
        return response(Reply("BYE", "Disconnected for inactivity"))

    # -- running commands --

    def execute(self, cmd: Command) -> Run:
        """Run one command: its data lines, the completion, then any follow-up action."""
        self.last_reply = None
        spec = COMMANDS.get(cmd.name)
        if spec is None:  # the parser knows no command the table lacks; be safe anyway
            yield from self.protocol_error(UnknownCommand("unknown command", cmd.name))
            return
        states, function = spec
        if self.state not in states:
            log.info("managesieve.command_error", command=cmd.name, kind="state")
            yield from self._complete(Reply("NO", f"{cmd.name} not allowed in this state"))
            return
        self._after = []
        reply: Reply
        handler: Handler | None = None
        try:
            handler = globals()[function](self, cmd)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    item = handler.throw(thrown) if thrown is not None else handler.send(sent)
                except StopIteration as stop:
                    reply = stop.value
                    break
                sent, thrown = None, None
                if isinstance(item, bytes):
                    if item:
                        yield item
                else:
                    try:
                        sent = yield item
                    except Exception as exc:  # a failed blocking call
                        thrown = exc
        except Exception as exc:
            reply = self.reply_for_error(exc, cmd.name)
        finally:
            if handler is not None:
                handler.close()
        self.failed_commands = 0
        yield from self._complete(reply)
        after, self._after = self._after, []
        for item in after:
            if isinstance(item, AfterTLS):
                # RFC 5804 §2.2: after the handshake the server re-issues its
                # capabilities (now without STARTTLS, with SASL PLAIN) unasked.
                yield self.capability_lines() + response(Reply("OK", "TLS negotiation successful"))
            else:
                yield item

    def _complete(self, reply: Reply) -> Run:
        self.last_reply = reply
        yield response(reply)

    def protocol_error(self, error: ProtocolError) -> Run:
        """A command the parser refused: NO, or BYE and close when the stream is lost
        or the client keeps sending what this server cannot understand."""
        self.last_reply = None
        log.info(
            "managesieve.command_error",
            command=error.command,
            kind=type(error).__name__,
            fatal=error.fatal,
        )
        self.failed_commands += 1
        if error.fatal or self.failed_commands >= MAX_FAILED_COMMANDS:
            self._enter_logout()
            text = error.message if error.fatal else "Too many invalid commands"
            yield response(Reply("BYE", _short(text)))
            yield Close()
            return
        code = None
        if isinstance(error, LiteralTooLarge) and error.command in ("PUTSCRIPT", "CHECKSCRIPT"):
            code = "QUOTA/MAXSIZE"  # the literal limit is the script size limit
        prefix = f"{error.command}: " if error.command else ""
        yield from self._complete(Reply("NO", _short(prefix + error.message), code))

    def reply_for_error(self, exc: Exception, command: str) -> Reply:
        """The one mapping from an exception to a response (STYLE.md habit 4)."""
        if isinstance(exc, Refused):
            log.info("managesieve.command_error", command=command, kind="refused", code=exc.code)
            return Reply("NO", exc.text, exc.code)
        if isinstance(exc, StoreError):
            reply = _store_error_reply(exc)
            if reply is not None:
                log.info(
                    "managesieve.command_error",
                    command=command,
                    kind="store",
                    error=type(exc).__name__,
                )
                return reply
        log.exception("managesieve.command_error", command=command, kind="internal")
        return Reply("NO", "Internal error, see server log")

    # -- helpers for the handlers --

    def script_name(self, raw: bytes | int, *, empty_ok: bool = False) -> str:
        """A script name from the wire: UTF-8, RFC 5804 §1.6 (BadScriptName)."""
        assert isinstance(raw, bytes)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadScriptName("script name is not UTF-8") from None
        if not (empty_ok and name == ""):
            validate_script_name(name)
        return name

    def check_script(self, raw: bytes | int) -> tuple[str, list[str]]:
        """Decode and validate a script; its warnings. Refused with ``line L, column C:
        message`` when the checker rejects it (RFC 5804 §2.6)."""
        assert isinstance(raw, bytes)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("Script is not valid UTF-8") from None
        if script_size(text) > self.store.limits.max_script_size:
            raise ScriptTooLarge("script too large")
        try:
            if self.owner_checker is not None and self.owner is not None:
                warnings = self.owner_checker(self.owner, text)
            else:
                warnings = self.checker(text)
        except Exception as exc:
            line, column = getattr(exc, "line", None), getattr(exc, "column", None)
            message = getattr(exc, "message", None)
            if not isinstance(line, int) or not isinstance(message, str):
                raise
            where = f"line {line}, column {column}" if isinstance(column, int) else f"line {line}"
            raise Refused(f"{where}: {_short(message)}") from None
        return text, [str(w) for w in warnings or ()]


def _identity(user: str) -> str:
    return user


def _store_error_reply(exc: StoreError) -> Reply | None:
    """Script store errors → RFC 5804 §1.3 response codes."""
    if isinstance(exc, ScriptNotFound):
        return Reply("NO", "Script does not exist", "NONEXISTENT")
    if isinstance(exc, ScriptExists):
        return Reply("NO", "A script with that name already exists", "ALREADYEXISTS")
    if isinstance(exc, ScriptIsActive):
        return Reply("NO", "Cannot delete the active script", "ACTIVE")
    if isinstance(exc, ScriptTooLarge):
        return Reply("NO", "Script is too large", "QUOTA/MAXSIZE")
    if isinstance(exc, TooManyScripts):
        return Reply("NO", "Too many scripts", "QUOTA/MAXSCRIPTS")
    if isinstance(exc, BadScriptName):
        return Reply("NO", "Invalid script name")
    return None


# ---- handlers ---------------------------------------------------------------------------


def _capability(session: ManageSieveSession, cmd: Command) -> Handler:
    """CAPABILITY, RFC 5804 §2.4. State: any."""
    yield session.capability_lines()
    return Reply("OK", "Capability completed")


def _noop(session: ManageSieveSession, cmd: Command) -> Handler:
    """NOOP, RFC 5804 §2.13: the optional string comes back as ``(TAG ...)``."""
    yield from ()
    if cmd.args:
        tag = cmd.args[0]
        assert isinstance(tag, bytes)
        echoed = tag.decode("utf-8", "replace").encode("utf-8")
        return Reply("OK", "Done", "TAG " + string_s2c(echoed).decode("utf-8"))
    return Reply("OK", "Done")


def _logout(session: ManageSieveSession, cmd: Command) -> Handler:
    """LOGOUT, RFC 5804 §2.3: OK, then the server closes."""
    session._enter_logout()
    session._after = [Close()]
    yield from ()
    return Reply("OK", "Logout completed")


def _starttls(session: ManageSieveSession, cmd: Command) -> Handler:
    """STARTTLS, RFC 5804 §2.2. After the handshake the server speaks first again with
    its (new) capabilities; plaintext pipelined behind STARTTLS is thrown away by the
    glue (command injection, CVE-2011-0411)."""
    if session.tls_active:
        raise Refused("TLS is already active")
    if not session.tls_available:
        raise Refused("STARTTLS is not available")
    session._after = [StartTLS(), AfterTLS()]
    yield from ()
    return Reply("OK", "Begin TLS negotiation now")


def _authenticate(session: ManageSieveSession, cmd: Command) -> Handler:
    """AUTHENTICATE PLAIN, RFC 5804 §2.1 with RFC 4616: an initial response or an empty
    challenge ``""`` answered with a string; ``"*"`` cancels. The authorization identity
    must be empty or the authentication identity (no acting for others)."""
    mechanism = cmd.args[0]
    assert isinstance(mechanism, bytes)
    if mechanism.upper() not in (m.encode() for m in SASL_MECHANISMS):
        raise Refused("Unsupported authentication mechanism")
    if not session.auth_permitted():
        raise Refused("Plaintext authentication requires TLS", "ENCRYPT-NEEDED")
    if len(cmd.args) > 1:
        answer = cmd.args[1]
        assert isinstance(answer, bytes)
    else:
        answer = yield ReadString(b'""\r\n')
        if answer == b"*":
            raise Refused("Authentication aborted by client")
    try:
        message = base64.b64decode(answer, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("Invalid base64 in the SASL response") from None
    try:
        credentials = decode_plain(message)
    except MalformedPlain:
        log.warning("managesieve.auth_failed", user="", peer=session.peer, reason="malformed")
        raise Refused("Authentication failed") from None
    # A foreign authzid fails inside the check (gateway/security/sasl.py), so it is
    # delayed and counted like a wrong password.
    user = credentials.authcid
    canonical = yield RunBlocking(
        partial(check_plain, session.authenticator, credentials), login=user
    )
    if canonical is None:
        log.warning("managesieve.auth_failed", user=user[:MAX_LOGGED_NAME], peer=session.peer)
        raise Refused("Authentication failed")
    session._logged_in(canonical)
    log.info("managesieve.login", user=canonical, owner=session.owner, peer=session.peer)
    return Reply("OK", "Logged in")


def _unauthenticate(session: ManageSieveSession, cmd: Command) -> Handler:
    """UNAUTHENTICATE, RFC 5804 §2.14.1: back to the non-authenticated state."""
    log.info("managesieve.unauthenticate", user=session.user, peer=session.peer)
    session._logged_out()
    yield from ()
    return Reply("OK", "Unauthenticate completed")


def _owner(session: ManageSieveSession) -> str:
    assert session.owner is not None
    return session.owner


def _havespace(session: ManageSieveSession, cmd: Command) -> Handler:
    """HAVESPACE, RFC 5804 §2.5: would a PUTSCRIPT of that size fit?"""
    name = session.script_name(cmd.args[0])
    size = cmd.args[1]
    assert isinstance(size, int)
    session.store.have_space(_owner(session), name, size)
    yield from ()
    return Reply("OK", "Putscript would succeed")


def _warnings_reply(done: str, warnings: list[str]) -> Reply:
    if warnings:
        return Reply("OK", _short("; ".join(warnings)), "WARNINGS")
    return Reply("OK", done)


def _putscript(session: ManageSieveSession, cmd: Command) -> Handler:
    """PUTSCRIPT, RFC 5804 §2.6: validate, then store (replacing a script of the same
    name, which stays active if it was). A refused script leaves the old one intact."""
    name = session.script_name(cmd.args[0])
    owner = _owner(session)
    text, warnings = session.check_script(cmd.args[1])
    session.store.put_script(owner, name, text)
    log.info("managesieve.putscript", owner=owner, script=name[:MAX_LOGGED_NAME])
    yield from ()
    return _warnings_reply("Putscript completed", warnings)


def _checkscript(session: ManageSieveSession, cmd: Command) -> Handler:
    """CHECKSCRIPT, RFC 5804 §2.12: PUTSCRIPT's validation without storing."""
    _text, warnings = session.check_script(cmd.args[0])
    yield from ()
    return _warnings_reply("Script checked successfully", warnings)


def _listscripts(session: ManageSieveSession, cmd: Command) -> Handler:
    """LISTSCRIPTS, RFC 5804 §2.7: one line per script, ``ACTIVE`` after the active one."""
    lines = [
        string_s2c(info.name.encode("utf-8")) + (b" ACTIVE" if info.active else b"") + b"\r\n"
        for info in session.store.list_scripts(_owner(session))
    ]
    yield b"".join(lines)
    return Reply("OK", "Listscripts completed")


def _setactive(session: ManageSieveSession, cmd: Command) -> Handler:
    """SETACTIVE, RFC 5804 §2.8: the empty name deactivates."""
    name = session.script_name(cmd.args[0], empty_ok=True)
    owner = _owner(session)
    if name == "":
        session.store.deactivate(owner)
    else:
        session.store.set_active(owner, name)
    log.info("managesieve.setactive", owner=owner, script=name[:MAX_LOGGED_NAME])
    yield from ()
    return Reply("OK", "Setactive completed")


def _getscript(session: ManageSieveSession, cmd: Command) -> Handler:
    """GETSCRIPT, RFC 5804 §2.9: the script as a literal, then OK."""
    text = session.store.get_script(_owner(session), session.script_name(cmd.args[0]))
    data = text.encode("utf-8")
    yield b"{%d}\r\n" % len(data) + data + b"\r\n"
    return Reply("OK", "Getscript completed")


def _deletescript(session: ManageSieveSession, cmd: Command) -> Handler:
    """DELETESCRIPT, RFC 5804 §2.10: never the active script (NO (ACTIVE))."""
    name = session.script_name(cmd.args[0])
    session.store.delete_script(_owner(session), name)
    yield from ()
    return Reply("OK", "Deletescript completed")


def _renamescript(session: ManageSieveSession, cmd: Command) -> Handler:
    """RENAMESCRIPT, RFC 5804 §2.11.1: the active flag moves with the script."""
    old = session.script_name(cmd.args[0])
    new = session.script_name(cmd.args[1])
    session.store.rename_script(_owner(session), old, new)
    yield from ()
    return Reply("OK", "Renamescript completed")
