"""What PostgreSQL ``text`` can hold: the one cleaning every write of the PostgreSQL store applies.

Kept apart from :mod:`gateway.store.postgres.rows` so that the schema's migrations (which
run before any row step exists) and ``popgate migrate-store`` clean text the same way the
insert path does, and a search for the cleaned value still matches.
"""

from __future__ import annotations


def pg_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL and unpaired surrogates become U+FFFD
    (search values are cleaned the same way, so searching still matches)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text
