"""POP3 SASL for OAuth 2.0 (pure): the XOAUTH2 and OAUTHBEARER (RFC 7628) initial
responses, where to send them (RFC 5034 §4), the server's JSON error in a continuation,
and which mechanism to use given CAPA's ``SASL`` list (RFC 5034 §6).

The protocol side is :meth:`gateway.pop3.client.UpstreamClient.sasl`, driven by a
:class:`SaslExchange` that decides each line the client sends. Tokens appear only in the
bytes sent, never in an exception or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

XOAUTH2 = "XOAUTH2"
OAUTHBEARER = "OAUTHBEARER"

MAX_COMMAND_LINE = 255
"""RFC 2449 §4 (and RFC 5034 §4): a command line, CRLF included, is at most 255 octets. An
initial response that would not fit goes after the server's empty ``+ `` continuation —
always the case for Microsoft's ~2 KB tokens, and the only form Microsoft accepts."""

MAX_ERROR_JSON = 4096
"""Largest error continuation decoded (RFC 7628 §3.2.2 errors are a few dozen octets)."""


class MechanismUnavailable(Exception):
    """CAPA lists SASL mechanisms and none usable for the configured choice."""


def _saslname(user: str) -> bytes:
    """RFC 5801 §4 saslname: "=" and "," escaped as "=3D" and "=2C"."""
    return user.replace("=", "=3D").replace(",", "=2C").encode("utf-8")


def xoauth2_response(user: str, token: str) -> bytes:
    """Google/Microsoft XOAUTH2: ``user={user}^Aauth=Bearer {token}^A^A``."""
    return (
        b"user=" + user.encode("utf-8") + b"\x01auth=Bearer " + token.encode("ascii") + b"\x01\x01"
    )


def oauthbearer_response(
    user: str, token: str, host: str | None = None, port: int | None = None
) -> bytes:
    """RFC 7628 §3.1: GS2 header ``n,a=user,`` then ``^A``-separated key/value pairs
    (host, port, ``auth=Bearer token``) closed by ``^A^A``."""
    pairs = b""
    if host:
        pairs += b"host=" + host.encode("idna" if not host.isascii() else "ascii") + b"\x01"
    if port:
        pairs += b"port=%d\x01" % port
    return (
        b"n,a="
        + _saslname(user)
        + b",\x01"
        + pairs
        + b"auth=Bearer "
        + token.encode("ascii")
        + b"\x01\x01"
    )


def choose_mechanism(setting: str, offered: list[bytes] | None) -> str:
    """The SASL mechanism for ``mechanism = setting`` ("auto", "xoauth2", "oauthbearer").

    ``offered`` is CAPA's SASL list (None: the server has no CAPA or no SASL line, so the
    choice is simply tried). "auto" takes OAUTHBEARER, the standard, when offered, else
    XOAUTH2, which is what Microsoft and most servers have."""
    names = {m.upper().decode("ascii", "replace") for m in offered} if offered else None
    if setting in ("xoauth2", "oauthbearer"):
        wanted = setting.upper()
        if names is not None and wanted not in names:
            raise MechanismUnavailable(f"the server does not offer SASL {wanted}")
        return wanted
    if names is None:
        return XOAUTH2
    for candidate in (OAUTHBEARER, XOAUTH2):
        if candidate in names:
            return candidate
    raise MechanismUnavailable("the server offers neither SASL XOAUTH2 nor OAUTHBEARER")


def parse_error_challenge(challenge: bytes) -> dict[str, Any] | None:
    """The JSON error a server sends as a continuation after a refused token (RFC 7628
    §3.2.2; XOAUTH2 servers send the same shape), or None if ``challenge`` is not one.
    Only the short string fields are kept: ``status``, ``schemes``, ``scope``."""
    if not challenge.strip() or len(challenge) > MAX_ERROR_JSON:
        return None
    try:
        data = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (binascii.Error, ValueError):
        return {"status": "unreadable"}
    if not isinstance(data, dict):
        return {"status": "unreadable"}
    return {k: str(data[k])[:100] for k in ("status", "schemes", "scope") if k in data}


class SaslExchange:
    """One AUTH exchange for an OAuth mechanism: the AUTH arguments, then one answer per
    ``+ `` continuation. The initial response rides on the AUTH line when it fits in
    :data:`MAX_COMMAND_LINE` (RFC 5034 §4), else it answers the first, empty, continuation.
    An error continuation is answered as its mechanism wants (XOAUTH2: an empty line;
    OAUTHBEARER: ``^A``, RFC 7628 §3.2.3) and remembered in :attr:`error`; anything more
    cancels with ``*`` (RFC 5034 §4)."""

    def __init__(self, mechanism: str, initial_response: bytes, *, inline: bool | None = None):
        self.mechanism = mechanism
        self._initial = base64.b64encode(initial_response)
        line = b"AUTH " + mechanism.encode("ascii") + b" " + self._initial + b"\r\n"
        self.inline = len(line) <= MAX_COMMAND_LINE if inline is None else inline
        self._sent_initial = self.inline
        self.error: dict[str, Any] | None = None
        self.continuations = 0

    def __repr__(self) -> str:
        return f"SaslExchange({self.mechanism}, inline={self.inline}, error={self.error})"

    @property
    def arguments(self) -> bytes:
        """What follows ``AUTH`` on the command line."""
        name = self.mechanism.encode("ascii")
        return name + b" " + self._initial if self.inline else name

    def respond(self, challenge: bytes) -> bytes:
        """The line answering one ``+ `` continuation carrying ``challenge`` (base64)."""
        self.continuations += 1
        if not self._sent_initial and not challenge.strip():
            self._sent_initial = True
            return self._initial
        if self.error is None:
            self.error = parse_error_challenge(challenge) or {"status": "unknown"}
            return b"" if self.mechanism == XOAUTH2 else base64.b64encode(b"\x01")
        return b"*"
