"""RETR bodies read in chunks (UpstreamClient.retrieve, gateway.pop3.framing.DotStuffedBody)
give exactly what the old line-by-line path (Twisted's AdvancedPOP3Client) gave.

Both clients are driven through a StringTransport with the same chunk splits; the old path
is Twisted's own client with the same line limit, feeding the same MessageSink the fetcher
uses, so "byte-identical" means identical stored message bytes and identical outcomes
(success, LineTooLong, still waiting). RFC 1939 §3 (multi-line responses, dot-stuffing).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail.pop3 import AdvancedPOP3Client, LineTooLong, ServerErrorResponse
from twisted.python.failure import Failure

from gateway.pop3 import spool as spool_module
from gateway.pop3.client import UpstreamClient
from gateway.pop3.errors import StepTimeout, translate_failure
from gateway.pop3.framing import MAX_LINE_LENGTH, BodyLineTooLong, DotStuffedBody
from gateway.pop3.spool import MessageSink

SMALL_LIMIT = 64
"""Line limit of the clients in the property tests, so over-long lines are cheap to make."""

NO_SIZE_LIMIT = 1 << 40

PENDING = "pending"


class SmallLimitClient(UpstreamClient):
    MAX_LENGTH = SMALL_LIMIT


class OldLinePathClient(AdvancedPOP3Client):
    """The path RETR took before: Twisted's LineOnlyReceiver, state_LONG and
    _dotUnquoter, one consumer call per line."""

    MAX_LENGTH = SMALL_LIMIT


def greeted(client: Any) -> tuple[Any, StringTransport]:
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"+OK ready\r\n")
    return client, transport


def outcome_of(d: Any) -> list[Any]:
    seen: list[Any] = []
    d.addCallbacks(lambda _: seen.append("ok"), lambda f: seen.append(f.type))
    return seen


def run_retr(client: Any, chunks: list[bytes]) -> tuple[str | type, bytes, bool]:
    """RETR 1 into a MessageSink, the response fed as ``chunks``: (outcome, bytes, dropped)."""
    client, transport = greeted(client)
    sink = MessageSink(NO_SIZE_LIMIT)
    seen = outcome_of(client.retrieve(0, consumer=sink.line))
    for chunk in chunks:
        client.dataReceived(chunk)
    result = seen[0] if seen else PENDING
    return result, sink.getvalue(), bool(transport.disconnecting)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def stuffed(lines: list[bytes]) -> bytes:
    """A well-behaved server's RETR body for these message lines (RFC 1939 §3)."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


# ---- strategies -------------------------------------------------------------------------

_special = st.sampled_from(
    [b"", b".", b"..", b"...", b".x", b"..x", b". ", b"\r", b"\n", b".\n", b"\n.", b"x\r"]
)
_random = st.binary(max_size=40)
_long = st.tuples(
    st.sampled_from([b"", b".", b".."]),
    st.integers(SMALL_LIMIT - 3, SMALL_LIMIT + 3),
    st.sampled_from([b"a", b".", b"\n", b"\r"]),
).map(lambda t: (t[0] + t[2] * t[1])[: t[1]])
_line = st.one_of(_special, _random, _long).filter(lambda line: b"\r\n" not in line)


@st.composite
def wire_and_splits(draw: Any) -> tuple[bytes, list[bytes]]:
    """A RETR answer as a server might send it (lines stuffed or sent as they are, never a
    lone "." before the end), then chunk cuts: anywhere, and at, before and after CRLFs."""
    message = draw(st.lists(_line, max_size=30))
    if draw(st.booleans()):
        wire_lines = [m for m in message if m != b"."]
    else:
        wire_lines = [b"." + m if m.startswith(b".") else m for m in message]
    # A wire line of exactly the limit whose CR ends a chunk tripped Twisted's check of its
    # unfinished buffer (test_a_line_of_exactly_the_limit_passes_wherever_the_chunk_ends).
    body = b"".join(w + b"\r\n" for w in wire_lines if len(w) != SMALL_LIMIT)
    wire = b"+OK %d octets\r\n" % len(body) + body + b".\r\n"
    crlfs = [i for i in range(len(wire)) if wire.startswith(b"\r\n", i)]
    near_crlf = st.sampled_from([i + d for i in crlfs for d in (0, 1, 2)])
    cuts = draw(st.lists(st.one_of(st.integers(0, len(wire)), near_crlf), max_size=12))
    return wire, split(wire, cuts)


