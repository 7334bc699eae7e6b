"""Text shown to a person: control characters escaped, so that data cannot drive the terminal.

A user name from a failed login, an upstream's ``-ERR`` text or a mailbox name is chosen by
whoever sent it; printed raw, ESC sequences rewrite the operator's screen (or the title,
or the clipboard) and NUL, CR or a bidi override hide or reorder what is shown. Every
human-facing output (``popgate status``, CLI messages that echo input, the console log
renderer) passes its text through :func:`printable`; JSON output escapes by itself.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
"""Unicode categories escaped: controls (C0, DEL, C1), format characters (bidi
overrides, zero-width joiners), line/paragraph separators, lone surrogates."""


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every control, format and separator character written as a Python-
    style escape (``\\x1b``, ``\\x00``, ``\\u202e``); printable text, including non-ASCII
    letters, is unchanged."""
    if text.isprintable():
        return text  # the common case: nothing to escape (str.isprintable rejects all of them)
    return "".join(
        _escape(ch) if unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch for ch in text
    )


def printable_lines(text: str) -> str:
    """:func:`printable` for text of several lines: each line escaped, ``\n`` kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


def printable_tree(value: Any) -> Any:
    """A copy of a JSON-like value with :func:`printable` applied to every string in it,
    keys included (for rendering a dict that came from elsewhere, e.g. the status)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_tree(v) for v in value]
    return value
