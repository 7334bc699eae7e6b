"""Read-only view of an RFC 5322 message as Sieve tests see it: headers, addresses, body parts.

Sieve compares decoded header text (RFC 5228 §2.7.2: RFC 2047 encoded-words are decoded
before comparison), addr-specs taken from RFC 5322 §3.4 address lists (groups, comments and
several mailboxes per field included) and, for the body test (RFC 5173), MIME parts with
their transfer encoding and charset removed. Everything is parsed lazily and cached, since
most scripts look at a few headers only.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message as _EmailMessage
from functools import cached_property

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_Q_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _charset_decode(data: bytes, charset: str) -> str:
    charset = charset.split("*", 1)[0].strip().lower() or "us-ascii"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    raw = text.encode("ascii", "replace")
    if encoding in "Qq":
        data = _Q_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw.replace(b"_", b" "))
    else:
        try:
            data = base64.b64decode(raw + b"=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            return None
    return _charset_decode(data, charset)


def decode_header_value(value: str) -> str:
    """Decode RFC 2047 encoded-words; whitespace between two adjacent words is dropped (§6.2)."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    last_was_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        decoded = _decode_word(match.group(1), match.group(2), match.group(3))
        if decoded is None:
            out.append(between + match.group(0))
            last_was_word = False
        else:
            if not (last_was_word and between.strip(" \t\r\n") == ""):
                out.append(between)
            out.append(decoded)
            last_was_word = True
        pos = match.end()
    out.append(value[pos:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address list; `domain` is None when there was no '@'."""

    localpart: str
    domain: str | None

    @property
    def all(self) -> str:
        return self.localpart if self.domain is None else f"{self.localpart}@{self.domain}"


_ADDR_TOKEN = re.compile(r'[^\s()<>@,;:\\".\[\]]+|[()<>@,;:\\".\[\]]')


def _address_tokens(value: str) -> list[tuple[str, str]]:
    """Tokens of RFC 5322 §3.2: ('q', quoted text), ('d', domain literal), ('s', special),
    ('a', atom); comments (nested, with quoted pairs) and whitespace are dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == "(":
            depth = 0
            while i < n:
                if value[i] == "\\":
                    i += 2
                    continue
                depth += value[i] == "("
                depth -= value[i] == ")"
                i += 1
                if depth == 0:
                    break
        elif ch == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            out.append(("q", "".join(buf)))
            i = j + 1
        elif ch == "[":
            j = value.find("]", i)
            j = n - 1 if j < 0 else j
            out.append(("d", value[i : j + 1]))
            i = j + 1
        elif ch in "<>@,;:.\\)]":
            out.append(("s", ch))
            i += 1
        else:
            m = _ADDR_TOKEN.match(value, i)
            assert m is not None
            out.append(("a", m.group(0)))
            i = m.end()
    return out


def _addr_spec(tokens: list[tuple[str, str]]) -> Address | None:
    if not tokens:
        return None
    at = max((k for k, t in enumerate(tokens) if t == ("s", "@")), default=-1)
    local_tokens = tokens if at < 0 else tokens[:at]
    local = "".join(text for _kind, text in local_tokens)
    if at < 0:
        return Address(local, None) if local else None
    domain = "".join(text for _kind, text in tokens[at + 1 :])
    return Address(local, domain)


def parse_addresses(value: str) -> list[Address]:
    """Mailboxes of an RFC 5322 §3.4 address list, group members included, in order."""
    tokens = _address_tokens(value)
    out: list[Address] = []
    current: list[tuple[str, str]] = []
    angle: list[tuple[str, str]] | None = None
    in_angle = False
    for tok in tokens:
        if in_angle:
            if tok == ("s", ">"):
                in_angle = False
            elif tok == ("s", ":") and angle is not None:
                angle = []  # obs-route: "<@a,@b:user@host>"
            elif angle is not None:
                angle.append(tok)
            continue
        if tok == ("s", "<"):
            in_angle, angle = True, []
        elif tok == ("s", ":") and angle is None:
            current = []  # group display name ends; members follow
        elif tok in (("s", ","), ("s", ";")):
            addr = _addr_spec(angle if angle is not None else current)
            if addr is not None:
                out.append(addr)
            current, angle = [], None
        elif angle is None:
            current.append(tok)
    addr = _addr_spec(angle if angle is not None else current)
    if addr is not None:
        out.append(addr)
    return out


def _unfold(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "").replace("\n", "").strip(" \t")


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME leaf as the body test sees it: its content type and decoded text."""

    content_type: str
    text: str


class SieveMessage:
    """Headers, addresses and body of one message, parsed on first use."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)
        split = re.search(rb"\r?\n\r?\n", raw)
        if raw.startswith((b"\r\n", b"\n")):
            self._header_bytes, self.raw_body = b"", raw[2 if raw.startswith(b"\r\n") else 1 :]
        elif split is None:
            self._header_bytes, self.raw_body = raw, b""
        else:
            self._header_bytes, self.raw_body = raw[: split.start() + 1], raw[split.end() :]

    @cached_property
    def _fields(self) -> list[tuple[str, bytes]]:
        fields: list[tuple[str, bytes]] = []
        for line in re.split(rb"\r?\n(?![ \t])", self._header_bytes):
            name, colon, value = line.partition(b":")
            if not colon or not name or name[:1] in (b" ", b"\t"):
                continue
            fields.append((name.rstrip(b" \t").decode("latin-1").lower(), value))
        return fields

    @cached_property
    def _by_name(self) -> dict[str, list[bytes]]:
        by_name: dict[str, list[bytes]] = {}
        for key, value in self._fields:
            by_name.setdefault(key, []).append(value)
        return by_name

    @cached_property
    def _decoded(self) -> dict[str, list[str]]:
        return {}

    def raw_values(self, name: str) -> list[str]:
        """Unfolded values of every `name` field, in order, not RFC 2047 decoded."""
        return [_unfold(value) for value in self._by_name.get(name.lower(), ())]

    def header_values(self, name: str) -> list[str]:
        """Decoded values (RFC 5228 §2.7.2) of every `name` field, in order. Decoded once
        per name: a filter set tests the same few fields (Subject, From) rule after rule."""
        name = name.lower()
        found = self._decoded.get(name)
        if found is None:
            found = self._decoded[name] = [decode_header_value(v) for v in self.raw_values(name)]
        return list(found)

    def has_header(self, name: str) -> bool:
        name = name.lower()
        return any(key == name for key, _ in self._fields)

    @cached_property
    def _mime(self) -> _EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.compat32)

    def body_parts(self, content_types: list[str] | None, text_only: bool) -> list[BodyPart]:
        """Decoded MIME parts whose type is wanted (RFC 5173 §5.2); "" wants every type.

        :text (text_only) keeps text/* parts and reduces HTML to its text, as RFC 5173 §5.1
        allows; message/rfc822 parts contribute their headers as content.
        """
        out: list[BodyPart] = []
        for part in self._mime.walk():
            ctype = part.get_content_type()
            if part.is_multipart():
                continue
            if text_only:
                if part.get_content_maintype() != "text":
                    continue
            elif not _wanted(content_types or [""], ctype):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                payload = b""
            text = _charset_decode(payload, part.get_content_charset() or "us-ascii")
            if text_only and ctype == "text/html":
                text = _HTML_TAG.sub(" ", _HTML_DROP.sub(" ", text))
            out.append(BodyPart(ctype, text))
        return out


def _wanted(types: list[str], ctype: str) -> bool:
    main = ctype.split("/", 1)[0]
    for wanted in types:
        wanted = wanted.lower()
        if wanted == "" or wanted == ctype or ("/" not in wanted and wanted == main):
            return True
    return False
