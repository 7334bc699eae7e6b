"""BODY[HEADER.FIELDS (...)]: the pattern fast path selects exactly the bytes the field
scan selects (gateway/message/sections.py, issue 19), and the root-offset shortcut of
top-level sections matches the full part map."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message.analysis import analyze
from gateway.message.sections import (
    _fields_pattern,
    _header_fields,
    _scanned_header_fields,
    section,
)

NAMES = ["From", "FROM", "from", "Subject", "Date", "To", "X-Fr", "Claß", "CLASS", "class"]
NAME = st.sampled_from(NAMES)

LINE = st.one_of(
    # name, optional blanks, colon, value
    st.tuples(NAME, st.sampled_from(["", " ", "\t", " \t"]), st.text("ab :\t", max_size=6)).map(
        lambda t: f"{t[0]}{t[1]}:{t[2]}"
    ),
    st.text("ab \t:Fro", max_size=8).map(lambda v: " " + v),  # a folded line
    st.text("ab \t:Fro", max_size=8).map(lambda v: "\t" + v),
    st.text("abFrom \t", max_size=8),  # no colon at all
    st.sampled_from(["From x: y", " From: y", "From\r: y", "\r"]),
)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(LINE, max_size=12))
    ends = draw(st.lists(st.sampled_from(["\r\n", "\n"]), min_size=len(lines), max_size=len(lines)))
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    if text and draw(st.booleans()):
        text = text.rstrip("\r\n")  # the last field runs to the region's end
    return text.encode("latin-1")


@settings(max_examples=500, deadline=None)
@given(
    raw=headers(),
    names=st.lists(NAME, min_size=1, max_size=4).map(tuple),
    prefix=st.sampled_from([b"", b"Lead: x\r\n"]),
)
def test_fast_path_equals_the_field_scan(raw: bytes, names: tuple[str, ...], prefix: bytes) -> None:
    """Same bytes as the scan for any header: folding, blanks before the colon, lines
    without a colon, bare LF, a last line without its end, and the scan's ``ß`` folding
    (a header with that byte takes the scan)."""
    data = prefix + raw + b"\r\nbody"
    message = [len(prefix), len(prefix) + len(raw), len(prefix) + len(raw) + 2, len(data)]
    assert _header_fields(data, message, names, True) == _scanned_header_fields(
        data, message, names, True
    )


def test_fast_path_is_taken_for_plain_names_only() -> None:
    """Plain field names compile to one pattern; a name the pattern could misread (blanks,
    a colon, non-ASCII) leaves the request to the scan."""
    assert _fields_pattern(("FROM", "Subject", "X-Mailer")) is not None
    for odd in ("FROM ", "a:b", "Fröm", " FROM", ""):
        assert _fields_pattern(("FROM", odd)) is None


def test_a_folded_field_and_case_are_kept() -> None:
    raw = (
        b"Received: x\r\nsubject: Hello\r\n  world\r\nFROM : a@example.com\r\n"
        b"X-Subject: no\r\nDate: Mon\r\n\r\nbody"
    )
    he = raw.index(b"\r\n\r\n") + 2
    got = _header_fields(raw, [0, he, he + 2, len(raw)], ("From", "SUBJECT"), True)
    assert got == b"subject: Hello\r\n  world\r\nFROM : a@example.com\r\n\r\n"


MESSAGES = [
    b"From: a@example.com\r\nSubject: plain\r\n\r\nHello\r\n",
    b"From: a@example.com\r\nSubject: multi\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
    b"\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner\r\n"
    b"--b--\r\n",
    b"Subject: no body",
]


def test_top_level_sections_agree_with_the_full_part_map() -> None:
    """HEADER, TEXT and HEADER.FIELDS(.NOT) of the whole message read only the root's
    offsets from the part map; they give what the parsed map gives."""
    for raw in MESSAGES:
        parts = analyze(raw).parts
        root = json.loads(parts)
        assert section(raw, parts, (), "HEADER") == raw[root[0] : root[2]]
        assert section(raw, parts, (), "TEXT") == raw[root[2] : root[3]]
        for kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            keep = kind == "HEADER.FIELDS"
            expected = _scanned_header_fields(raw, root, ("SUBJECT",), keep)
            assert section(raw, parts, (), kind, ("SUBJECT",)) == expected