# ---- byte identity with the old path ----------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_and_splits())
def test_random_bodies_in_random_chunks_match_the_old_line_path(case) -> None:
    """Same outcome and same message bytes as Twisted's line-by-line path, for lines with
    leading dots (stuffed or not), empty, bare CR/LF, around the line limit, and chunks
    cut anywhere including at every CRLF."""
    wire, chunks = case
    new = run_retr(SmallLimitClient(Clock(), "pop.example.net", 5.0), chunks)
    old = run_retr(OldLinePathClient(), chunks)
    assert new[0] == old[0]
    assert new[2] == old[2]
    if old[0] == "ok":
        assert new[1] == old[1]


@settings(max_examples=200, deadline=None)
@given(wire_and_splits())
def test_without_a_consumer_retrieve_returns_the_same_lines_as_twisted(case) -> None:
    """retrieve() with no consumer still answers the list of dot-unstuffed lines."""
    wire, chunks = case
    results = []
    for client in (SmallLimitClient(Clock(), "pop.example.net", 5.0), OldLinePathClient()):
        client, _ = greeted(client)
        got: list[Any] = []
        client.retrieve(0).addCallbacks(got.append, lambda f, got=got: got.append(f.type))
        for chunk in chunks:
            client.dataReceived(chunk)
        results.append(got)
    assert results[0] == results[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(_line.filter(lambda line: len(line) < SMALL_LIMIT), max_size=30), st.data())
def test_pieces_rebuild_the_message_and_never_split_a_line(message, data) -> None:
    """DotStuffedBody alone: every piece is whole lines, and piece + CRLF over all pieces
    is the message (each "." a server stuffed removed once), whatever the chunking."""
    wire = stuffed(message) + b".\r\nNEXT"
    chunks = split(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    body = DotStuffedBody(SMALL_LIMIT)
    pieces: list[bytes] = []
    for k, chunk in enumerate(chunks):
        piece, rest = body.feed(chunk)
        if piece is not None:
            pieces.append(piece)
        if rest is not None:
            assert rest + b"".join(chunks[k + 1 :]) == b"NEXT"
            break
    else:
        pytest.fail("the terminator was not found")
    assert b"".join(p + b"\r\n" for p in pieces) == b"".join(m + b"\r\n" for m in message)


# ---- the terminator, the empty message, leftovers ---------------------------------------


def test_the_terminator_split_at_every_position_ends_the_body_exactly_once() -> None:
    """The closing CRLF.CRLF split in two or three chunks anywhere: same bytes, the
    command completes, and the next response is read as the next response."""
    wire = b"+OK\r\n..a\r\nb\r\n\r\n.\r\n+OK done\r\n"
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1):
            client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
            sink = MessageSink(NO_SIZE_LIMIT)
            retr = outcome_of(client.retrieve(0, consumer=sink.line))
            noop = client.noop()
            noop_answer: list[bytes] = []
            noop.addCallback(noop_answer.append)
            for chunk in (wire[:i], wire[i:j], wire[j:]):
                client.dataReceived(chunk)
            assert retr == ["ok"], (i, j)
            assert sink.getvalue() == b".a\r\nb\r\n\r\n", (i, j)
            assert noop_answer == [b"done"], (i, j)
            assert transport.value() == b"RETR 1\r\nNOOP\r\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_an_empty_message_calls_the_consumer_never_and_succeeds(chunk_size: int) -> None:
    """ "+OK CRLF . CRLF" is an empty message: no consumer call, empty bytes, success."""
    wire = b"+OK 0 octets\r\n.\r\n"
    calls: list[bytes] = []
    client, _ = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    seen = outcome_of(client.retrieve(0, consumer=calls.append))
    for k in range(0, len(wire), chunk_size):
        client.dataReceived(wire[k : k + chunk_size])
    assert seen == ["ok"] and calls == []
    assert client.state == "WAITING"


def test_responses_arriving_with_the_body_are_kept_for_the_next_commands() -> None:
    """Everything after the terminator in the same chunk is the start of the next
    responses: a queued NOOP and a second RETR (whose body streams again) both complete."""
    client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    first, second = MessageSink(NO_SIZE_LIMIT), MessageSink(NO_SIZE_LIMIT)
    seen1 = outcome_of(client.retrieve(0, consumer=first.line))
    noop: list[bytes] = []
    client.noop().addCallback(noop.append)
    seen2 = outcome_of(client.retrieve(1, consumer=second.line))
    client.dataReceived(b"+OK\r\none\r\n..dot\r\n.\r\n+OK fine\r\n+OK\r\ntwo\r\n.\r\n+OK tail")
    assert seen1 == ["ok"] and seen2 == ["ok"] and noop == [b"fine"]
    assert first.getvalue() == b"one\r\n.dot\r\n"
    assert second.getvalue() == b"two\r\n"
    assert transport.value() == b"RETR 1\r\nNOOP\r\nRETR 2\r\n"
    later: list[bytes] = []
    client.noop().addCallback(later.append)
    client.dataReceived(b"\r\n")  # the unfinished line waited for its CRLF
    assert later == [b"tail"]


