"""What the fake POP3 upstream (:mod:`gateway.testing.fakepop3`) holds and how it may
misbehave: messages as a POP3 server stores and sends them (RFC 1939 §3), the fault knobs,
and the record of commands received. Plain data, no I/O, so tests may build and compare
maildrops without a server.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

GARBAGE_LINE = b"this is not a listing line"
"""The malformed line injected into UIDL and LIST answers by ``Faults.garbage_in_listings``."""

ENDLESS_GREETING_OCTETS = 2 * 1024 * 1024
"""What ``Faults.endless_greeting`` sends: more than any client's line limit."""

_LINE_END = re.compile(rb"\r?\n")


def normalize_message(raw: bytes) -> bytes:
    """The message as a POP3 server stores and sends it: CRLF line ends, ending in CRLF
    (RFC 1939 §3). Fetching it through POP3 must give back exactly these bytes."""
    if not raw:
        return b""
    raw = _LINE_END.sub(b"\r\n", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw


def dot_stuff(raw: bytes) -> bytes:
    """The multi-line body of a RETR answer (RFC 1939 §3): each line beginning with "."
    gets one more, every line ends in CRLF; the terminating ".CRLF" is not included."""
    raw = normalize_message(raw)
    if not raw:
        return b""
    lines = raw[:-2].split(b"\r\n")
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


@dataclass(eq=False)
class StoredMessage:
    """One message in the fake maildrop; identity (not value) tells duplicates apart."""

    uidl: str
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)

    @functools.cached_property
    def stuffed(self) -> bytes:
        """The RETR answer's body (:func:`dot_stuff`), computed once: the fake shares its
        reactor with the gateway under test, whose reactor lag some tests measure."""
        return dot_stuff(self.raw)


@dataclass
class Faults:
    """Misbehaviour knobs; change them at any time, they are read per command.

    ``drop_mid_retr`` and ``drop_at_quit`` hold UIDLs / a flag that fire once and then
    clear themselves, so the next session behaves.
    """

    drop_mid_retr: set[str] = field(default_factory=set)
    """UIDLs whose RETR sends about half the message, then closes the connection (once)."""
    stall_on: set[str] = field(default_factory=set)
    """Command verbs (e.g. "RETR", "QUIT") the server goes silent at, forever."""
    err_on_retr: set[str] = field(default_factory=set)
    """UIDLs answered -ERR on RETR."""
    err_on_dele: set[str] = field(default_factory=set)
    """UIDLs answered -ERR on DELE."""
    err_on_quit: bool = False
    """QUIT answers -ERR and commits no deletion (RFC 1939 §6 allows a failed UPDATE)."""
    drop_at_quit: bool = False
    """QUIT closes the connection without answering or committing (once)."""
    garbage_in_listings: bool = False
    """UIDL and LIST answers (multi-line forms) start with :data:`GARBAGE_LINE`."""
    garbage_after_greeting: bool = False
    """An unsolicited junk line follows the greeting."""
    no_uidl: bool = False
    """UIDL is not supported (-ERR, and absent from CAPA)."""
    no_top: bool = False
    """TOP is not supported (-ERR, and absent from CAPA)."""
    reverse_listings: bool = False
    """UIDL and LIST lines come in descending message-number order."""
    apop_challenge: bool = False
    """The greeting carries an APOP challenge (RFC 1939 §7) like many real servers."""
    understate_list_sizes: bool = False
    """LIST (and STAT) report a tenth of each message's real size, as a buggy server might."""
    login_error: bytes | None = None
    """Every login attempt is answered ``-ERR`` + this text (e.g. b"[SYS/TEMP] try later")."""
    login_delay: int | None = None
    """CAPA announces ``LOGIN-DELAY n`` (RFC 2449 §6.8)."""
    pipelining: bool = False
    """CAPA announces ``PIPELINING`` (RFC 2449 §6.6): the client may send RETRs ahead."""
    endless_greeting: bool = False
    """The greeting never ends: :data:`ENDLESS_GREETING_OCTETS` octets without a line end."""


@dataclass(frozen=True)
class CommandRecord:
    """One command as the fake received it; PASS and AUTH arguments are redacted."""

    session: int
    verb: str
    args: tuple[str, ...]
    tls: bool
