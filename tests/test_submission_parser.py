"""The submission parser (gateway/submission/parser.py): fixtures fed whole and one byte
at a time, dot-unstuffing, the CRLF.CRLF rule (no smuggling), limits at their edges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.submission.client import dot_stuff
from gateway.submission.parser import (
    MAX_PARTIAL_LINE,
    Line,
    LineTooLong,
    MessageData,
    MessageTooLarge,
    NeedData,
    SMTPParser,
    normalize_line_ends,
)


def events(parser: SMTPParser, data: bytes, bytewise: bool) -> list[object]:
    out: list[object] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.receive_data(chunk)
        while not isinstance(event := parser.next_event(), NeedData):
            out.append(event)
            if isinstance(event, Line) and event.text == b"DATA":
                parser.expect_data(1000)
    return out


@pytest.mark.parametrize("bytewise", [False, True])
def test_commands_then_a_message_then_pipelined_commands(bytewise: bool) -> None:
    wire = (
        b"EHLO client\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n"
        b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n"
    )
    assert events(SMTPParser(), wire, bytewise) == [
        Line(b"EHLO client"),
        Line(b"MAIL FROM:<a@b.example>"),
        Line(b"DATA"),
        MessageData(b"Subject: x\r\n\r\n.leading dot\r\n"),
        Line(b"QUIT"),
    ]


@pytest.mark.parametrize("bytewise", [False, True])
def test_an_empty_message_and_a_lone_lf_command(bytewise: bool) -> None:
    assert events(SMTPParser(), b"DATA\n.\r\nNOOP\n", bytewise) == [
        Line(b"DATA"),
        MessageData(b""),
        Line(b"NOOP"),
    ]


@pytest.mark.parametrize("bytewise", [False, True])
def test_bare_lf_dot_does_not_end_the_message_and_is_normalized(bytewise: bool) -> None:
    """SMTP smuggling: only CRLF.CRLF ends DATA; bare LF/CR become CRLF afterwards,
    so the relayed copy cannot be cut differently by the next server."""
    wire = b"DATA\r\na\n.\nMAIL FROM:<x@y.example>\r\nb\r.\r\n\r\n.\r\n"
    got = events(SMTPParser(), wire, bytewise)
    assert got == [
        Line(b"DATA"),
        MessageData(b"a\r\n.\r\nMAIL FROM:<x@y.example>\r\nb\r\n.\r\n\r\n"),
    ]


def test_line_limit_edge_and_resync() -> None:
    parser = SMTPParser(max_line=10)
    assert events(parser, b"0123456789\r\n01234567890\r\nNOOP\r\n", False) == [
        Line(b"0123456789"),
        LineTooLong(),
        Line(b"NOOP"),
    ]
    parser = SMTPParser(max_line=10)  # a huge line arriving in pieces is discarded as it goes
    parser.receive_data(b"x" * 100)
    assert isinstance(parser.next_event(), NeedData) and parser.buffered_size <= 1
    parser.receive_data(b"x" * 100 + b"\r\nQUIT\r\n")
    assert parser.next_event() == LineTooLong()
    assert parser.next_event() == Line(b"QUIT")


@pytest.mark.parametrize("bytewise", [False, True])
def test_size_limit_edge(bytewise: bool) -> None:
    body = b"x" * 998 + b"\r\n"  # 1000 octets: at the limit
    assert events(SMTPParser(), b"DATA\r\n" + body + b".\r\n", bytewise)[1] == MessageData(body)
    over = b"x" * 999 + b"\r\n"
    assert events(SMTPParser(), b"DATA\r\n" + over + b".\r\nNOOP\r\n", bytewise)[1:] == [
        MessageTooLarge(1001),
        Line(b"NOOP"),
    ]


def test_a_line_without_crlf_does_not_grow_the_buffer() -> None:
    parser = SMTPParser()
    parser.expect_data(10 * MAX_PARTIAL_LINE)
    for _ in range(20):
        parser.receive_data(b"y" * MAX_PARTIAL_LINE)
        assert isinstance(parser.next_event(), NeedData)
        assert parser.buffered_size <= MAX_PARTIAL_LINE + 1
    parser.receive_data(b"\r\n.\r\n")
    assert parser.next_event() == MessageTooLarge(20 * MAX_PARTIAL_LINE + 2)


def test_a_dot_line_split_across_a_partial_flush_is_unstuffed() -> None:
    parser = SMTPParser()
    parser.expect_data(10 * MAX_PARTIAL_LINE)
    parser.receive_data(b"z" * (MAX_PARTIAL_LINE + 5) + b"\r")
    assert isinstance(parser.next_event(), NeedData)
    parser.receive_data(b"\n..x\r\n.\r\n")
    assert parser.next_event() == MessageData(b"z" * (MAX_PARTIAL_LINE + 5) + b"\r\n.x\r\n")


def test_normalize_line_ends() -> None:
    assert normalize_line_ends(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert normalize_line_ends(b"") == b""


lines = st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))


@given(lines, st.integers(min_value=1, max_value=7))
def test_dot_stuffing_round_trips_in_any_chunking(body_lines: list[bytes], step: int) -> None:
    """What the relay client sends (dot_stuff) is what the server's parser gives back,
    however the bytes are cut."""
    message = b"".join(line + b"\r\n" for line in body_lines)
    wire = dot_stuff(message) + b"NOOP\r\n"
    parser = SMTPParser()
    parser.expect_data(10_000)
    got: list[object] = []
    for i in range(0, len(wire), step):
        parser.receive_data(wire[i : i + step])
        while not isinstance(event := parser.next_event(), NeedData):
            got.append(event)
    assert got == [MessageData(message), Line(b"NOOP")]
