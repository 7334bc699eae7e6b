"""Tests for gateway.message: ENVELOPE/BODY/BODYSTRUCTURE wire forms (RFC 3501 §7.4.2), the part
map and BODY[section] cutting (RFC 3501 §6.4.5), and the decoded search fields.

Expected wire forms were checked by hand against RFC 3501's grammar and cross-checked against
Dovecot 2.3's ``imap.bodystructure``/``imap.envelope`` for the same files (which differ only in
case and where the docstrings of gateway.message.structure and its neighbours say so).
"""

from __future__ import annotations

import base64
import datetime
import email.message
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.message import structure
from gateway.message import text as search_text
from gateway.message.analysis import Analysis, analyze
from gateway.message.sections import section

FIXTURES = Path(__file__).parent / "mime_fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --------------------------------------------------------------------------------------------
# A small IMAP s-expression reader (RFC 3501 §9 strings, numbers, NIL, lists) for the checks


class SexpError(ValueError):
    pass


def parse_sexp(data: bytes) -> object:
    """Parse one IMAP value: NIL → None, number → int, string → bytes, list → list.

    Strict about what this module emits: single spaces between items, except that
    parenthesised items may follow each other directly (address lists, multipart bodies).
    """
    pos = 0

    def value() -> object:
        nonlocal pos
        if pos >= len(data):
            raise SexpError("unexpected end")
        c = data[pos]
        if c == 0x28:  # (
            pos += 1
            items: list[object] = []
            while True:
                if pos >= len(data):
                    raise SexpError("unclosed list")
                if data[pos] == 0x29:
                    pos += 1
                    return items
                if items:
                    if data[pos] == 0x20:
                        pos += 1
                    elif data[pos] != 0x28 or not isinstance(items[-1], list):
                        raise SexpError(f"missing separator at {pos}")
                items.append(value())
        if c == 0x22:  # "
            pos += 1
            out = bytearray()
            while True:
                if pos >= len(data):
                    raise SexpError("unclosed quoted string")
                ch = data[pos]
                if ch == 0x22:
                    pos += 1
                    return bytes(out)
                if ch == 0x5C:
                    if pos + 1 >= len(data) or data[pos + 1] not in (0x22, 0x5C):
                        raise SexpError("bad escape")
                    out.append(data[pos + 1])
                    pos += 2
                    continue
                if ch in (0x0D, 0x0A, 0x00) or ch >= 0x80:
                    raise SexpError("quoted string holds a byte that needs a literal")
                out.append(ch)
                pos += 1
        if c == 0x7B:  # {n}CRLF literal
            m = re.compile(rb"\{(\d+)\}\r\n").match(data, pos)
            if m is None:
                raise SexpError("bad literal")
            n = int(m.group(1))
            start = m.end()
            if start + n > len(data):
                raise SexpError("short literal")
            pos = start + n
            lit = data[start:pos]
            if b"\x00" in lit:
                raise SexpError("NUL in literal")
            return lit
        m = re.compile(rb"NIL|\d+").match(data, pos)
        if m is None:
            raise SexpError(f"unexpected byte at {pos}: {data[pos : pos + 10]!r}")
        pos = m.end()
        return None if m.group() == b"NIL" else int(m.group())

    result = value()
    if pos != len(data):
        raise SexpError("trailing data")
    return result


def is_nstring(v: object) -> bool:
    return v is None or isinstance(v, bytes)


def check_params(v: object) -> None:
    assert v is None or (
        isinstance(v, list) and v and len(v) % 2 == 0 and all(isinstance(x, bytes) for x in v)
    )


def check_envelope(env: object) -> None:
    """RFC 3501 §9 envelope: 10 members, address lists of (name adl mailbox host)."""
    assert isinstance(env, list) and len(env) == 10
    assert is_nstring(env[0]) and is_nstring(env[1]) and is_nstring(env[8]) and is_nstring(env[9])
    for addrs in env[2:8]:
        assert addrs is None or (isinstance(addrs, list) and addrs)
        for addr in addrs or []:
            assert isinstance(addr, list) and len(addr) == 4 and all(map(is_nstring, addr))


def check_ext(rest: list[object]) -> None:
    """disposition, language, location (RFC 3501 §9 body-ext-*)."""
    disp, lang, loc = rest
    assert disp is None or (
        isinstance(disp, list) and len(disp) == 2 and isinstance(disp[0], bytes)
    )
    if disp is not None:
        check_params(disp[1])
    assert is_nstring(lang) or (isinstance(lang, list) and all(isinstance(x, bytes) for x in lang))
    assert is_nstring(loc)


