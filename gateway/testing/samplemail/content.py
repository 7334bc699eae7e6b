"""What a sample message says, before it has a MIME shape: family notes, newsletters and
shop orders drawn from a seeded RNG, with attachment bytes (PDF, PNG) sized by a profile.

Every choice comes from the ``rng`` passed in, in a fixed order, so the same seed gives the
same content.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from dataclasses import dataclass
from html import escape

from gateway.testing.samplemail.phrases import (
    FAMILY,
    NEWSLETTERS,
    RECIPIENT,
    RECIPIENT_FIRST,
    SHOPS,
    TEXT,
    Sender,
)

MAX_ATTACHMENT_BYTES = 2 * 1024 * 1024
"""Largest decoded attachment any profile produces."""

TEXT_WIDTH = 72
"""Body text is wrapped to this many characters (RFC 5322 §2.1.1 recommends at most 78)."""

JAPANESE_WIDTH = 24
"""Japanese has no spaces to wrap at; lines are cut after this many characters (72 octets)."""


@dataclass(frozen=True)
class Profile:
    """How large messages get: body paragraphs and attachment share/sizes."""

    name: str
    attachment_share: float
    attachment_min: int
    attachment_max: int
    paragraphs_median: float
    paragraphs_sigma: float


PROFILES = {
    # Small messages for the demo and unit tests: a few KB each, tiny attachments.
    "demo": Profile("demo", 0.15, 600, 6_000, 2.0, 0.4),
    # Benchmarks: median around 4 KB, one in ten carries an attachment up to 2 MB
    # (log-uniform sizes, so most attachments are tens or hundreds of KB).
    "realistic": Profile("realistic", 0.10, 15_000, MAX_ATTACHMENT_BYTES, 2.5, 0.6),
}

SIZE_PROFILES: tuple[str, ...] = tuple(PROFILES)
"""Names accepted by `size_profile`."""


def _wrap(text: str, lang: str) -> str:
    """Greedy line wrap (or fixed-width cut for Japanese), keeping lines far below 998 octets."""
    if lang == "ja":
        return "\n".join(
            text[start : start + JAPANESE_WIDTH] for start in range(0, len(text), JAPANESE_WIDTH)
        )
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > TEXT_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


def _pdf_bytes(rng: random.Random, size: int) -> bytes:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    tail = b"\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    return head + rng.randbytes(max(0, size - len(head) - len(tail))) + tail


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(rng: random.Random, size: int) -> bytes:
    width, height = rng.choice(((640, 480), (800, 600), (1024, 768)))
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    tail = _png_chunk(b"IEND", b"")
    return (
        head + _png_chunk(b"IDAT", rng.randbytes(max(0, size - len(head) - len(tail) - 12))) + tail
    )


def _paragraph_count(rng: random.Random, profile: Profile) -> int:
    return max(
        1, round(rng.lognormvariate(math.log(profile.paragraphs_median), profile.paragraphs_sigma))
    )


def _paragraphs(
    rng: random.Random, pool: tuple[str, ...], count: int, values: dict[str, str]
) -> list[str]:
    return [
        " ".join(rng.choice(pool).format(**values) for _ in range(rng.randint(2, 4)))
        for _ in range(count)
    ]


def _html(title: str, sections: list[tuple[str, list[str]]], footer: str) -> str:
    """A newsletter-style HTML body: inline styles and a layout table, like bulk senders use.

    `title` and headings are plain text; paragraphs and `footer` are HTML (callers escape).
    """
    title = escape(title)
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>' + title + "</title></head>",
        '<body style="margin:0;padding:0;background:#f4f4f4;font-family:Arial,sans-serif">',
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0">',
        '<tr><td align="center"><table width="600" style="background:#ffffff;padding:24px">',
        f'<tr><td><h1 style="color:#2e7d32;font-size:22px">{title}</h1></td></tr>',
    ]
    for heading, paragraphs in sections:
        if heading:
            lines.append(
                f'<tr><td><h2 style="font-size:17px;color:#333">{escape(heading)}</h2></td></tr>'
            )
        for paragraph in paragraphs:
            lines.append(
                f'<tr><td><p style="font-size:14px;line-height:1.5">{paragraph}</p></td></tr>'
            )
    lines.append(f'<tr><td style="font-size:11px;color:#888">{footer}</td></tr>')
    lines.append("</table></td></tr></table></body></html>")
    return "\n".join(lines)


@dataclass
class Content:
    """What a message says, before it is given a MIME shape."""

    sender: Sender
    subject: str
    text: str
    html: str | None
    extra_headers: list[str]
    attachment: tuple[str, str, bytes] | None = None


def family(i: int, rng: random.Random, profile: Profile, with_attachment: bool) -> Content:
    sender = rng.choice(FAMILY)
    words = TEXT[sender.lang]
    values = {"day": rng.choice(words["days"]), "first": RECIPIENT_FIRST[sender.lang]}
    subject = rng.choice(words["family_subject"]).format(**values)
    extra: list[str] = []
    if rng.random() < 0.25:
        subject = "Re: " + subject
        parent = f"<{rng.getrandbits(48):012x}@{RECIPIENT[1].split('@')[1]}>"
        extra += [f"In-Reply-To: {parent}", f"References: {parent}"]
    body = [rng.choice(words["greeting"]).format(**values)]
    body += [
        _wrap(p, sender.lang)
        for p in _paragraphs(rng, words["family"], _paragraph_count(rng, profile), values)
    ]
    body.append(rng.choice(words["signoff"]).format(sender=sender.first_name))
    attachment = None
    if with_attachment:
        name = rng.choice(words["photo"])
        attachment = ("image/png", name, _png_bytes(rng, _attachment_size(rng, profile)))
    return Content(sender, subject, "\n\n".join(body), None, extra, attachment)


def newsletter(i: int, rng: random.Random, profile: Profile, with_attachment: bool) -> Content:
    sender = rng.choice(NEWSLETTERS)
    words = TEXT[sender.lang]
    values = {"day": rng.choice(words["days"]), "n": str(100 + i % 900)}
    subject = rng.choice(words["news_subject"]).format(**values)
    sections: list[tuple[str, list[str]]] = []
    for _ in range(max(1, _paragraph_count(rng, profile) - 1) + 1):
        heading = rng.choice(words["news_heading"])
        sections.append((heading, _paragraphs(rng, words["news"], rng.randint(1, 2), values)))
    token = f"{rng.getrandbits(64):016x}"
    unsubscribe = f"https://{sender.domain}/unsubscribe?u={token}"
    text_lines: list[str] = [subject, "=" * min(len(subject), TEXT_WIDTH)]
    for heading, paragraphs in sections:
        text_lines += ["", heading.upper() if heading.isascii() else heading, ""]
        text_lines += [_wrap(p, sender.lang) for p in paragraphs]
    text_lines += ["", "--", unsubscribe]
    html = _html(
        subject,
        [(heading, [escape(p) for p in paragraphs]) for heading, paragraphs in sections],
        f'<a href="{unsubscribe}">Unsubscribe</a>',
    )
    extra = [
        f"List-Id: <news.{sender.domain}>",
        f"List-Unsubscribe:\n <{unsubscribe}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "Precedence: bulk",
    ]
    attachment = None
    if with_attachment:
        attachment = (
            "application/pdf",
            f"programm-{values['n']}.pdf",
            _pdf_bytes(rng, _attachment_size(rng, profile)),
        )
    return Content(sender, subject, "\n".join(text_lines), html, extra, attachment)


def shop(i: int, rng: random.Random, profile: Profile, with_attachment: bool) -> Content:
    sender = rng.choice(SHOPS)
    words = TEXT[sender.lang]
    order = f"{2024000 + i * 7 + rng.randint(0, 6)}"
    values = {"day": rng.choice(words["days"]), "n": order, "first": RECIPIENT_FIRST[sender.lang]}
    subject = rng.choice(words["shop_subject"]).format(**values)
    items = [
        (rng.choice(words["product"]), rng.randint(1, 3), rng.randint(299, 4999))
        for _ in range(rng.randint(1, 4))
    ]
    total = sum(qty * cents for _, qty, cents in items)
    intro = _paragraphs(rng, words["shop"], max(1, _paragraph_count(rng, profile) - 1), values)
    greeting = rng.choice(words["greeting"]).format(**values)
    rows = [f"{qty} x {name}  {qty * cents / 100:.2f} EUR" for name, qty, cents in items]
    text = "\n\n".join(
        [
            greeting,
            *(_wrap(p, sender.lang) for p in intro),
            f"#{order}\n" + "\n".join(rows) + f"\n= {total / 100:.2f} EUR",
            sender.name,
        ]
    )
    table = "".join(
        f"<tr><td>{escape(name)}</td><td>{qty}</td><td>{qty * cents / 100:.2f}&nbsp;EUR</td></tr>"
        for name, qty, cents in items
    )
    html = _html(
        subject,
        [
            ("", [escape(greeting), *(escape(p) for p in intro)]),
            ("", [f"<table>{table}</table>", f"<b>{total / 100:.2f}&nbsp;EUR</b>"]),
        ],
        escape(sender.name),
    )
    attachment = None
    if with_attachment:
        name = rng.choice(words["invoice"]).format(**values)
        attachment = ("application/pdf", name, _pdf_bytes(rng, _attachment_size(rng, profile)))
    return Content(sender, subject, text, html, [], attachment)


def _attachment_size(rng: random.Random, profile: Profile) -> int:
    """Log-uniform between the profile's bounds: many small files, a few large ones."""
    low, high = math.log(profile.attachment_min), math.log(profile.attachment_max)
    return min(MAX_ATTACHMENT_BYTES, int(math.exp(rng.uniform(low, high))))
