"""The ManageSieve parser (RFC 5804 §4): every fixture parsed whole and one byte at a
time, string round trips, and each limit at its edge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.managesieve.parser import (
    MAX_QUOTED_LENGTH,
    NEED_DATA,
    NUMBER_MAX,
    Command,
    CommandParser,
    Event,
    FloodedLiteral,
    LineTooLong,
    LiteralTooLarge,
    StringResponse,
    SyntaxProblem,
    UnknownCommand,
)
from gateway.managesieve.wire import quoted, string_c2s


def events(data: bytes, *, split: bool = False, **limits: int) -> list[Event]:
    """All events for ``data``, fed whole or one byte at a time."""
    parser = CommandParser(**limits)
    out: list[Event] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)
    return out


FIXTURES: list[tuple[bytes, list[Event]]] = [
    (b"CAPABILITY\r\n", [Command("CAPABILITY")]),
    (b"capability\r\n", [Command("CAPABILITY")]),
    (b"LOGOUT\n", [Command("LOGOUT")]),  # a bare LF is tolerated
    (b'AUTHENTICATE "PLAIN"\r\n', [Command("AUTHENTICATE", (b"PLAIN",))]),
    (b'AUTHENTICATE "PLAIN" {4+}\r\nAGFi\r\n', [Command("AUTHENTICATE", (b"PLAIN", b"AGFi"))]),
    (b'PUTSCRIPT "a" {5+}\r\nkeep;\r\n', [Command("PUTSCRIPT", (b"a", b"keep;"))]),
    # {n} is framed like {n+}: the octets follow at once (no continuation exists)
    (b'PUTSCRIPT "a" {5}\r\nkeep;\r\n', [Command("PUTSCRIPT", (b"a", b"keep;"))]),
    (b"PUTSCRIPT {1+}\r\na {2+}\r\n\r\n\r\n", [Command("PUTSCRIPT", (b"a", b"\r\n"))]),
    (b'HAVESPACE "x" 4294967295\r\n', [Command("HAVESPACE", (b"x", NUMBER_MAX))]),
    (b'NOOP "a\\"b\\\\c"\r\n', [Command("NOOP", (b'a"b\\c',))]),
    (b"NOOP\r\n\r\nNOOP\r\n", [Command("NOOP"), Command("NOOP")]),
    ('SETACTIVE "réglès"\r\n'.encode(), [Command("SETACTIVE", ("réglès".encode(),))]),
    (b'SETACTIVE ""\r\n', [Command("SETACTIVE", (b"",))]),
    (b'RENAMESCRIPT "a" "b"\r\n', [Command("RENAMESCRIPT", (b"a", b"b"))]),
    (b"FROB\r\nNOOP\r\n", [UnknownCommand("unknown command", "FROB"), Command("NOOP")]),
    (b"LISTSCRIPTS extra\r\n", [SyntaxProblem("expected a string or a number", "LISTSCRIPTS")]),
    (b'LISTSCRIPTS "x"\r\n', [SyntaxProblem("LISTSCRIPTS: too many arguments", "LISTSCRIPTS")]),
    (b"GETSCRIPT\r\n", [SyntaxProblem("GETSCRIPT: missing arguments", "GETSCRIPT")]),
    (b'HAVESPACE "x" "1"\r\n', [SyntaxProblem("HAVESPACE: expected a number", "HAVESPACE")]),
    (b'HAVESPACE "x" 4294967296\r\n', [SyntaxProblem("number too large", "HAVESPACE")]),
    (b'GETSCRIPT  "a"\r\n', [SyntaxProblem("expected a string or a number", "GETSCRIPT")]),
    (b'GETSCRIPT "a\\n"\r\n', [SyntaxProblem("bad quoted string", "GETSCRIPT")]),
    (
        b'GETSCRIPT "a\r\nNOOP\r\n',
        [SyntaxProblem("bad quoted string", "GETSCRIPT"), Command("NOOP")],
    ),
]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("data", "expected"), FIXTURES, ids=[repr(f[0])[:40] for f in FIXTURES])
def test_fixture(data: bytes, expected: list[Event], split: bool) -> None:
    """Each fixture gives the same events whether it arrives whole or byte by byte."""
    assert events(data, split=split) == expected


def test_a_syntax_error_inside_a_literal_command_does_not_desynchronise() -> None:
    """The whole command, literal included, is consumed before it is judged: the
    literal's octets (which look like a command) are never read as one."""
    data = b'GETSCRIPT {8+}\r\nLOGOUT\r\n "x"\r\nNOOP\r\n'
    assert events(data) == [
        SyntaxProblem("GETSCRIPT: too many arguments", "GETSCRIPT"),
        Command("NOOP"),
    ]


def test_string_response_mode_reads_one_string() -> None:
    """RFC 5804 §2.1: the answer to a SASL challenge is a bare string line."""
    parser = CommandParser()
    parser.expect_string()
    parser.receive_data(b"{4+}\r\nAGFi\r\nNOOP\r\n")
    assert parser.next_event() == StringResponse(b"AGFi")
    assert parser.next_event() == Command("NOOP")
    parser.expect_string()
    parser.receive_data(b'"*"\r\n')
    assert parser.next_event() == StringResponse(b"*")
    parser.expect_string()
    parser.receive_data(b"NOOP\r\n")
    assert isinstance(parser.next_event(), SyntaxProblem)