def check_body(b: object, ext: bool) -> object:
    """Validate a BODY/BODYSTRUCTURE value against RFC 3501 §9 and return its shape:
    "L" for a basic/text part, ("M", [...]) for multipart, ("R", shape) for message/rfc822."""
    assert isinstance(b, list) and b
    if isinstance(b[0], list):
        i = 0
        kids = []
        while i < len(b) and isinstance(b[i], list):
            kids.append(check_body(b[i], ext))
            i += 1
        assert isinstance(b[i], bytes)  # subtype
        rest = b[i + 1 :]
        if ext:
            assert len(rest) == 4
            check_params(rest[0])
            check_ext(rest[1:])
        else:
            assert rest == []
        return ("M", kids)
    assert len(b) >= 7
    ctype, csub, params, cid, desc, enc, size = b[:7]
    assert isinstance(ctype, bytes) and isinstance(csub, bytes)
    check_params(params)
    assert is_nstring(cid) and is_nstring(desc) and isinstance(enc, bytes)
    assert isinstance(size, int)
    rest = b[7:]
    shape: object = "L"
    if ctype == b"MESSAGE" and csub == b"RFC822":
        check_envelope(rest[0])
        shape = ("R", check_body(rest[1], ext))
        assert isinstance(rest[2], int)
        rest = rest[3:]
    elif ctype == b"TEXT":
        assert isinstance(rest[0], int)
        rest = rest[1:]
    if ext:
        assert len(rest) == 4
        assert is_nstring(rest[0])  # md5
        check_ext(rest[1:])
    else:
        assert rest == []
    return shape


def check_wire(a: Analysis) -> object:
    """All three wire forms parse and follow the grammar; returns the structure's shape."""
    check_envelope(parse_sexp(a.envelope))
    shape = check_body(parse_sexp(a.bodystructure), ext=True)
    assert check_body(parse_sexp(a.body), ext=False) == shape
    return shape


# --------------------------------------------------------------------------------------------
# ENVELOPE / BODYSTRUCTURE / BODY exact forms


def test_plain_ascii_message_has_rfc3501_example_envelope_and_structure() -> None:
    """The RFC 3501 §7.4.2 style message: sender and reply-to default to from, the body is
    one TEXT/PLAIN part of 55 octets and 1 line."""
    a = analyze(fixture("plain.eml"))
    fred = b'(("Fred Foobar" NIL "foobar" "Blurdybloop.COM"))'
    assert a.envelope == (
        b'("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "afternoon meeting" '
        + fred + b" " + fred + b" " + fred
        + b' ((NIL NIL "mooch" "owatagu.siam.edu")) NIL NIL NIL'
        b' "<B27397-0100000@Blurdybloop.COM>")'
    )  # fmt: skip
    assert a.bodystructure == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1 NIL NIL NIL NIL)'
    )
    assert a.body == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1)'
    assert a.message_id == "<B27397-0100000@Blurdybloop.COM>"
    assert a.sent_date == datetime.datetime(
        1994, 2, 7, 21, 52, 25, tzinfo=datetime.timezone(datetime.timedelta(hours=-8))
    )


def test_envelope_keeps_rfc2047_words_raw_and_unfolds_continuations() -> None:
    """ENVELOPE strings are the header text as sent (RFC 3501 §7.4.2): encoded-words stay
    encoded, the folded subject loses only its CRLF, a quoted name is unquoted and re-quoted
    with escapes."""
    a = analyze(fixture("rfc2047.eml"))
    andre = b'(("=?ISO-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))'
    assert a.envelope == (
        b'("Tue, 02 Jan 2024 10:00:00 +0100" '
        b'"=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus?= =?UTF-8?Q?_K=C3=B6ln?=" '
        + andre + b" " + andre + b" " + andre
        + b' (("=?UTF-8?B?SsO2cmc=?= M\\"uller" NIL "joerg" "example.de")'
        b'("Keld =?ISO-8859-1?Q?J=F8rn_Simonsen?=" NIL "keld" "dkuug.dk"))'
        b' NIL NIL NIL "<2047@example.de>")'
    )  # fmt: skip
    assert a.bodystructure == (
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 96 2 NIL NIL NIL NIL)'
    )


def test_search_fields_decode_rfc2047_and_quoted_printable() -> None:
    """headers carry decoded unicode values; text is transfer- and charset-decoded, with the
    soft line break removed (RFC 2045 §6.7)."""
    a = analyze(fixture("rfc2047.eml"))
    headers = dict(a.headers)
    assert headers["subject"] == "Grüße aus Köln"
    assert headers["from"] == "André Pirard <PIRARD@vm1.ulg.ac.be>"
    assert "Keld Jørn Simonsen <keld@dkuug.dk>" in headers["to"]
    assert "Jörg" in headers["to"]
    assert a.text == ("Schöne Grüße aus Köln, mit einer sehr langen Zeile, die umbrochen wird.\r\n")