def test_bare_lf_stays_inside_lines_and_does_not_end_the_body() -> None:
    """As before: only CRLF separates lines, so "LF.LF" from a broken server is message
    content and only CRLF.CRLF ends it."""
    wire = b"+OK\r\na\nb\n.\nc\r\n..\r\n.\r\n"
    new = run_retr(UpstreamClient(Clock(), "pop.example.net", 5.0), [wire])
    assert new == ("ok", b"a\nb\n.\nc\r\n.\r\n", False)
    client, _ = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    seen = outcome_of(client.retrieve(0, consumer=lambda piece: None))
    client.dataReceived(b"+OK\r\na\n.\n")
    assert seen == []  # still waiting for CRLF.CRLF


def test_err_answer_fails_with_the_callers_consumer_and_the_session_goes_on() -> None:
    client, _ = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    consumer = MessageSink(NO_SIZE_LIMIT).line
    failures: list[Failure] = []
    client.retrieve(0, consumer=consumer).addErrback(failures.append)
    stat: list[Any] = []
    client.stat().addCallback(stat.append)
    client.dataReceived(b"-ERR no such message\r\n+OK 2 10\r\n")
    assert failures and failures[0].check(ServerErrorResponse)
    assert failures[0].value.args == (b"no such message",)
    assert failures[0].value.consumer is consumer
    assert stat == [(2, 10)]


def test_top_still_delivers_one_line_per_call() -> None:
    """Only RETR streams; TOP keeps Twisted's line path (the no-UIDL fallback reads it)."""
    client, _ = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    lines: list[bytes] = []
    client.retrieve(0, consumer=lines.append, lines=0)
    client.dataReceived(b"+OK\r\nSubject: a\r\n..b: c\r\n\r\n.\r\n")
    assert lines == [b"Subject: a", b".b: c", b""]


# ---- limits and the timer ---------------------------------------------------------------


def test_a_line_over_the_limit_fails_the_retr_and_drops_the_connection() -> None:
    """A line of MAX_LINE_LENGTH + 1 octets, arriving in 64 KiB chunks, fails with
    Twisted's LineTooLong (the fetcher records "line too long") and nothing reaches the
    consumer past the last whole line before it."""
    wire = b"+OK\r\nok\r\n" + b"q" * (MAX_LINE_LENGTH + 1) + b"\r\nafter\r\n.\r\n"
    chunks = split(wire, list(range(0, len(wire), 64 * 1024)))
    client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    pieces: list[bytes] = []
    failures: list[Failure] = []
    client.retrieve(0, consumer=pieces.append).addErrback(failures.append)
    for chunk in chunks:
        client.dataReceived(chunk)
    assert failures and failures[0].check(LineTooLong)
    assert translate_failure(failures[0], "h", "RETR 1").kind == "line_too_long"
    assert transport.disconnecting
    assert b"".join(pieces) == b"ok"


def test_a_line_over_the_limit_inside_one_big_chunk_is_found() -> None:
    """The limit holds for a long line between CRLFs inside a single chunk, too."""
    wire = b"+OK\r\n" + b"a\r\n" * 10 + b"z" * (MAX_LINE_LENGTH + 1) + b"\r\nb\r\n.\r\n"
    assert run_retr(UpstreamClient(Clock(), "pop.example.net", 5.0), [wire])[0] is LineTooLong


def test_a_line_of_exactly_the_limit_passes_wherever_the_chunk_ends() -> None:
    """A line of exactly MAX_LINE_LENGTH octets is allowed, also when a chunk ends between
    its CR and LF (Twisted's line reader counted that CR and dropped the connection: the
    one deliberate difference from the old path)."""
    line = b"x" * MAX_LINE_LENGTH
    wire = b"+OK\r\n" + line + b"\r\n.\r\n"
    cut = len(b"+OK\r\n" + line + b"\r")
    for chunks in ([wire], [wire[:cut], wire[cut:]]):
        assert run_retr(UpstreamClient(Clock(), "p", 5.0), chunks) == ("ok", line + b"\r\n", False)


def test_body_reader_rejects_an_unfinished_line_over_the_limit_at_once() -> None:
    body = DotStuffedBody(max_line_length=8)
    assert body.feed(b"12345678\r") == (None, None)
    with pytest.raises(BodyLineTooLong):
        DotStuffedBody(max_line_length=8).feed(b"123456789")


