"""Addresses (RFC 5322 §3.4) parsed leniently into the IMAP ENVELOPE (RFC 3501 §7.4.2).

Groups are kept as RFC 3501 writes them (a NIL-host start and an all-NIL end), so a mailbox
without a domain gets an empty host string, never NIL. Values stay encoded: clients decode
RFC 2047 words in the ENVELOPE themselves.
"""

from __future__ import annotations

import functools
import re

from gateway.message.params import QUOTED_PAIR
from gateway.message.wire import NIL, nstring

_ADDR_TOKEN = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
  | (?P<q>"(?P<qc>(?:[^"\\]|\\.)*)"?)
  | (?P<d>\[(?:[^\]\\]|\\.)*\]?)
  | (?P<a>[^ \t\r\n()<>@,;:"\[\]]+)
  | (?P<s>.)
    """,
    re.S | re.X,
)

Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]

PARSED_ADDRESS_LISTS = 256
"""Address-list values whose parse is kept (:func:`parse_addresses`). At ingest one
message's From and To are each parsed four times (ENVELOPE, SEARCH's address text, the
SORT keys FROM/DISPLAYFROM and TO/DISPLAYTO), and a maildrop repeats its correspondents,
so the same value comes back often: the parse was ~30% of the analysis (issue 19)."""

KEPT_ADDRESS_LIST = 1024
"""Longest value whose parse is kept, so the cache stays within a few MiB whatever the
headers hold (a hostile To: of 200 KB is parsed every time, as before)."""


def _addr_tokens(value: bytes) -> list[tuple[str, bytes]]:
    """Tokens: ("a", atom), ("q", unquoted string), ("d", [literal]), ("c", comment text),
    or (special, special) for one of ``<>@,;:``."""
    tokens: list[tuple[str, bytes]] = []
    pos = 0
    n = len(value)
    while pos < n:
        if value[pos] == 0x28:  # "(" opens a possibly nested comment
            depth = 0
            i = pos
            while i < n:
                c = value[i]
                if c == 0x5C:
                    i += 2
                    continue
                if c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            text = value[pos + 1 : min(i, n)]
            tokens.append(("c", QUOTED_PAIR.sub(rb"\1", text).strip()))
            pos = i + 1
            continue
        m = _ADDR_TOKEN.match(value, pos)
        assert m is not None  # the last alternative matches any byte
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "q":
            tokens.append(("q", QUOTED_PAIR.sub(rb"\1", m.group("qc"))))
        elif kind == "s":
            tokens.append((text.decode("latin-1"), text))
        else:
            tokens.append((kind or "a", text))
    return tokens


def _words(tokens: list[tuple[str, bytes]]) -> list[bytes]:
    return [v for k, v in tokens if k != "c"]


def _addr_spec(tokens: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """(mailbox, host) from the tokens of an addr-spec; host is b"" when missing."""
    words = [(k, v) for k, v in tokens if k != "c"]
    at = next((i for i, (k, _) in enumerate(words) if k == "@"), -1)
    if at < 0:
        return b"".join(v for _, v in words), b""
    local = b"".join(v for _, v in words[:at])
    host = b"".join(v for _, v in words[at + 1 :])
    return local, host


def parse_addresses(value: bytes) -> list[Address]:
    """Parse an address-list leniently into ENVELOPE address tuples, groups included."""
    if len(value) <= KEPT_ADDRESS_LIST:
        return list(_kept_addresses(bytes(value)))
    return list(_parse_addresses(value))


@functools.lru_cache(maxsize=PARSED_ADDRESS_LISTS)
def _kept_addresses(value: bytes) -> tuple[Address, ...]:
    """:func:`parse_addresses` of a short value, kept (a pure function of the bytes)."""
    return _parse_addresses(value)


def _parse_addresses(value: bytes) -> tuple[Address, ...]:
    tokens = _addr_tokens(value)
    out: list[Address] = []
    in_group = False
    i = 0
    n = len(tokens)
    while i < n:
        phrase: list[tuple[str, bytes]] = []
        comment: bytes | None = None
        angle: list[tuple[str, bytes]] | None = None
        stop = ""
        while i < n:
            kind, text = tokens[i]
            i += 1
            if kind in (",", ";"):
                stop = kind
                break
            if kind == ":" and not in_group and angle is None:
                stop = ":"
                break
            if kind == "c":
                comment = text or comment
            elif kind == "<":
                angle = []
                while i < n and tokens[i][0] != ">":
                    angle.append(tokens[i])
                    i += 1
                i += 1
            elif angle is None:
                phrase.append((kind, text))
        if stop == ":":
            out.append((None, None, b" ".join(_words(phrase)), None))
            in_group = True
            continue
        if angle is not None:
            adl: bytes | None = None
            colon = next((j for j, (k, _) in enumerate(angle) if k == ":"), -1)
            if colon >= 0 and angle and angle[0][0] == "@":
                adl = b"".join(_words(angle[:colon]))
                angle = angle[colon + 1 :]
            mailbox, host = _addr_spec(angle)
            name = b" ".join(_words(phrase)) or comment
            out.append((name, adl, mailbox, host))
        elif _words(phrase):
            mailbox, host = _addr_spec(phrase)
            out.append((comment, None, mailbox, host))
        if stop == ";" and in_group:
            out.append((None, None, None, None))
            in_group = False
    if in_group:
        out.append((None, None, None, None))
    return tuple(out)


def _addresses_wire(value: bytes | None) -> bytes | None:
    """The ENVELOPE address list for a header value, None when absent or empty."""
    if value is None:
        return None
    addrs = parse_addresses(value)
    if not any(a[2] is not None for a in addrs):
        return None
    return (
        b"("
        + b"".join(
            b"(" + b" ".join((nstring(a[0]), nstring(a[1]), nstring(a[2]), nstring(a[3]))) + b")"
            for a in addrs
        )
        + b")"
    )


def address_text(value: bytes) -> bytes:
    """An address-list header value as parsed, for SEARCH FROM/TO/CC/BCC (RFC 3501 §6.4.4).

    Comments, folding and quoting are gone: ``<user (c)@ (c) example.org>`` becomes
    ``user@example.org`` and ``"Doe, J." <j@x>`` becomes ``Doe, J. <j@x>``, so a search for
    the address finds it as other servers (Dovecot's normalised address) do. A comment
    standing in for a display name (``j@x (John Doe)``) stays, as the ENVELOPE name does.
    Groups read ``name: ...;``. Encoded words stay encoded (the caller decodes).
    """
    out: list[bytes] = []
    group: tuple[bytes, list[bytes]] | None = None
    for name, _adl, mailbox, host in parse_addresses(value):
        if mailbox is None:  # group end
            if group is not None:
                out.append(group[0] + b": " + b", ".join(group[1]) + b";")
            group = None
        elif host is None:  # group start: the mailbox slot holds the group's name
            group = (mailbox, [])
        else:
            spec = mailbox + b"@" + host if host else mailbox
            item = name + b" <" + spec + b">" if name else spec
            (group[1] if group is not None else out).append(item)
    return b", ".join(out)


def envelope(values: dict[str, bytes]) -> bytes:
    """ENVELOPE (RFC 3501 §7.4.2) from the unfolded, still-encoded first field values."""
    from_ = _addresses_wire(values.get("from"))
    sender = _addresses_wire(values.get("sender")) or from_
    reply_to = _addresses_wire(values.get("reply-to")) or from_
    items = (
        nstring(values.get("date")),
        nstring(values.get("subject")),
        from_ or NIL,
        sender or NIL,
        reply_to or NIL,
        _addresses_wire(values.get("to")) or NIL,
        _addresses_wire(values.get("cc")) or NIL,
        _addresses_wire(values.get("bcc")) or NIL,
        nstring(values.get("in-reply-to")),
        nstring(values.get("message-id")),
    )
    return b"(" + b" ".join(items) + b")"