def test_group_syntax_routes_and_comments_in_envelope() -> None:
    """Groups become (NIL NIL name NIL) ... (NIL NIL NIL NIL); a source route goes to adl; a
    comment names a bare addr-spec; specials in a quoted name are escaped (RFC 3501 §7.4.2)."""
    env = parse_sexp(analyze(fixture("groups.eml")).envelope)
    assert isinstance(env, list)
    assert env[3] == [[b"Pete Sender", None, b"pete", b"silly.example"]]  # sender
    assert env[4] == [[None, b"@route1,@route2", b"jane", b"example.net"]]  # reply-to
    assert env[5] == [
        [b"Mary Smith", None, b"mary", b"x.test"],
        [None, None, b"jdoe", b"example.org"],
        [b"Who?", None, b"one", b"y.test"],
    ]
    assert env[6] == [
        [None, None, b"boss", b"nil.test"],
        [b'Giant; "Big" Box', None, b"sysservices", b"example.net"],
    ]
    assert env[7] == [
        [None, None, b"A Group", None],
        [b"Ed Jones", None, b"c", b"a.test"],
        [None, None, b"joe", b"where.test"],
        [b"John", None, b"jdoe", b"one.test"],
        [None, None, None, None],
        [None, None, b"Undisclosed recipients", None],
        [None, None, None, None],
    ]
    assert analyze(fixture("groups.eml")).envelope.count(b'"Giant; \\"Big\\" Box"') == 1


def test_missing_date_and_from_give_nil_and_no_sent_date() -> None:
    """Absent Date/From/Sender/Reply-To are NIL in the ENVELOPE; sent_date and message_id are
    None."""
    a = analyze(fixture("nodate.eml"))
    assert a.envelope == (
        b'(NIL "no date and no from" NIL NIL NIL ((NIL NIL "someone" "example.com"))'
        b" NIL NIL NIL NIL)"
    )
    assert a.sent_date is None
    assert a.message_id is None


def test_multipart_alternative_structure_counts_octets_and_lines() -> None:
    """Each part's size excludes the CRLF that belongs to the next delimiter (RFC 2046
    §5.1.1), so "Plain version." is 14 octets with no line end; preamble and epilogue are not
    parts."""
    a = analyze(fixture("alternative.eml"))
    assert a.bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 0 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 26 0 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "alt-1") NIL NIL NIL)'
    )
    assert a.body == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 0)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 26 0) "ALTERNATIVE")'
    )
    assert a.text == "Plain version.\n HTML & version. "


def test_mixed_with_base64_attachment_and_rfc2231_filename() -> None:
    """RFC 2231 continuations are merged into one FILENAME* value; id, description,
    encoding, language list, disposition and location land in their BODYSTRUCTURE slots; the
    base64 attachment is not search text; an unquoted boundary may contain '='."""
    a = analyze(fixture("mixed.eml"))
    assert a.bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 13 0 NIL NIL ("en" "de") NIL)'
        b'("APPLICATION" "OCTET-STREAM" ("NAME*" "utf-8\'\'%E2%82%AC-rates.bin")'
        b' "<att1@example.com>" "Euro rates" "BASE64" 700 NIL'
        b' ("ATTACHMENT" ("FILENAME*" "utf-8\'\'%E2%82%AC-rates.bin")) NIL'
        b' "http://example.com/rates.bin")'
        b' "MIXED" ("BOUNDARY" "----=_Part_0_12345") NIL NIL NIL)'
    )
    assert a.text == "See attached."
    raw = fixture("mixed.eml")
    assert base64.b64decode(section(raw, a.parts, (2,), "")) == bytes(range(256)) * 2


def test_nested_multiparts_shape_and_sizes() -> None:
    """multipart/mixed ⊃ alternative ⊃ related: the shape nests and the default charset is
    added to text parts that lack one (RFC 2046 §4.1.2)."""
    a = analyze(fixture("nested.eml"))
    assert a.body == (
        b'((("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0)'
        b'(("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 11 0)'
        b'("IMAGE" "GIF" NIL "<img1>" NIL "BASE64" 20) "RELATED") "ALTERNATIVE")'
        b'("TEXT" "X-NOTE" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 0) "MIXED")'
    )
    assert check_wire(a) == ("M", [("M", ["L", ("M", ["L", "L"])]), "L"])
    assert a.text == "plain body\n html \nnote"


