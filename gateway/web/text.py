"""Making any text safe to put in HTML or SVG, and the few formats the page shares.

Everything shown on the page that a user, an upstream or an error could have chosen
(user names, mailbox names, error texts, host names) goes through :func:`esc`. Besides
the five HTML metacharacters it makes invisible and look-alike characters visible:
C0/C1 controls and DEL (XML 1.0 forbids most of them outright), line and paragraph
separators, and the bidirectional overrides that can make ``gnp.exe`` read ``exe.png``
(Unicode TR 9 / CVE-2021-42574). Lone surrogates cannot be encoded and become U+FFFD.
"""

from __future__ import annotations

import datetime
import html

_INVISIBLE = frozenset(
    [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
    + [*range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0xFEFF]
)
"""Code points shown as ``\\uXXXX`` text instead of themselves."""

_SPACES = {0x09: " ", 0x0A: " ", 0x0D: " "}
"""Tab and line breaks read as a space inside one line of the page."""


def visible(text: str) -> str:
    """``text`` with controls, separators and bidi overrides written out as ``\\xNN`` or
    ``\\uXXXX``, tabs and line breaks as spaces, and lone surrogates as U+FFFD."""
    out = []
    for c in text:
        o = ord(c)
        if o in _SPACES:
            out.append(_SPACES[o])
        elif o in _INVISIBLE:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(c)
    return "".join(out)


def esc(value: object) -> str:
    """Any value as HTML/XML text or attribute content (quotes escaped too)."""
    return html.escape(visible("" if value is None else str(value)), quote=True)


MISSING = "–"
"""What the page shows for a value it does not have."""


def size(octets: float | None, missing: str = MISSING) -> str:
    """``512 B``, ``1.5 KiB``, ``12.0 MiB``: binary units, on the page and in
    ``popgate status`` (which passes an ASCII ``missing``)."""
    if octets is None:
        return missing
    value = float(octets)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def duration(seconds: float | None, missing: str = MISSING) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: two units at most, on the page and in
    ``popgate status``."""
    if seconds is None:
        return missing
    s = int(round(max(0.0, seconds)))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def utc(epoch: float | None) -> str:
    """``2025-06-15 14:03 UTC`` (the page is read in many time zones; UTC says so)."""
    if epoch is None:
        return "never"
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def ago(epoch: float | None, now: float) -> str:
    """``5m 2s ago (2025-06-15 14:03 UTC)`` or ``never``."""
    if epoch is None:
        return "never"
    return f"{duration(now - epoch)} ago ({utc(epoch)})"
