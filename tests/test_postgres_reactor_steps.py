"""PostgreSQL mode answers NOOP, CHECK and IDLE on the reactor thread when the node's
change log knows the catch-up (:mod:`gateway.imap.reactorsteps`): the same bytes as the
store threads' path, no database call on the reactor, other sessions' changes still told.

A whole node runs in-process (:func:`gateway.testing.pgnode.postgres_node`) whose store
raises for a connection taken on the reactor thread and records every attempt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.imapclient import RawClient
from gateway.testing.pgnode import PGNode, postgres_node

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

USERS = {"alice": "alice-password"}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[PGNode, list[bool]]]:
    """The node, its change log trusted (the LISTEN bridge up), and a record of every
    :meth:`pin_changes` answer (True: the batch ran on the reactor thread)."""
    with postgres_node(tmp_path / "gw", users=USERS) as running:
        store = running.store
        deadline = time.monotonic() + 30
        while not store.change_logs.trusted:
            assert time.monotonic() < deadline, "the LISTEN bridge never caught up"
            time.sleep(0.05)
        pinned: list[bool] = []
        original = store.pin_changes

        def counted(*args: Any, **kwargs: Any) -> bool:
            answer = original(*args, **kwargs)
            pinned.append(answer)
            return answer

        store.pin_changes = counted
        yield running, pinned


def _client(running: PGNode) -> RawClient:
    client = RawClient(running.process.port)
    client.login("alice", USERS["alice"])
    return client


def _append(client: RawClient, tag: str, subject: str) -> bytes:
    raw = f"From: x@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    client.send(f"{tag} APPEND INBOX {{{len(raw)}}}\r\n".encode())
    assert client.read_line().startswith(b"+")
    client.send(raw + b"\r\n")
    reply = client.read_until_tagged(tag)
    assert f"{tag} OK".encode() in reply, reply
    return reply


def test_noop_and_idle_on_the_reactor_still_tell_other_sessions_changes(node: Any) -> None:
    """NOOP and IDLE of one session while another appends and stores flags: every
    change is told (EXISTS, FETCH FLAGS, in an IDLE push too), \\Recent to one session
    only, some batches ran on the reactor, and no database call was made there."""
    running, pinned = node
    writer, reader = _client(running), _client(running)
    try:
        _append(writer, "A1", "one")
        _append(writer, "A2", "two")
        assert b"* 2 EXISTS" in writer.command("W1", "SELECT INBOX")
        selected = reader.command("R1", "SELECT INBOX")
        assert b"* 2 EXISTS" in selected and b"* 0 RECENT" in selected
        for n in range(3):  # the first may read the log in; the next are answered from it
            assert reader.command(f"N{n}", "NOOP") == f"N{n} OK NOOP completed\r\n".encode()
        assert reader.command("C1", "CHECK") == b"C1 OK CHECK completed\r\n"
        assert True in pinned
        stored = writer.command("W2", "STORE 1 +FLAGS (\\Flagged)")
        assert b"* 1 FETCH (FLAGS (\\Flagged \\Recent))" in stored  # the writer's view
        before = len(pinned)
        told = reader.command("N9", "NOOP")
        assert told == b"* 1 FETCH (FLAGS (\\Flagged))\r\nN9 OK NOOP completed\r\n"
        assert pinned[before:] == [True]  # the writer's STORE fed the log: no query
        assert reader.command("N10", "NOOP") == b"N10 OK NOOP completed\r\n"
        reader.send(b"I1 IDLE\r\n")
        assert reader.read_line() == b"+ idling\r\n"
        writer.command("W3", "STORE 2 +FLAGS (\\Seen)")
        assert reader.read_line() == b"* 2 FETCH (FLAGS (\\Seen))\r\n"
        appended = _append(writer, "A3", "three")
        assert reader.read_line() == b"* 3 EXISTS\r\n"
        recent = reader.read_line()
        reader.send(b"DONE\r\n")
        assert reader.read_until_tagged("I1").endswith(b"I1 OK IDLE terminated\r\n")
        told_writer = writer.command("W4", "NOOP")
        # \Recent goes to exactly one session (RFC 3501 §2.3.2).
        # The writer's view holds messages 1 and 2 as recent already (it selected first).
        assert (recent == b"* 1 RECENT\r\n") != (b"* 3 RECENT" in appended + told_writer)
        assert recent in (b"* 0 RECENT\r\n", b"* 1 RECENT\r\n")
        # A STORE's untouched messages come from the rows its lock read (no second read).
        both = writer.command("W5", "STORE 1:2 +FLAGS (\\Flagged)").split(b"\r\n")
        assert both[0] == b"* 1 FETCH (FLAGS (\\Flagged \\Recent))", both
        assert both[1].startswith(b"* 2 FETCH (FLAGS (") and b"\\Flagged" in both[1], both
        assert both[2] == b"W5 OK STORE completed", both
        assert reader.command("L1", "LOGOUT").endswith(b"L1 OK LOGOUT completed\r\n")
    finally:
        writer.sock.close()
        reader.sock.close()
    running.guard.assert_clean()