def test_message_rfc822_attachment_carries_envelope_structure_and_lines() -> None:
    """A message/rfc822 part has the encapsulated ENVELOPE, its BODYSTRUCTURE and its line
    count (RFC 3501 §7.4.2); its text parts are searchable."""
    a = analyze(fixture("forward.eml"))
    inner_env = (
        b'("Thu, 04 Jan 2024 09:00:00 -0500" "inner"'
        b' (("Inner Sender" NIL "inner" "example.org"))'
        b' (("Inner Sender" NIL "inner" "example.org"))'
        b' (("Inner Sender" NIL "inner" "example.org"))'
        b' ((NIL NIL "orig" "example.org")) NIL NIL NIL "<inner@example.org>")'
    )
    assert a.bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 367 '
        + inner_env
        + b' (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "x.pdf") NIL NIL "BASE64" 8 NIL NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "in") NIL NIL NIL) 17 NIL ("INLINE" NIL) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "fw") NIL NIL NIL)'
    )
    raw = fixture("forward.eml")
    assert len(section(raw, a.parts, (2,), "")) == 367
    assert section(raw, a.parts, (2,), "").count(b"\n") == 17
    assert a.text == "See below.\ninner text"


def test_multipart_digest_parts_default_to_message_rfc822() -> None:
    """In multipart/digest a part without Content-Type is message/rfc822 (RFC 2046 §5.1.5)."""
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
        b"From: a@b\r\nSubject: in digest\r\n\r\ndigest body\r\n--d--\r\n"
    )
    a = analyze(raw)
    assert a.body == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 44 (NIL "in digest" ((NIL NIL "a" "b"))'
        b' ((NIL NIL "a" "b")) ((NIL NIL "a" "b")) NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 0) 3) "DIGEST")'
    )
    assert section(raw, a.parts, (1, 1), "") == b"digest body"


def test_envelope_strings_with_8bit_quotes_or_backslashes_are_literals_or_escaped() -> None:
    """A UTF-8 subject (RFC 6532) goes out as a literal; quotes and backslashes are escaped in
    a quoted string (RFC 3501 §4.3)."""
    a = analyze('Subject: Grüße\r\nIn-Reply-To: "a\\b"\r\n\r\n'.encode())
    assert a.envelope == (
        b'(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe NIL NIL NIL NIL NIL NIL "\\"a\\\\b\\"" NIL)'
    )
    assert dict(a.headers)["subject"] == "Grüße"


def test_multipart_without_boundary_falls_back_to_text_plain() -> None:
    """A multipart Content-Type without its required boundary is invalid, so the RFC 2045
    §5.2 default applies and the body stays searchable as text."""
    raw = b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n"
    a = analyze(raw)
    assert a.body == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1)'
    assert a.text == "no boundary\r\n"


def test_multipart_with_no_parts_shows_one_empty_text_part() -> None:
    """body-type-mpart needs at least one body (RFC 3501 §9): a multipart whose boundary never
    appears is shown with one empty text/plain part, and has no part 1 to fetch."""
    raw = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n"
    a = analyze(raw)
    assert a.body == b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) "MIXED")'
    check_wire(a)
    assert section(raw, a.parts, (1,), "") == b""


def test_message_global_is_basic_in_structure_but_nests_sections() -> None:
    """message/global is a basic body for IMAP4rev1 clients (no envelope), while its part
    numbers reach into the encapsulated message as RFC 9051 §6.4.5 describes."""
    raw = (
        b"Content-Type: multipart/mixed; boundary=g\r\n\r\n--g\r\n"
        b"Content-Type: message/global\r\n\r\nFrom: a@b\r\nSubject: global\r\n\r\ny\r\n--g--\r\n"
    )
    a = analyze(raw)
    assert a.body == b'(("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 31) "MIXED")'
    assert section(raw, a.parts, (1,), "HEADER") == b"From: a@b\r\nSubject: global\r\n\r\n"
    assert section(raw, a.parts, (1, 1), "") == b"y"


def test_sent_date_variants() -> None:
    """An unparseable Date gives None; "-0000" (unknown zone, RFC 5322 §3.3) is taken as
    UTC so the result is always aware."""
    assert analyze(b"Date: not a date\r\n\r\n").sent_date is None
    got = analyze(b"Date: 1 Jan 2024 10:00:00 -0000\r\n\r\n").sent_date
    assert got == datetime.datetime(2024, 1, 1, 10, 0, tzinfo=datetime.UTC)


def test_headers_keep_order_duplicates_and_lower_case_names() -> None:
    """headers lists every top-level field, duplicates kept, folded values unfolded, an 8-bit
    Latin-1 byte decoded rather than dropped."""
    a = analyze(fixture("received.eml"))
    assert [name for name, _ in a.headers] == [
        "received",
        "received",
        "received",
        "from",
        "x-latin",
        "subject",
    ]
    assert a.headers[1][1] == "from c.example\tby d.example; Mon, 1 Jan 2024 00:00:02 +0000"
    assert dict(a.headers)["x-latin"] == "café"


