"""MIME assembly of sample mail: header encoding (RFC 2047, RFC 2231), transfer encodings
(RFC 2045 §6), multiparts (RFC 2046 §5.1), forwarded message/rfc822 parts (RFC 2046 §5.2.1)
and the trace and envelope header fields of a delivered message.

The standard library's `email` package supplies the encodings; the tree is assembled
directly, LF line ends throughout (the caller turns them into CRLF), so that 10,000 messages
take seconds rather than minutes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import random
from dataclasses import dataclass
from email.header import Header
from email.utils import encode_rfc2231, format_datetime, formataddr

from gateway.testing.samplemail.content import Content, Profile, newsletter, shop
from gateway.testing.samplemail.phrases import FAMILY, RECIPIENT, TEXT

_B64_LINE = 76  # RFC 2045 §6.8: encoded lines are at most 76 characters.
_RFC2231_CHUNK = 56  # Percent-encoded characters per RFC 2231 §3 continuation line.

_RELAYS = ("mx1.example.org", "mx2.example.org")
_SENDER_SITES = ("192.0.2", "198.51.100", "203.0.113")


@functools.lru_cache(maxsize=256)
def _address_field(field: str, name: str, address: str) -> str:
    """An address field; the display name RFC 2047-encoded when not ASCII, folded when long."""
    mailbox = formataddr((name, address), charset="utf-8")
    line = f"{field}: {mailbox}"
    if len(line) <= 78:
        return line
    display, _, angle = mailbox.rpartition(" <")
    return f"{field}: {display}\n <{angle}"


def _header(name: str, value: str) -> str:
    """One header field, folded at whitespace and RFC 2047-encoded only when needed."""
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}"
    charset = "us-ascii" if value.isascii() else "utf-8"
    return f"{name}: " + Header(value, charset, header_name=name).encode(linesep="\n")


def _rfc2231_params(parameter: str, filename: str) -> list[str]:
    """`parameter` for a file name: plain when ASCII, else RFC 2231 §4 (with §3 continuations)."""
    if filename.isascii():
        return [f'{parameter}="{filename}"']
    encoded = encode_rfc2231(filename, "utf-8")
    if len(encoded) <= _RFC2231_CHUNK:
        return [f"{parameter}*={encoded}"]
    chunks: list[str] = []
    rest = encoded
    while rest:
        cut = min(_RFC2231_CHUNK, len(rest))
        # Never split a %XX escape between two continuation lines.
        while cut < len(rest) and "%" in rest[max(0, cut - 2) : cut]:
            cut -= 1
        chunks.append(rest[:cut])
        rest = rest[cut:]
    return [f"{parameter}*{index}*={chunk}" for index, chunk in enumerate(chunks)]


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\n".join(
        encoded[start : start + _B64_LINE] for start in range(0, len(encoded), _B64_LINE)
    )


@dataclass
class Part:
    """A MIME entity under construction: header lines and a body, LF line endings."""

    headers: list[str]
    body: bytes
    eight_bit: bool = False

    def render(self) -> bytes:
        return "\n".join(self.headers).encode() + b"\n\n" + self.body


def _text_part(text: str, subtype: str, rng: random.Random, *, html: bool = False) -> Part:
    """A text part with a transfer encoding the way real clients pick one (RFC 2045 §6)."""
    data = (text if text.endswith("\n") else text + "\n").encode()
    headers = [f"Content-Type: text/{subtype}; charset=utf-8"]
    if text.isascii() and not html:
        return Part(headers + ["Content-Transfer-Encoding: 7bit"], data)
    roll = rng.random()
    choice = "quoted-printable" if html or roll < 0.45 else "8bit" if roll < 0.85 else "base64"
    if choice == "8bit":
        return Part(headers + ["Content-Transfer-Encoding: 8bit"], data, eight_bit=True)
    if choice == "base64":
        return Part(headers + ["Content-Transfer-Encoding: base64"], _base64_lines(data) + b"\n")
    return Part(
        headers + ["Content-Transfer-Encoding: quoted-printable"],
        binascii.b2a_qp(data, istext=True),
    )


def _multipart(subtype: str, parts: list[Part], rng: random.Random) -> Part:
    """RFC 2046 §5.1: the "=_" boundary prefix cannot occur in QP or base64 bodies."""
    boundary = f"=_{rng.getrandbits(64):016x}"
    chunks = [b"This is a multi-part message in MIME format.\n"]
    for part in parts:
        chunks.append(f"--{boundary}\n".encode())
        chunks.append(part.render())
        if not part.body.endswith(b"\n"):
            chunks.append(b"\n")
    chunks.append(f"--{boundary}--\n".encode())
    eight_bit = any(part.eight_bit for part in parts)
    headers = [f"Content-Type: multipart/{subtype};", f' boundary="{boundary}"']
    if eight_bit:
        # RFC 2045 §6.4: a multipart must declare 8bit if anything inside is 8bit.
        headers.append("Content-Transfer-Encoding: 8bit")
    return Part(headers, b"".join(chunks), eight_bit)


def _with_params(field: str, params: list[str]) -> list[str]:
    """A header field whose parameters each sit on their own folded line."""
    return [f"{field};"] + [
        f" {param}" + (";" if n < len(params) - 1 else "") for n, param in enumerate(params)
    ]


def _attachment(mime_type: str, filename: str, data: bytes) -> Part:
    headers = _with_params(f"Content-Type: {mime_type}", _rfc2231_params("name", filename))
    headers += _with_params(
        "Content-Disposition: attachment", _rfc2231_params("filename", filename)
    )
    headers.append("Content-Transfer-Encoding: base64")
    return Part(headers, _base64_lines(data) + b"\n")


def _body(content: Content, rng: random.Random) -> Part:
    text = _text_part(content.text, "plain", rng)
    if content.html is None:
        body = text
    else:
        body = _multipart(
            "alternative", [text, _text_part(content.html, "html", rng, html=True)], rng
        )
    if content.attachment is not None:
        mime_type, filename, data = content.attachment
        body = _multipart("mixed", [body, _attachment(mime_type, filename, data)], rng)
    return body


def _envelope(
    content: Content, rng: random.Random, when: dt.datetime, *, received: bool
) -> list[str]:
    sender = content.sender
    local = when.astimezone(dt.timezone(dt.timedelta(hours=sender.utc_offset_hours)))
    headers: list[str] = []
    if received:
        relay = rng.choice(_RELAYS)
        site = f"{rng.choice(_SENDER_SITES)}.{rng.randint(2, 254)}"
        hop1 = when + dt.timedelta(seconds=rng.randint(1, 20))
        hop2 = hop1 + dt.timedelta(seconds=rng.randint(1, 40))
        queue1, queue2 = f"{rng.getrandbits(40):010X}", f"{rng.getrandbits(40):010X}"
        headers += [
            f"Return-Path: <{sender.address}>",
            f"Received: from smtp.{sender.domain}",
            f"\t(smtp.{sender.domain} [{site}])",
            f"\tby {relay} (Postfix) with ESMTPS id {queue2}",
            f"\tfor <{RECIPIENT[1]}>; {format_datetime(hop2)}",
            f"Received: from [10.0.{rng.randint(0, 255)}.{rng.randint(2, 254)}] (unknown [{site}])",
            f"\tby smtp.{sender.domain} (Postfix) with ESMTPSA id {queue1};",
            f"\t{format_datetime(hop1.astimezone(local.tzinfo))}",
        ]
    headers += [
        _address_field("From", sender.name, sender.address),
        _address_field("To", *RECIPIENT),
        _header("Subject", content.subject),
        f"Date: {format_datetime(local)}",
        f"Message-ID: <{local:%Y%m%d%H%M%S}.{rng.getrandbits(48):012x}@{sender.domain}>",
        *content.extra_headers,
        "MIME-Version: 1.0",
    ]
    return headers


def assemble(content: Content, rng: random.Random, when: dt.datetime, *, received: bool) -> Part:
    body = _body(content, rng)
    return Part(
        _envelope(content, rng, when, received=received) + body.headers, body.body, body.eight_bit
    )


def forward(i: int, rng: random.Random, when: dt.datetime, profile: Profile) -> Part:
    """A family member forwards a newsletter or order: a text note plus message/rfc822."""
    inner_when = when - dt.timedelta(seconds=rng.randint(3600, 5 * 86400))
    inner_content = rng.choice((newsletter, shop))(i, rng, profile, False)
    inner = assemble(inner_content, rng, inner_when, received=True)
    sender = rng.choice(FAMILY)
    words = TEXT[sender.lang]
    note = rng.choice(words["forward_note"]) + "\n\n"
    note += rng.choice(words["signoff"]).format(sender=sender.first_name)
    # RFC 2046 §5.2.1: message/rfc822 allows only 7bit, 8bit or binary.
    wrapped = Part(
        ["Content-Type: message/rfc822", "Content-Disposition: inline"]
        + (["Content-Transfer-Encoding: 8bit"] if inner.eight_bit else []),
        inner.render(),
        inner.eight_bit,
    )
    body = _multipart("mixed", [_text_part(note, "plain", rng), wrapped], rng)
    outer = Content(sender, "Fwd: " + inner_content.subject, note, None, [])
    envelope = _envelope(outer, rng, when, received=True)
    return Part(envelope + body.headers, body.body, body.eight_bit)