def test_the_step_timer_restarts_per_chunk_and_a_stall_mid_body_still_times_out() -> None:
    clock = Clock()
    client, transport = greeted(UpstreamClient(clock, "pop.example.net", 5.0))
    failures: list[Failure] = []
    client.retrieve(0, consumer=lambda piece: None).addErrback(failures.append)
    client.dataReceived(b"+OK\r\n")
    for _ in range(5):
        clock.advance(4.0)
        client.dataReceived(b"more text\r\n")
    assert not transport.disconnecting
    clock.advance(5.1)
    assert transport.disconnecting
    client.connectionLost(Failure(ConnectionError()))
    assert failures and isinstance(translate_failure(failures[0], "h", "RETR 1"), StepTimeout)


def test_a_consumer_that_drops_the_connection_gets_nothing_more(monkeypatch) -> None:
    """The fetcher's sink aborts far past max_message_size: the rest of the chunk and
    later chunks are ignored and the RETR does not complete as a success."""
    monkeypatch.setattr(spool_module, "OVERSIZE_DRAIN_LIMIT", 10)
    client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    sink = MessageSink(limit=20, on_overflow=client.abort)
    seen = outcome_of(client.retrieve(0, consumer=sink.line))
    client.dataReceived(b"+OK\r\n" + b"y" * 40 + b"\r\n")
    assert sink.oversized and not transport.disconnecting
    client.dataReceived(b"z" * 40 + b"\r\n.\r\n+OK\r\n")
    assert sink.overflowed and transport.disconnecting
    size = sink.size
    client.dataReceived(b"more\r\n.\r\n")
    assert seen == [] and sink.size == size


# ---- pipelining (RFC 2449 §6.6) ------------------------------------------------------------


def test_pipelined_retrs_go_out_at_once_and_answers_are_taken_in_order() -> None:
    """With PIPELINING announced, RETRs queued behind the one in flight are written at
    once, each exactly once; the answers (one -ERR among them) still reach the right
    consumers, and a command queued after them keeps its place."""
    client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    client.pipelining = True
    sinks = [MessageSink(NO_SIZE_LIMIT) for _ in range(3)]
    seen = [outcome_of(client.retrieve(i, consumer=s.line)) for i, s in enumerate(sinks)]
    assert transport.value() == b"RETR 1\r\nRETR 2\r\nRETR 3\r\n"
    client.dataReceived(b"+OK\r\none\r\n.\r\n-ERR gone\r\n+OK\r\n")
    assert seen[0] == ["ok"] and seen[1] == [ServerErrorResponse] and seen[2] == []
    noop: list[bytes] = []
    client.noop().addCallback(noop.append)
    assert transport.value() == b"RETR 1\r\nRETR 2\r\nRETR 3\r\n"  # NOOP waits its turn
    client.dataReceived(b"..three\r\n.\r\n+OK fine\r\n")
    assert seen[2] == ["ok"] and noop == [b"fine"]
    assert [s.getvalue() for s in sinks] == [b"one\r\n", b"", b".three\r\n"]
    assert transport.value() == b"RETR 1\r\nRETR 2\r\nRETR 3\r\nNOOP\r\n"
    more = MessageSink(NO_SIZE_LIMIT)
    last = outcome_of(client.retrieve(3, consumer=more.line))
    assert transport.value().endswith(b"NOOP\r\nRETR 4\r\n")
    client.dataReceived(b"+OK\r\nfour\r\n.\r\n")
    assert last == ["ok"] and more.getvalue() == b"four\r\n"


def test_without_pipelining_a_retr_waits_for_the_answer_before_it() -> None:
    client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    first, second = MessageSink(NO_SIZE_LIMIT), MessageSink(NO_SIZE_LIMIT)
    client.retrieve(0, consumer=first.line)
    client.retrieve(1, consumer=second.line)
    assert transport.value() == b"RETR 1\r\n"
    client.dataReceived(b"+OK\r\none\r\n.\r\n")
    assert transport.value() == b"RETR 1\r\nRETR 2\r\n"


def test_a_retr_queued_behind_an_unsent_command_is_not_sent_ahead_of_it() -> None:
    """A NOOP queued (not pipelined) behind the command in flight keeps later RETRs from
    going out early: the wire order must stay the queue's order."""
    client, transport = greeted(UpstreamClient(Clock(), "pop.example.net", 5.0))
    client.pipelining = True
    client.stat()
    client.noop()
    client.retrieve(0, consumer=MessageSink(NO_SIZE_LIMIT).line)
    assert transport.value() == b"STAT\r\n"
    client.dataReceived(b"+OK 1 5\r\n")
    assert transport.value() == b"STAT\r\nNOOP\r\n"
    client.dataReceived(b"+OK\r\n")
    assert transport.value() == b"STAT\r\nNOOP\r\nRETR 1\r\n"