def test_html_text_is_searchable_without_markup() -> None:
    """text/html contributes its text content (tags removed, entities decoded)."""
    msg = email.message.EmailMessage()
    msg["Subject"] = "html"
    msg.set_content("<html><body><p>Caf&eacute; <b>menu</b></p></body></html>", subtype="html")
    assert "Café  menu" in analyze(msg.as_bytes()).text


def test_text_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search text never exceeds MAX_TEXT_CHARS, whatever the body size."""
    monkeypatch.setattr(search_text, "MAX_TEXT_CHARS", 100)
    raw = b"Subject: big\r\n\r\n" + b"x" * 10_000
    assert analyze(raw).text == "x" * 100


def test_base64_and_charset_decoding_of_text_parts() -> None:
    """A base64 ISO-8859-1 text part built with the email package decodes to the same text;
    an unknown charset falls back to UTF-8 with replacement instead of failing."""
    msg = email.message.EmailMessage()
    msg["Subject"] = "b64"
    msg.set_content("Ça coûte 5 €?".replace("€", "E"), charset="iso-8859-1", cte="base64")
    assert analyze(msg.as_bytes()).text.strip() == "Ça coûte 5 E?"
    raw = b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nabc\xff"
    assert analyze(raw).text == "abc\ufffd"


# --------------------------------------------------------------------------------------------
# section()


def test_sections_of_the_whole_message() -> None:
    """BODY[], BODY[HEADER] (with the empty line), BODY[TEXT]; MIME of the whole message does
    not exist (RFC 3501 §6.4.5)."""
    raw = fixture("plain.eml")
    a = analyze(raw)
    head, sep, text = raw.partition(b"\r\n\r\n")
    assert section(raw, a.parts, (), "") == raw
    assert section(raw, a.parts, (), "HEADER") == head + sep
    assert section(raw, a.parts, (), "TEXT") == text
    assert section(raw, a.parts, (), "MIME") == b""


def test_non_multipart_message_has_only_part_one() -> None:
    """Part 1 of a non-multipart message is its body and 1.MIME its header; there is no part
    2, no 1.1 and no 1.HEADER, since part 1 is not message/rfc822 (RFC 3501 §6.4.5)."""
    raw = fixture("plain.eml")
    a = analyze(raw)
    head, sep, text = raw.partition(b"\r\n\r\n")
    assert section(raw, a.parts, (1,), "") == text
    assert section(raw, a.parts, (1,), "MIME") == head + sep
    for part, kind in [((2,), ""), ((1, 1), ""), ((1,), "HEADER"), ((1,), "TEXT"), ((0,), "")]:
        assert section(raw, a.parts, part, kind) == b""


def test_header_sections_are_byte_exact_with_duplicates_odd_case_and_8bit() -> None:
    """HEADER returns the stored bytes; HEADER.FIELDS matches names case-insensitively and keeps
    each field's original case, folding, order and duplicates, then CRLF; HEADER.FIELDS.NOT
    keeps the rest, 8-bit byte included."""
    raw = fixture("received.eml")
    a = analyze(raw)
    received = (
        b"Received: from a.example by b.example; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
        b"RECEIVED: from c.example\r\n\tby d.example; Mon, 1 Jan 2024 00:00:02 +0000\r\n"
        b"received: from e.example by f.example;\r\n Mon, 1 Jan 2024 00:00:03 +0000\r\n"
    )
    rest = b"From: someone@example.com\r\nX-Latin: caf\xe9\r\nSubject: dup\r\n"
    assert section(raw, a.parts, (), "HEADER") == received + rest + b"\r\n"
    assert section(raw, a.parts, (), "HEADER.FIELDS", ("RECEIVED",)) == received + b"\r\n"
    assert (
        section(raw, a.parts, (), "HEADER.FIELDS", ("SUBJECT", "X-LATIN"))
        == b"X-Latin: caf\xe9\r\nSubject: dup\r\n\r\n"
    )
    assert section(raw, a.parts, (), "HEADER.FIELDS.NOT", ("RECEIVED",)) == rest + b"\r\n"
    assert section(raw, a.parts, (), "HEADER.FIELDS", ("NO-SUCH",)) == b"\r\n"


def test_sections_of_nested_multiparts() -> None:
    """N.M numbers walk nested multiparts; MIME is each part's own header; a multipart part's
    body is its whole body, delimiters included."""
    raw = fixture("nested.eml")
    a = analyze(raw)
    assert section(raw, a.parts, (1, 1), "") == b"plain body"
    assert section(raw, a.parts, (1, 1), "MIME") == b"Content-Type: text/plain\r\n\r\n"
    assert section(raw, a.parts, (1, 2, 1), "") == b"<b>html</b>"
    assert section(raw, a.parts, (1, 2, 2), "") == b"R0lGODlhAQABAAAAACw="
    assert section(raw, a.parts, (1, 2, 2), "MIME") == (
        b"Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-ID: <img1>\r\n\r\n"
    )
    assert section(raw, a.parts, (2,), "") == b"note"
    related = section(raw, a.parts, (1, 2), "")
    assert related.startswith(b"--rel\r\n") and related.endswith(b"--rel--\r\n")
    assert section(raw, a.parts, (1, 3), "") == b""
    # A leaf's only sub-part is 1, itself, once (Dovecot's numbering, see resolve_node).
    assert section(raw, a.parts, (2, 1), "") == b"note"
    assert section(raw, a.parts, (2, 1, 1), "") == b""
    assert section(raw, a.parts, (2, 2), "") == b""
    assert section(raw, a.parts, (1, 2, 1), "HEADER") == b""


def test_mime_plus_body_reproduces_the_part_slice() -> None:
    """For every part, MIME header + body is exactly the text between its delimiter line and
    the CRLF of the next delimiter (RFC 2046 §5.1.1)."""
    raw = fixture("nested.eml")
    a = analyze(raw)
    slices = {
        (1,): b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n',
        (1, 2, 2): b"Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-ID: <img1>\r\n\r\nR0lGODlhAQABAAAAACw=",
        (2,): b"Content-Type: text/x-note; charset=us-ascii\r\n"
        b"Content-Disposition: inline\r\n\r\nnote",
    }
    for part, expected_start in slices.items():
        whole = section(raw, a.parts, part, "MIME") + section(raw, a.parts, part, "")
        assert whole.startswith(expected_start)
        at = raw.index(whole)
        assert raw[at - 2 : at] == b"\r\n" and raw[at + len(whole) : at + len(whole) + 4] == (
            b"\r\n--"
        )


def test_sections_of_a_message_rfc822_part() -> None:
    """N.HEADER, N.TEXT and N.HEADER.FIELDS apply to the encapsulated message; N.M addresses
    its body parts (RFC 3501 §6.4.5)."""
    raw = fixture("forward.eml")
    a = analyze(raw)
    header = section(raw, a.parts, (2,), "HEADER")
    assert header.startswith(b"From: Inner Sender") and header.endswith(b'"in"\r\n\r\n')
    assert section(raw, a.parts, (2,), "TEXT").startswith(b"--in\r\n")
    assert section(raw, a.parts, (2,), "TEXT").endswith(b"JVBERi0=\r\n--in--")
    assert section(raw, a.parts, (2,), "") == header + section(raw, a.parts, (2,), "TEXT")
    assert section(raw, a.parts, (2,), "MIME") == (
        b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
    )
    assert (
        section(raw, a.parts, (2,), "HEADER.FIELDS", ("SUBJECT", "TO"))
        == b"To: orig@example.org\r\nSubject: inner\r\n\r\n"
    )
    assert section(raw, a.parts, (2, 1), "") == b"inner text"
    assert section(raw, a.parts, (2, 2), "") == b"JVBERi0="
    assert section(raw, a.parts, (2, 2), "MIME").startswith(b"Content-Type: application/pdf")
    assert section(raw, a.parts, (2, 3), "") == b""
    assert section(raw, a.parts, (1,), "HEADER") == b""


def test_encapsulated_non_multipart_message_part_one_is_its_body() -> None:
    """Below a message/rfc822 whose message is not multipart, N.1 is that message's body and
    N.1.MIME its header."""
    raw = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nhello\r\n"
    a = analyze(raw)
    assert section(raw, a.parts, (1,), "HEADER") == b"Subject: in\r\n\r\n"
    assert section(raw, a.parts, (1, 1), "") == b"hello\r\n"
    assert section(raw, a.parts, (1, 1), "MIME") == b"Subject: in\r\n\r\n"
    assert section(raw, a.parts, (1, 2), "") == b""
    assert section(raw, a.parts, (1, 1, 1), "") == b""  # 1.1 already named that body


def test_bare_lf_message_is_served_as_stored() -> None:
    """With bare LF line ends the split, delimiters and sections still work, and the bytes
    served (and sizes reported) are the stored ones."""
    raw = fixture("barelf.eml")
    a = analyze(raw)
    assert b"\r" not in raw
    assert section(raw, a.parts, (1,), "") == b"line one\nline two"
    assert section(raw, a.parts, (1,), "MIME") == b"Content-Type: text/plain\n\n"
    assert section(raw, a.parts, (2,), "") == b"second"
    assert section(raw, a.parts, (), "HEADER").endswith(b"boundary=lf\n\n")
    assert section(raw, a.parts, (), "HEADER.FIELDS", ("SUBJECT",)) == b"Subject: bare LF\n\r\n"
    assert a.body == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 17 1)'
        b'("TEXT" "PLAIN" ("NAME" "b.txt" "CHARSET" "US-ASCII") NIL NIL "7BIT" 6 0) "MIXED")'
    )
    assert a.text == "line one\nline two\nsecond"


def test_header_only_message() -> None:
    """A message with no empty line is all header: TEXT and part 1 are empty, and
    HEADER.FIELDS still ends each field with CRLF."""
    raw = b"Subject: hdr only"
    a = analyze(raw)
    assert section(raw, a.parts, (), "HEADER") == raw
    assert section(raw, a.parts, (), "TEXT") == b""
    assert section(raw, a.parts, (), "HEADER.FIELDS", ("SUBJECT",)) == raw + b"\r\n\r\n"
    assert a.body == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'


# --------------------------------------------------------------------------------------------
# Limits


def test_deep_nesting_is_cut_at_max_nesting() -> None:
    """Nesting deeper than MAX_NESTING becomes an opaque application/octet-stream leaf, so a
    hostile message cannot exhaust the stack; the wire forms stay grammatical."""
    depth = structure.MAX_NESTING + 30
    raw = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    raw += b"\r\nleaf\r\n" + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    a = analyze(raw)
    shape = check_wire(a)
    levels = 0
    while isinstance(shape, tuple):
        shape = shape[1][0]
        levels += 1
    assert levels == structure.MAX_NESTING
    assert a.body.count(b'"APPLICATION" "OCTET-STREAM"') == 1


def test_part_count_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PARTS entities, remaining delimiters stay inside the last part."""
    monkeypatch.setattr(structure, "MAX_PARTS", 10)
    raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
    raw += b"".join(b"--x\r\n\r\npart %d\r\n" % i for i in range(50)) + b"--x--\r\n"
    a = analyze(raw)
    shape = check_wire(a)
    assert isinstance(shape, tuple) and len(shape[1]) == 9
    assert section(raw, a.parts, (9,), "").startswith(b"part 8\r\n--x\r\n")


