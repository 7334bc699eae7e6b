"""A fake POP3 upstream shipped with the product: a real server over a mutable maildrop.

:class:`FakePOP3Server` is the demo's embedded upstream and the peer of the fetcher's
fault tests. It speaks RFC 1939 over a real socket (with CAPA from RFC 2449, STLS from
RFC 2595 and AUTH PLAIN, XOAUTH2 and OAUTHBEARER from RFC 5034/7628), keeps a mutable maildrop that the caller may
change at runtime, and has knobs (:class:`Faults`) for the ways real servers misbehave:
dropping the connection mid-RETR, stalling, -ERR on RETR/DELE/QUIT, garbage lines,
no UIDL, reordered listings. Duplicate UIDLs and very long lines come from the maildrop
itself (``add_message(raw, uidl=...)`` with a repeated UIDL, or a message with long lines).
It never imports the global reactor: :meth:`FakePOP3Server.listen` is given one.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, interfaces
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from gateway.testing.pop3data import (
    ENDLESS_GREETING_OCTETS,
    GARBAGE_LINE,
    CommandRecord,
    Faults,
    StoredMessage,
    normalize_message,
)

MAX_COMMAND_LENGTH = 1024
"""Longest command line the fake accepts (RFC 2449 §4 allows 255 octets; be lenient)."""

MAX_SASL_RESPONSE_LENGTH = 16384
"""Longest SASL response line after a continuation (OAuth tokens run to a few KB)."""

_OAUTH_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


class FakePOP3Protocol(LineOnlyReceiver):
    """One POP3 session: AUTHORIZATION → TRANSACTION → UPDATE (RFC 1939 §3)."""

    delimiter = b"\r\n"
    MAX_LENGTH = MAX_COMMAND_LENGTH

    def __init__(self, server: FakePOP3Server, session: int) -> None:
        self.server = server
        self.session = session
        self.state = "AUTHORIZATION"
        self.user: str | None = None
        self.maildrop: list[StoredMessage] = []
        self.deleted: set[int] = set()
        self.challenge = b"<%d.%d@fake.popgate.invalid>" % (os.getpid(), session)
        self.tls = False
        self.stalled = False
        self.holds_lock = False
        self.awaiting_sasl: Callable[[bytes], None] | None = None

    # ---- plumbing ----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.tls = interfaces.ISSLTransport.providedBy(self.transport)
        greeting = b"+OK popgate fake POP3 server ready"
        if self.server.faults.endless_greeting:
            self.transport.write(greeting + b"!" * ENDLESS_GREETING_OCTETS)
            return
        if self.server.faults.apop_challenge:
            greeting += b" " + self.challenge
        self.sendLine(greeting)
        if self.server.faults.garbage_after_greeting:
            self.sendLine(GARBAGE_LINE)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.holds_lock:
            self.server._locked = False
            self.holds_lock = False
        self.server._session_ended(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"-ERR command line too long")
        self.transport.loseConnection()

    def ok(self, text: bytes = b"") -> None:
        self.sendLine(b"+OK " + text if text else b"+OK")

    def err(self, text: bytes) -> None:
        self.sendLine(b"-ERR " + text)

    def multi(self, first: bytes, body_lines: Iterable[bytes]) -> None:
        self.transport.write(
            b"+OK "
            + first
            + b"\r\n"
            + b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in body_lines)
            + b".\r\n"
        )

    def lineReceived(self, line: bytes) -> None:
        if self.stalled:
            return
        if self.awaiting_sasl is not None:
            step, self.awaiting_sasl = self.awaiting_sasl, None
            self.MAX_LENGTH = MAX_COMMAND_LENGTH
            self.server.commands.append(CommandRecord(self.session, "AUTH-RESPONSE", (), self.tls))
            step(line.strip())
            return
        verb_bytes, _, rest = line.partition(b" ")
        verb = verb_bytes.decode("ascii", "replace").upper()
        args = rest.split() if rest else []
        shown = (
            ("***",)
            if verb in ("PASS", "AUTH") and args
            else tuple(a.decode("utf-8", "replace") for a in args)
        )
        self.server.commands.append(CommandRecord(self.session, verb, shown, self.tls))
        if self.server.command_hook is not None:
            self.server.command_hook(self, verb, args)
        if verb in self.server.faults.stall_on:
            self.stalled = True
            return
        handler = getattr(self, f"do_{verb}", None)
        allowed = self._ALLOWED.get(verb)
        if handler is None or allowed is None:
            self.err(b"unknown command")
        elif self.state not in allowed:
            self.err(b"command not valid in this state")
        else:
            handler(args)

    _ALLOWED = {
        "CAPA": ("AUTHORIZATION", "TRANSACTION"),
        "STLS": ("AUTHORIZATION",),
        "USER": ("AUTHORIZATION",),
        "PASS": ("AUTHORIZATION",),
        "APOP": ("AUTHORIZATION",),
        "AUTH": ("AUTHORIZATION",),
        "QUIT": ("AUTHORIZATION", "TRANSACTION"),
        "STAT": ("TRANSACTION",),
        "LIST": ("TRANSACTION",),
        "UIDL": ("TRANSACTION",),
        "RETR": ("TRANSACTION",),
        "TOP": ("TRANSACTION",),
        "DELE": ("TRANSACTION",),
        "RSET": ("TRANSACTION",),
        "NOOP": ("TRANSACTION",),
    }

    # ---- AUTHORIZATION (RFC 1939 §4, §7; RFC 2595 §4; RFC 5034) --------------------

    def do_CAPA(self, args: list[bytes]) -> None:
        caps = [b"USER", b"RESP-CODES"]
        if not self.server.faults.no_top:
            caps.append(b"TOP")
        if self.server.sasl:
            caps.append(b"SASL " + b" ".join(m.encode("ascii") for m in self.server.sasl))
        if not self.server.faults.no_uidl:
            caps.append(b"UIDL")
        if self.server.faults.login_delay is not None:
            caps.append(b"LOGIN-DELAY %d" % self.server.faults.login_delay)
        if self.server.faults.pipelining:
            caps.append(b"PIPELINING")
        if self.server.tls_context is not None and not self.tls and self.state == "AUTHORIZATION":
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION popgate-fake")
        self.multi(b"Capability list follows", caps)

    def do_STLS(self, args: list[bytes]) -> None:
        if self.server.tls_context is None or self.tls:
            self.err(b"STLS not available")
            return
        self.ok(b"Begin TLS negotiation")
        self.transport.startTLS(self.server.tls_context)
        self.tls = True

    def do_USER(self, args: list[bytes]) -> None:
        if len(args) != 1:
            self.err(b"USER needs a name")
            return
        self.user = args[0].decode("utf-8", "replace")
        self.ok(b"send PASS")

    def do_PASS(self, args: list[bytes]) -> None:
        if self.user is None:
            self.err(b"USER first")
            return
        password = b" ".join(args).decode("utf-8", "replace")
        self._finish_login(self.user == self.server.user and password == self.server.password)

    def do_APOP(self, args: list[bytes]) -> None:
        if len(args) != 2 or not self.server.faults.apop_challenge:
            self.err(b"APOP not available")
            return
        expected = hashlib.md5(self.challenge + self.server.password.encode()).hexdigest()
        self.user = args[0].decode("utf-8", "replace")
        self._finish_login(
            self.user == self.server.user and args[1].decode("ascii", "replace") == expected
        )

    def do_AUTH(self, args: list[bytes]) -> None:
        """RFC 5034 §4: AUTH PLAIN, XOAUTH2 or OAUTHBEARER with or without an initial
        response (then the server sends an empty "+ " challenge and the next line is the
        response). ``oauth_two_step_only`` refuses an OAuth initial response on the AUTH
        line, as Microsoft's servers do."""
        mechanism = args[0].upper().decode("ascii", "replace") if args else ""
        if mechanism not in self.server.sasl or mechanism not in ("PLAIN", *_OAUTH_MECHANISMS):
            self.err(b"unsupported SASL mechanism")
            return
        step = self._sasl_plain if mechanism == "PLAIN" else self._sasl_oauth
        if len(args) == 1:
            self.sendLine(b"+ ")
            self.awaiting_sasl = step
            self.MAX_LENGTH = MAX_SASL_RESPONSE_LENGTH  # RFC 5034 §4: no 255-octet limit here
            return
        if len(args) != 2:
            self.err(b"malformed AUTH command")
            return
        if mechanism != "PLAIN" and self.server.oauth_two_step_only:
            self.err(b"initial response on the AUTH line not supported")
            return
        step(args[1])

    def _sasl_oauth(self, response: bytes) -> None:
        """XOAUTH2 / OAUTHBEARER (RFC 7628 §3.1): a bad token gets the JSON error as a
        continuation (§3.2.2); the client's answer to it ends with -ERR [AUTH]."""
        if response == b"*":
            self.err(b"AUTH cancelled")
            return
        try:
            fields = base64.b64decode(response, validate=True).split(b"\x01")
        except ValueError:
            self.err(b"malformed AUTH response")
            return
        user = token = None
        for item in fields:
            if item.startswith(b"user="):
                user = item[5:].decode("utf-8", "replace")
            elif item.startswith(b"n,a="):
                user = item[4:].rstrip(b",").decode("utf-8", "replace").replace("=2C", ",")
            elif item.startswith(b"auth=Bearer "):
                token = item[12:].decode("ascii", "replace")
        self.server.oauth_logins.append((user, token))
        if user == self.server.user and token is not None and token in self.server.bearer_tokens:
            self._finish_login(True)
            return
        error = b'{"status":"401","schemes":"bearer","scope":"https://mail.example/"}'
        self.sendLine(b"+ " + base64.b64encode(error))
        self.awaiting_sasl = self._sasl_failed

    def _sasl_failed(self, answer: bytes) -> None:
        self.server.sasl_error_answers.append(answer)
        self.user = None
        self.err(b"[AUTH] authentication failed")

    def _sasl_plain(self, response: bytes) -> None:
        if response == b"*":
            self.err(b"AUTH cancelled")  # RFC 5034 §4: the client may cancel with "*"
            return
        try:
            _authz, user, password = base64.b64decode(response, validate=True).split(b"\0")
        except ValueError:
            self.err(b"malformed AUTH PLAIN response")
            return
        self.user = user.decode("utf-8", "replace")
        self._finish_login(
            self.user == self.server.user
            and password.decode("utf-8", "replace") == self.server.password
        )

    def _finish_login(self, good: bool) -> None:
        if self.server.faults.login_error is not None:
            self.user = None
            self.err(self.server.faults.login_error)
            return
        if not good:
            self.user = None
            self.err(b"[AUTH] invalid user name or password")
            return
        if self.server._locked:
            self.err(b"[IN-USE] maildrop already locked")
            return
        self.server._locked = True
        self.holds_lock = True
        self.maildrop = list(self.server.messages)  # numbers are fixed for the session
        self.deleted = set()
        self.state = "TRANSACTION"
        self.ok(b"maildrop locked and ready")

    # ---- TRANSACTION (RFC 1939 §5) -------------------------------------------------

    def _message(self, arg: bytes) -> tuple[int, StoredMessage] | None:
        if not arg.isdigit():
            self.err(b"invalid message number")
            return None
        number = int(arg)
        if not 1 <= number <= len(self.maildrop) or number in self.deleted:
            self.err(b"no such message")
            return None
        return number, self.maildrop[number - 1]

    def _live(self) -> list[tuple[int, StoredMessage]]:
        live = [(n, m) for n, m in enumerate(self.maildrop, 1) if n not in self.deleted]
        if self.server.faults.reverse_listings:
            live.reverse()
        return live

    def do_STAT(self, args: list[bytes]) -> None:
        live = self._live()
        self.ok(b"%d %d" % (len(live), sum(self._listed_size(m) for _, m in live)))

    def _listing(self, args: list[bytes], value: Callable[[StoredMessage], bytes]) -> None:
        if args:
            found = self._message(args[0])
            if found is not None:
                self.ok(b"%d %s" % (found[0], value(found[1])))
            return
        lines = [b"%d %s" % (n, value(m)) for n, m in self._live()]
        if self.server.faults.garbage_in_listings:
            lines.insert(0, GARBAGE_LINE)
        self.multi(b"listing follows", lines)

    def _listed_size(self, message: StoredMessage) -> int:
        if self.server.faults.understate_list_sizes:
            return message.size // 10
        return message.size

    def do_LIST(self, args: list[bytes]) -> None:
        self._listing(args, lambda m: b"%d" % self._listed_size(m))

    def do_UIDL(self, args: list[bytes]) -> None:
        if self.server.faults.no_uidl:
            self.err(b"UIDL not supported")
            return
        self._listing(args, lambda m: m.uidl.encode("ascii"))

    def do_RETR(self, args: list[bytes]) -> None:
        if len(args) != 1:
            self.err(b"RETR needs a message number")
            return
        found = self._message(args[0])
        if found is None:
            return
        _number, message = found
        faults = self.server.faults
        if message.uidl in faults.err_on_retr:
            self.err(b"message cannot be retrieved right now")
            return
        body = message.stuffed
        if message.uidl in faults.drop_mid_retr:
            faults.drop_mid_retr.discard(message.uidl)
            self.transport.write(b"+OK %d octets\r\n" % message.size + body[: len(body) // 2])
            self.transport.loseConnection()
            return
        self.transport.write(b"+OK %d octets\r\n" % message.size + body + b".\r\n")

    def do_TOP(self, args: list[bytes]) -> None:
        if self.server.faults.no_top:
            self.err(b"TOP not supported")
            return
        if len(args) != 2 or not args[1].isdigit():
            self.err(b"TOP needs a message number and a line count")
            return
        found = self._message(args[0])
        if found is None:
            return
        raw = normalize_message(found[1].raw)
        head, sep, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n") if head else []
        if sep:
            lines.append(b"")
            lines.extend(body.split(b"\r\n")[:-1][: int(args[1])])
        self.multi(b"top of message follows", lines)

    def do_DELE(self, args: list[bytes]) -> None:
        if len(args) != 1:
            self.err(b"DELE needs a message number")
            return
        found = self._message(args[0])
        if found is None:
            return
        number, message = found
        if message.uidl in self.server.faults.err_on_dele:
            self.err(b"message cannot be deleted")
            return
        self.deleted.add(number)
        self.ok(b"message %d deleted" % number)

    def do_RSET(self, args: list[bytes]) -> None:
        self.deleted = set()
        self.ok(b"maildrop has %d messages" % len(self.maildrop))

    def do_NOOP(self, args: list[bytes]) -> None:
        self.ok()

    # ---- UPDATE (RFC 1939 §6) ------------------------------------------------------

    def do_QUIT(self, args: list[bytes]) -> None:
        faults = self.server.faults
        if self.state == "TRANSACTION":
            if faults.drop_at_quit:
                faults.drop_at_quit = False
                self.transport.loseConnection()
                return
            if faults.err_on_quit:
                self.err(b"some deleted messages not removed")
                self.transport.loseConnection()
                return
            gone = {id(self.maildrop[n - 1]) for n in self.deleted}
            self.server.messages[:] = [m for m in self.server.messages if id(m) not in gone]
            self.server.deleted_total += len(gone)
        self.ok(b"bye")
        self.transport.loseConnection()


class FakePOP3Server(ServerFactory):
    """A POP3 server (factory) over a mutable maildrop, with fault knobs.

    ``messages`` is the maildrop in message-number order; a session sees a snapshot
    taken at login (message numbers are fixed for a session, RFC 1939 §5) and its DELEs
    are applied only at QUIT. One session at a time may hold the maildrop lock.
    ``tls_context`` (a server context factory) enables STLS, and :meth:`listen` with
    ``implicit_tls=True`` serves POP3S. ``sasl`` lists the SASL mechanisms CAPA offers
    (empty: no AUTH at all, as an old server).
    """

    def __init__(
        self,
        user: str = "user",
        password: str = "password",
        *,
        messages: Iterable[bytes | tuple[str, bytes]] = (),
        tls_context: Any = None,
        faults: Faults | None = None,
        uidl_prefix: str = "fake-",
        sasl: Iterable[str] = ("PLAIN",),
    ) -> None:
        self.user = user
        self.sasl = tuple(sasl)
        """SASL mechanisms offered in CAPA (RFC 5034 §6): PLAIN, XOAUTH2, OAUTHBEARER."""
        self.bearer_tokens: set[str] = set()
        """Access tokens XOAUTH2/OAUTHBEARER accept for ``user``."""
        self.oauth_two_step_only = False
        """Refuse an OAuth initial response on the AUTH line (Microsoft's behaviour)."""
        self.oauth_logins: list[tuple[str | None, str | None]] = []
        self.sasl_error_answers: list[bytes] = []
        """What clients answered to the JSON error continuation."""
        self.password = password
        self.tls_context = tls_context
        self.faults = faults if faults is not None else Faults()
        self.uidl_prefix = uidl_prefix
        self.messages: list[StoredMessage] = []
        self.commands: list[CommandRecord] = []
        self.command_hook: Callable[[FakePOP3Protocol, str, list[bytes]], None] | None = None
        self.sessions = 0
        self.open_sessions: set[FakePOP3Protocol] = set()
        self.deleted_total = 0
        self._counter = 0
        self._locked = False
        self._idle_waiters: list[defer.Deferred[None]] = []
        for item in messages:
            if isinstance(item, tuple):
                self.add_message(item[1], uidl=item[0])
            else:
                self.add_message(item)

    def buildProtocol(self, addr: Any) -> FakePOP3Protocol:
        self.sessions += 1
        protocol = FakePOP3Protocol(self, self.sessions)
        protocol.factory = self
        self.open_sessions.add(protocol)
        return protocol

    def _session_ended(self, protocol: FakePOP3Protocol) -> None:
        self.open_sessions.discard(protocol)
        if not self.open_sessions:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> defer.Deferred[None]:
        """Fires once no session is open (the server side has seen every close)."""
        if not self.open_sessions:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def add_message(self, raw: bytes, uidl: str | None = None) -> str:
        """Deliver a message into the maildrop (visible from the next login); return its UIDL.

        The bytes are stored as a POP3 server sends them (:func:`normalize_message`).
        A repeated ``uidl`` is allowed on purpose: it simulates a broken server.
        """
        self._counter += 1
        if uidl is None:
            uidl = f"{self.uidl_prefix}{self._counter:08d}"
        if not uidl or not all(0x21 <= ord(c) <= 0x7E for c in uidl):
            raise ValueError(f"UIDL must be printable ASCII without spaces: {uidl!r}")
        message = StoredMessage(uidl, normalize_message(raw))
        message.stuffed  # noqa: B018 -- computed now, on the caller's thread, not at RETR
        self.messages.append(message)
        return uidl

    def remove_message(self, uidl: str) -> None:
        """Remove every message with this UIDL (as another client deleting it would)."""
        self.messages[:] = [m for m in self.messages if m.uidl != uidl]

    def uidls(self) -> list[str]:
        return [m.uidl for m in self.messages]

    def raw_by_uidl(self) -> dict[str, bytes]:
        """First message per UIDL, as RETR would return it."""
        found: dict[str, bytes] = {}
        for m in self.messages:
            found.setdefault(m.uidl, m.raw)
        return found

    def listen(
        self,
        reactor: Any,
        *,
        port: int = 0,
        interface: str = "127.0.0.1",
        implicit_tls: bool = False,
    ) -> Any:
        """Listen on ``interface``:``port`` (0 = any free port); returns the listening port."""
        if implicit_tls:
            if self.tls_context is None:
                raise ValueError("implicit TLS needs a tls_context")
            return reactor.listenSSL(port, self, self.tls_context, interface=interface)
        return reactor.listenTCP(port, self, interface=interface)
