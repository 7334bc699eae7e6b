"""The vocabulary between the ManageSieve session and its transport glue: the actions a
command yields (:class:`RunBlocking`, :class:`ReadString`, :class:`StartTLS`,
:class:`Close`), the :class:`Reply` it ends with and how a reply is written (RFC 5804 §4),
the :class:`Refused` error, and the injected Sieve checkers.

Kept apart from :mod:`gateway.managesieve.session` (states, command table, handlers) so the
glue in :mod:`gateway.managesieve.server` depends on these types, not on the handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.managesieve.wire import string_s2c

# ---- actions: what the session asks the transport glue to do ---------------------------


@dataclass(frozen=True)
class RunBlocking:
    """Run ``call`` off the reactor thread (scrypt); resume with its result. ``login``
    (the user name given) makes the glue apply the login penalty around it."""

    call: Callable[[], Any]
    login: str | None = None


@dataclass(frozen=True)
class ReadString:
    """Write ``prompt`` (a SASL challenge) and resume with the client's next string."""

    prompt: bytes


@dataclass(frozen=True)
class StartTLS:
    """Throw away buffered plaintext input and start TLS (RFC 5804 §2.2)."""


@dataclass(frozen=True)
class Close:
    """Close the connection once everything written so far has been sent."""


@dataclass(frozen=True)
class AfterTLS:
    """Internal marker: the capability response due once TLS is up (RFC 5804 §2.2)."""


Action = RunBlocking | ReadString | StartTLS | Close
Output = bytes | Action
Run = Generator[Output, Any, None]


@dataclass(frozen=True)
class Reply:
    """``status`` OK/NO/BYE, ``code`` (already formatted, e.g. ``QUOTA/MAXSIZE`` or
    ``TAG "x"``), ``text``."""

    status: str
    text: str = ""
    code: str | None = None


Handler = Generator[Output, Any, Reply]


class Refused(Exception):
    """A refused operation → NO (code) "text"."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class ScriptChecker(Protocol):
    """Sieve validation, injected (the Sieve engine supplies it). Returns None or a
    list of warnings (→ ``OK (WARNINGS)``); raises an exception with ``line``,
    ``column`` and ``message`` attributes for a script that must be refused."""

    def __call__(self, script: str) -> Iterable[str] | None: ...


OwnerChecker = Callable[[str, str], Iterable[str] | None]
"""``(owner, script)`` → like :class:`ScriptChecker`, for checks that depend on the owner
(``redirect``/``vacation`` need the owner to have an upstream that can send)."""

OwnerOf = Callable[[str], str]
"""Canonical user name → the script owner (identity unless the integrator maps it)."""


def response(reply: Reply) -> bytes:
    """``OK (CODE) "text"`` CRLF (RFC 5804 §4 response-ok / response-nobye)."""
    out = reply.status.encode("ascii")
    if reply.code:
        out += b" (" + reply.code.encode("utf-8") + b")"
    if reply.text:
        out += b" " + string_s2c(reply.text.encode("utf-8"))
    return out + b"\r\n"