def test_many_parts_and_long_lines_are_analysed() -> None:
    """Inputs that a quadratic scanner would choke on (thousands of near-miss delimiters, a
    megabyte without a line end) are analysed whole."""
    near_misses = b"x--b\r\n--bb\r\n" * 20_000
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + near_misses + b"--b--"
    a = analyze(raw)
    assert section(raw, a.parts, (1,), "") == near_misses[:-2]
    raw = b"To: " + b"a" * 1_000_000 + b"\r\n\r\n" + b"--" * 100_000
    check_wire(analyze(raw))


# --------------------------------------------------------------------------------------------
# Properties


SECTION_KINDS = ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT")
part_numbers = st.lists(st.integers(min_value=0, max_value=4), max_size=4).map(tuple)


def check_sections(raw: bytes, parts: str, paths: list[tuple[int, ...]]) -> None:
    for part in paths:
        for kind in SECTION_KINDS:
            got = section(raw, parts, part, kind, ("SUBJECT", "FROM"))
            assert isinstance(got, bytes)
            if kind in ("", "HEADER", "TEXT", "MIME"):
                assert got in raw


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=3000), paths=st.lists(part_numbers, max_size=6))
def test_arbitrary_bytes_never_raise_and_stay_grammatical(
    raw: bytes, paths: list[tuple[int, ...]]
) -> None:
    """analyze() and section() accept any bytes; the wire forms always parse."""
    a = analyze(raw)
    check_wire(a)
    assert len(a.text) <= search_text.MAX_TEXT_CHARS
    check_sections(raw, a.parts, paths)


