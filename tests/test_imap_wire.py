"""Tests for gateway.imap.wire, the response encoding helpers; where the parser reads the
same syntax, what wire writes is read back by the parser as a cross-check."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.command import Append, ContinuationNeeded, Login
from gateway.imap.framing import CommandParser
from gateway.imap.wire import (
    MAX_QUOTED_LENGTH,
    astring,
    flag_list,
    format_internaldate,
    literal,
    nstring,
    quote,
    sequence_set_text,
)


def _tz(hours: int, minutes: int = 0) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(hours=hours, minutes=minutes))


def _parse(data: bytes):
    """Parse one command, sending every literal without waiting (a test shortcut)."""
    p = CommandParser()
    p.receive_data(data)
    while True:
        event = p.next_event()
        if not isinstance(event, ContinuationNeeded):
            return event


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"abc", b'"abc"'),
        (b"", b'""'),
        (b'a"b\\c', b'"a\\"b\\\\c"'),
        (b"two words (and parens)", b'"two words (and parens)"'),
        (b"line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        (b"nul\x00", b"{4}\r\nnul\x00"),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
    ],
)
def test_quote_escapes_or_falls_back_to_a_literal(value, expected):
    assert quote(value) == expected


def test_quote_uses_a_literal_only_above_the_length_limit():
    assert quote(b"x" * MAX_QUOTED_LENGTH) == b'"' + b"x" * MAX_QUOTED_LENGTH + b'"'
    long = b"x" * (MAX_QUOTED_LENGTH + 1)
    assert quote(long) == b"{%d}\r\n" % len(long) + long


@pytest.mark.parametrize(
    "value,expected",
    [
        (b"INBOX", b"INBOX"),
        (b"a]b[c", b"a]b[c"),
        (b"Sent Items", b'"Sent Items"'),
        (b"", b'""'),
        (b"NIL", b'"NIL"'),
        (b"nil", b'"nil"'),
        (b"50%", b'"50%"'),
        (b"a*", b'"a*"'),
        (b"x{1}", b'"x{1}"'),
        (b"back\\slash", b'"back\\\\slash"'),
        (b"\xe9", b"{1}\r\n\xe9"),
    ],
)
def test_astring_is_an_atom_only_when_every_octet_allows_it(value, expected):
    assert astring(value) == expected


def test_nstring_writes_nil_for_none_and_a_string_otherwise():
    assert nstring(None) == b"NIL"
    assert nstring(b"NIL") == b'"NIL"'
    assert nstring(b"") == b'""'


def test_literal_announces_the_octet_count():
    assert literal(b"") == b"{0}\r\n"
    assert literal(b"a\r\nb") == b"{4}\r\na\r\nb"


@pytest.mark.parametrize(
    "value,expected",
    [
        (
            datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=_tz(-7)),
            b'"17-Jul-1996 02:44:25 -0700"',
        ),
        (
            datetime.datetime(2024, 2, 1, 0, 0, 0, tzinfo=_tz(5, 30)),
            b'" 1-Feb-2024 00:00:00 +0530"',
        ),
        (
            datetime.datetime(2024, 12, 9, 23, 59, 59, tzinfo=_tz(-3, -30)),
            b'" 9-Dec-2024 23:59:59 -0330"',
        ),
        (datetime.datetime(2000, 1, 31, 12, 0, 0), b'"31-Jan-2000 12:00:00 +0000"'),
        (
            datetime.datetime(2000, 1, 31, 12, 0, 0, tzinfo=datetime.UTC),
            b'"31-Jan-2000 12:00:00 +0000"',
        ),
    ],
)
def test_internaldate_has_a_space_padded_day_and_a_numeric_zone(value, expected):
    assert format_internaldate(value) == expected


def test_internaldate_month_names_do_not_depend_on_the_locale():
    months = [format_internaldate(datetime.datetime(2020, m, 10))[4:7] for m in range(1, 13)]
    assert months == [m.encode() for m in "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()]


def test_flag_list():
    assert flag_list([]) == b"()"
    assert flag_list(["\\Seen", "$Work"]) == b"(\\Seen $Work)"
    assert flag_list(iter(["\\Deleted"])) == b"(\\Deleted)"


@pytest.mark.parametrize(
    "numbers,expected",
    [
        ([1], b"1"),
        ([1, 2, 3, 5], b"1:3,5"),
        ([1, 2, 3, 5, 6, 9], b"1:3,5:6,9"),
        ([7, 3, 4, 1], b"7,3:4,1"),  # order is kept (COPYUID pairs sets element-wise)
        ([3, 2, 1], b"3,2,1"),
        ([4, 4], b"4,4"),
        (range(1, 1001), b"1:1000"),
    ],
)
def test_sequence_set_text_compresses_ascending_runs(numbers, expected):
    assert sequence_set_text(numbers) == expected


@pytest.mark.parametrize("numbers", [[], [0], [1, -1]])
def test_sequence_set_text_refuses_what_a_sequence_set_cannot_hold(numbers):
    with pytest.raises(ValueError):
        sequence_set_text(numbers)


# ---- cross-checks against the parser -------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=40), st.binary(max_size=1100))
def test_parser_reads_back_astring_and_quote(user, password):
    """Whatever wire writes, the parser reads back as the same bytes."""
    command = _parse(b"a LOGIN " + astring(user) + b" " + quote(password) + b"\r\n")
    assert command == Login(tag="a", name="LOGIN", user=user, password=password)


@settings(max_examples=300)
@given(
    st.datetimes(min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2100, 1, 1)),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_parser_reads_back_internaldate(value, offset_minutes):
    value = value.replace(
        microsecond=0, tzinfo=datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    )
    command = _parse(b"a APPEND INBOX " + format_internaldate(value) + b" {1+}\r\nx\r\n")
    assert isinstance(command, Append)
    parsed = command.messages[0].date
    assert parsed == value and parsed.utcoffset() == value.utcoffset()


@settings(max_examples=300)
@given(
    st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=30)
    | st.lists(st.integers(1, 40), min_size=1)
)
def test_sequence_set_text_denotes_exactly_the_given_numbers(numbers):
    command = _parse(b"a UID EXPUNGE " + sequence_set_text(numbers) + b"\r\n")
    covered = set()
    for low, high in command.sequence_set.resolve(largest=2**32 - 1):
        assert high - low <= len(numbers)
        covered.update(range(low, high + 1))
    assert covered == set(numbers)


def test_reply_cleaning_is_the_same_as_the_per_character_rule() -> None:
    """clean_text/clean_code became one regex pass each (the LOGIN reply's CAPABILITY code
    cost 0.3 ms per login in the storm profile); the result must not change."""
    import random

    from gateway.imap.replies import MAX_RESPONSE_TEXT, clean_code, clean_text

    def old_text(text: str) -> str:
        cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
        if len(cleaned) > MAX_RESPONSE_TEXT:
            cleaned = cleaned[: MAX_RESPONSE_TEXT - 3] + "..."
        return cleaned or "done"

    def old_code(code: str) -> str:
        return "".join(c if " " <= c <= "~" and c not in "[]" else "?" for c in code)

    rng = random.Random(19)
    alphabet = [chr(i) for i in range(300)] + ["\u202e", "\U0001f600", "[", "]"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(250)))
        assert clean_text(text) == old_text(text) and clean_code(text) == old_code(text)


def test_tagged_replies_keep_only_short_texts_in_their_cache() -> None:
    """A completion is formatted once per distinct short reply (issue 19); a text or code
    longer than MAX_RESPONSE_TEXT (it may echo client input) is formatted each time and
    never kept, and either way the bytes are the cleaned reply."""
    from gateway.imap.handler import Reply
    from gateway.imap.replies import MAX_RESPONSE_TEXT, _completion, tagged

    _completion.cache_clear()
    at_limit = "t" * MAX_RESPONSE_TEXT
    assert tagged("a1", Reply("OK", at_limit)) == b"a1 OK " + at_limit.encode() + b"\r\n"
    assert _completion.cache_info().currsize == 1
    over = at_limit + "x"
    assert tagged("a2", Reply("NO", over)) == (
        b"a2 NO " + at_limit[: MAX_RESPONSE_TEXT - 3].encode() + b"...\r\n"
    )
    assert tagged("a3", Reply("NO", "short", code="C" * (MAX_RESPONSE_TEXT + 1))).startswith(
        b"a3 NO [" + b"C" * (MAX_RESPONSE_TEXT + 1) + b"] short"
    )
    assert _completion.cache_info().currsize == 1
    assert tagged("a4", Reply("OK", at_limit)) == b"a4 OK " + at_limit.encode() + b"\r\n"
    assert _completion.cache_info().hits == 1