# ---- limits at their edges --------------------------------------------------------------


def test_line_length_limit_edge() -> None:
    """A line of exactly max_line_length octets is parsed; one more is fatal, whether
    or not its end has arrived."""
    limit = 64
    ok = b'NOOP "' + b"x" * (limit - 7) + b'"'
    assert len(ok) == limit
    assert events(ok + b"\r\n", max_line_length=limit) == [Command("NOOP", (b"x" * (limit - 7),))]
    long = ok + b"x"
    for data in (long + b"\r\n", long + b"yy"):
        result = events(data, max_line_length=limit)
        assert len(result) == 1 and isinstance(result[0], LineTooLong) and result[0].fatal


def test_literal_size_limit_edge_and_skip() -> None:
    """A literal of exactly max_literal_size is kept; one octet more is skipped whole and
    the command refused (not fatal), and the next command is read normally."""
    limit = 100
    exact = b'PUTSCRIPT "s" {100+}\r\n' + b"#" * 100 + b"\r\n"
    assert events(exact, max_literal_size=limit) == [Command("PUTSCRIPT", (b"s", b"#" * 100))]
    over = b'PUTSCRIPT "s" {101+}\r\n' + b"#" * 101 + b"\r\nNOOP\r\n"
    for split in (False, True):
        result = events(over, split=split, max_literal_size=limit)
        assert result[1] == Command("NOOP")
        error = result[0]
        assert isinstance(error, LiteralTooLarge) and not error.fatal
        assert (error.command, error.size, error.limit) == ("PUTSCRIPT", 101, 100)


def test_literal_beyond_the_discard_limit_is_fatal() -> None:
    """A literal larger than even max_discard_size ends the connection at once."""
    result = events(b'PUTSCRIPT "s" {1001+}\r\n', max_literal_size=10, max_discard_size=1000)
    assert len(result) == 1 and isinstance(result[0], FloodedLiteral) and result[0].fatal
    assert (
        events(
            b'PUTSCRIPT "s" {1000+}\r\n' + b"x" * 1000 + b"\r\n",
            max_literal_size=10,
            max_discard_size=1000,
        )[0].command
        == "PUTSCRIPT"
    )


def test_quoted_string_length_edge() -> None:
    """RFC 5804 §4: at most 1024 octets between the quotes."""
    ok = b"a" * MAX_QUOTED_LENGTH
    assert events(b'NOOP "' + ok + b'"\r\n') == [Command("NOOP", (ok,))]
    assert isinstance(events(b'NOOP "' + ok + b'a"\r\n')[0], SyntaxProblem)


def test_third_literal_in_one_command_is_refused() -> None:
    """No command has more than two strings: a third literal is skipped and refused."""
    data = b"RENAMESCRIPT {1+}\r\na {1+}\r\nb {1+}\r\nc\r\nNOOP\r\n"
    result = events(data)
    assert isinstance(result[0], LiteralTooLarge) and result[1] == Command("NOOP")


def test_parser_memory_stays_bounded_under_a_long_line() -> None:
    """Bytes without a line end stop being collected at the line limit."""
    parser = CommandParser(max_line_length=100)
    parser.receive_data(b"N" * 1000)
    assert isinstance(parser.next_event(), LineTooLong)
    parser.receive_data(b"x" * 1000)
    assert parser.failed and parser.buffered_size == 0


# ---- round trips ------------------------------------------------------------------------


@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_string_round_trip(value: bytes, literal: bool, split: bool) -> None:
    """parse(serialize(x)) == x for any octets sent as a literal, and for any quotable
    value sent quoted."""
    if not literal and (b"\r" in value or b"\n" in value or b"\0" in value):
        literal = True
    data = b"NOOP " + string_c2s(value, literal=literal) + b"\r\n"
    assert events(data, split=split) == [Command("NOOP", (value,))]


@given(st.text(max_size=200).map(lambda t: t.encode("utf-8")))
def test_quoted_escapes_round_trip(value: bytes) -> None:
    """Quotes and backslashes survive escaping."""
    if b"\r" in value or b"\n" in value or b"\0" in value:
        return
    assert events(b"SETACTIVE " + quoted(value) + b"\r\n") == [Command("SETACTIVE", (value,))]


@given(
    st.lists(
        st.sampled_from(
            [
                b"NOOP\r\n",
                b'NOOP "t"\r\n',
                b"PUTSCRIPT {1+}\r\na {0+}\r\n\r\n",
                b"BOGUS x\r\n",
                b'HAVESPACE "n" 7\r\n',
            ]
        ),
        max_size=8,
    )
)
def test_pipelined_commands_split_anywhere(commands: list[bytes]) -> None:
    """Pipelined commands give the same events however the stream is chunked."""
    data = b"".join(commands)
    assert events(data) == events(data, split=True)
    assert len(events(data)) == len(commands)