HEADERISH = st.sampled_from(
    [
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b"--",
        b":",
        b";",
        b'"',
        b"(",
        b")",
        b"<",
        b">",
        b"@",
        b",",
        b"=?utf-8?q?",
        b"?=",
        b"\\",
        b"\x00",
        b"\xff",
        b" ",
        b"Content-Type: multipart/mixed; boundary=fw\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"--fw\r\n",
        b"--in--",
        b"*0*=utf-8''%E2",
    ]
)


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> bytes:
    raw = bytearray(fixture(draw(st.sampled_from(sorted(p.name for p in FIXTURES.glob("*.eml"))))))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            raw[at:at] = draw(HEADERISH)
        elif op == "delete":
            del raw[at : at + draw(st.integers(min_value=1, max_value=40))]
        else:
            raw[at : at + 1] = bytes([draw(st.integers(min_value=0, max_value=255))])
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated_fixtures(), paths=st.lists(part_numbers, max_size=8))
def test_mutated_real_messages_never_raise_and_stay_grammatical(
    raw: bytes, paths: list[tuple[int, ...]]
) -> None:
    """Damaged versions of the fixtures (cut, spliced, bad bytes) analyse without error."""
    a = analyze(raw)
    check_wire(a)
    check_sections(raw, a.parts, paths)


