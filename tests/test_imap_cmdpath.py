"""The short paths of every command's run (issue 19): the parser's ``starved`` check
that ends a run without a parse round, and a catch-up with nothing to tell answered
without its generator. Each must leave the bytes on the wire exactly as the long path
writes them (RFC 3501 §7: the same untagged responses in the same order)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.imap import catchup
from gateway.imap.command import NEED_DATA, Command, ContinuationNeeded
from gateway.imap.framing import CommandParser
from gateway.testing.imapclient import running_server
from gateway.testing.messages import message

STREAMS = [
    b"a NOOP\r\nb CHECK\r\n",
    b"a1 APPEND INBOX {0}\r\n\r\n",
    b"a2 APPEND INBOX {0+}\r\n\r\nz NOOP\r\n",
    b"a3 APPEND INBOX {5+}\r\nhello\r\n",
    b"a4 LOGIN {5}\r\nalice {3}\r\npw!\r\n",
    b"\r\n\r\nq NOOP\n",
]


@pytest.mark.parametrize("stream", STREAMS)
def test_a_starved_parser_has_no_event_to_give(stream: bytes) -> None:
    """Fed one byte at a time: whenever ``starved`` says so, ``next_event`` has nothing
    (so the server may skip it), and the same events come out as without the check."""
    checked = CommandParser()
    plain = CommandParser()
    seen: list[object] = []
    expected: list[object] = []
    for i in range(len(stream)):
        for parser, events, use_check in ((checked, seen, True), (plain, expected, False)):
            parser.receive_data(stream[i : i + 1])
            while True:
                if use_check and parser.starved:
                    assert parser.next_event() is NEED_DATA
                    break
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                events.append(event)
    assert checked.starved and plain.next_event() is NEED_DATA
    assert [repr(e) for e in seen] == [repr(e) for e in expected]
    assert any(isinstance(e, Command) for e in seen)


def test_a_zero_length_literal_is_not_starved() -> None:
    """``{0}`` leaves a literal of nothing to finish with an empty buffer: not starved."""
    parser = CommandParser()
    parser.receive_data(b"t APPEND INBOX {0}\r\n")
    assert parser.next_event() == ContinuationNeeded(0)
    assert not parser.starved
    assert parser.next_event() is NEED_DATA  # the literal is done; its line is not
    assert parser.starved


def test_pipelined_commands_are_all_answered_in_order(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        server.append("INBOX", message("one"))
        with server.login() as client:
            client.send(b"s SELECT INBOX\r\na NOOP\r\nb CHECK\r\nc NOOP\r\n")
            replies = client.read_until_tagged("c")
    tagged = re.findall(rb"^(\w+) OK", replies, re.M)
    assert tagged == [b"s", b"a", b"b", b"c"]
    assert b"a OK NOOP completed\r\n" in replies and b"b OK CHECK completed\r\n" in replies


def _transcript(tmp_path: Path, enable: str | None) -> list[bytes]:
    """What one session hears while another changes its mailbox, command by command."""
    tmp_path.mkdir()
    with running_server(tmp_path) as server:
        for text in ("one", "two", "three"):
            server.append("INBOX", message(text))
        heard: list[bytes] = []
        with server.login() as me, server.login() as other:
            if enable is not None:
                heard.append(me.command("e", f"ENABLE {enable}"))
            heard.append(me.command("s", "SELECT INBOX"))
            other.command("o1", "SELECT INBOX")
            heard.append(me.command("n1", "NOOP"))
            other.command("o2", "STORE 1 +FLAGS (\\Flagged)")
            heard.append(me.command("n2", "NOOP"))
            heard.append(me.command("n3", "NOOP"))
            server.append("INBOX", message("four"))
            heard.append(me.command("f1", "FETCH 1 (FLAGS)"))
            other.command("o3", "STORE 2 +FLAGS (\\Deleted)")
            other.command("o4", "EXPUNGE")
            heard.append(me.command("f2", "FETCH 1 (FLAGS)"))  # the EXPUNGE waits (§7.4.1)
            heard.append(me.command("c1", "CHECK"))
            heard.append(me.command("u1", "UID FETCH 1:* (FLAGS)"))
            heard.append(me.command("n4", "NOOP"))
            other.command("o5", "STORE 1 -FLAGS (\\Flagged)")
            heard.append(me.command("x1", "UID SEARCH FLAGGED"))
            heard.append(me.command("n5", "NOOP"))
    return [re.sub(rb"UIDVALIDITY \d+", b"UIDVALIDITY v", reply) for reply in heard]


@pytest.mark.parametrize("enable", [None, "CONDSTORE", "QRESYNC"])
def test_nothing_to_tell_writes_what_the_catch_up_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enable: str | None
) -> None:
    """Differential: the same session with the short path off (every catch-up runs
    :func:`catchup.catch_up`) hears the same bytes, command for command."""
    short = _transcript(tmp_path / "short", enable)
    monkeypatch.setattr(catchup, "nothing_to_tell", lambda view, changes, allow_expunge: False)
    long = _transcript(tmp_path / "long", enable)
    assert short == long
    assert any(b"FETCH (FLAGS (\\Flagged" in reply for reply in short)
    assert any(b"EXPUNGE" in reply or b"VANISHED" in reply for reply in short)