# A generated MIME tree, serialised with known offsets, must be found again part for part.


@dataclass(frozen=True)
class Leaf:
    ctype: bytes | None
    body: bytes


@dataclass(frozen=True)
class Multi:
    subtype: bytes
    children: tuple[object, ...]


@dataclass(frozen=True)
class Msg:
    inner: object


def shape_of(node: object) -> object:
    if isinstance(node, Multi):
        return ("M", [shape_of(c) for c in node.children])
    if isinstance(node, Msg):
        return ("R", shape_of(node.inner))
    return "L"


def serialise(node: object, eol: bytes, depth: int, extra: bytes = b"") -> tuple:
    """(header, body, sub) where sub lists (node, header, body, sub) of nested entities."""
    if isinstance(node, Leaf):
        ct = b"Content-Type: " + node.ctype + eol if node.ctype else b""
        return extra + ct + eol, node.body, []
    if isinstance(node, Multi):
        boundary = b"=_b%dx" % depth
        header = extra + b'Content-Type: multipart/%s; boundary="%s"' % (node.subtype, boundary)
        body = b"preamble" + eol
        sub = []
        for child in node.children:
            h, b, s = serialise(child, eol, depth + 1)
            sub.append((child, h, b, s))
            body += b"--" + boundary + eol + h + b + eol
        body += b"--" + boundary + b"--" + eol + b"epilogue"
        return header + eol + eol, body, sub
    assert isinstance(node, Msg)
    h, b, s = serialise(node.inner, eol, depth + 1, extra=b"Subject: inner" + eol)
    return extra + b"Content-Type: message/rfc822" + eol + eol, h + b, [(node.inner, h, b, s)]


def expected_sections(node: object, header: bytes, body: bytes, sub: list, path: tuple) -> dict:
    """path → (MIME header, body, (HEADER, TEXT) or None), numbered as RFC 3501 §6.4.5."""
    out = {path: (header, body, None)}
    if isinstance(node, Multi):
        for i, (child, h, b, s) in enumerate(sub):
            out.update(expected_sections(child, h, b, s, path + (i + 1,)))
    elif isinstance(node, Msg):
        inner, h, b, s = sub[0]
        out[path] = (header, body, (h, b))
        out.update(enter_message(inner, h, b, s, path))
    return out


def enter_message(node: object, header: bytes, body: bytes, sub: list, path: tuple) -> dict:
    if isinstance(node, Multi):
        out = {}
        for i, (child, h, b, s) in enumerate(sub):
            out.update(expected_sections(child, h, b, s, path + (i + 1,)))
        return out
    return expected_sections(node, header, body, sub, path + (1,))


def leaves(eol: bytes) -> st.SearchStrategy[Leaf]:
    alphabet = b"ab z=\t\n" + (b"\r" if eol == b"\r\n" else b"")
    body = st.lists(st.sampled_from(list(alphabet)), max_size=40).map(bytes)
    ctype = st.sampled_from(
        [None, b"text/plain", b"text/html; charset=utf-8", b"image/png", b"application/x-y"]
    )
    return st.builds(Leaf, ctype, body)


@st.composite
def mime_messages(draw: st.DrawFn) -> tuple[bytes, object, dict]:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    tree = draw(
        st.recursive(
            leaves(eol),
            lambda kids: st.one_of(
                st.builds(
                    Multi,
                    st.sampled_from([b"mixed", b"alternative", b"related"]),
                    st.lists(kids, min_size=1, max_size=4).map(tuple),
                ),
                st.builds(Msg, kids),
            ),
            max_leaves=12,
        )
    )
    header, body, sub = serialise(tree, eol, 0, extra=b"From: a@b" + eol)
    return header + body, tree, enter_message(tree, header, body, sub, ())


@settings(max_examples=200, deadline=None)
@given(generated=mime_messages())
def test_generated_mime_trees_are_found_part_for_part(generated: tuple) -> None:
    """For any tree of multiparts, message/rfc822 parts and leaves, serialised with either
    line end: BODYSTRUCTURE has the tree's shape, and every part number yields exactly that
    part's MIME header and body (and HEADER/TEXT of encapsulated messages)."""
    raw, tree, expected = generated
    a = analyze(raw)
    assert check_wire(a) == shape_of(tree)
    for path, (header, body, message) in expected.items():
        assert section(raw, a.parts, path, "MIME") == header
        assert section(raw, a.parts, path, "") == body
        if message is not None:
            assert section(raw, a.parts, path, "HEADER") == message[0]
            assert section(raw, a.parts, path, "TEXT") == message[1]
