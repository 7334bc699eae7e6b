"""One push to many idling sessions of one mailbox (issue 19): the sessions share the
fan-out's ``changes_since`` read and, with an inline store, their lines are written by
IDLE's short path (gateway/imap/catchup.py, ``idle_push``) without stepping each IDLE
command. Each session still gets exactly the untagged responses its own view calls for
(RFC 3501 §7.3.1, §7.4.1; RFC 2177): its own sequence numbers and \\Recent, FETCH with
UID and MODSEQ under CONDSTORE (RFC 7162 §3.1), VANISHED instead of EXPUNGE under
QRESYNC (§3.2.10), no RECENT under IMAP4rev2 (RFC 9051), deflated under COMPRESS
(RFC 4978); and the same bytes whether the short path or the command's path wrote them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gateway.imap.factory import IMAPServerFactory
from gateway.imap.session import IMAPSession
from gateway.testing.imapclient import BACKENDS, RawClient, ServerHandle, running_server
from gateway.testing.messages import message


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path, backend=request.param) as handle:
        handle.append("INBOX", message("one"))
        handle.append("INBOX", message("two"))
        yield handle


@pytest.fixture
def short_paths(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each ``idle_push`` answer: True when the short path wrote the push."""
    taken: list[bool] = []
    real = IMAPSession.idle_push

    def recording(self: IMAPSession) -> bytes | None:
        out = real(self)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(IMAPSession, "idle_push", recording)
    return taken


def _idle(client: RawClient, *setup: str) -> RawClient:
    for number, command in enumerate(setup):
        reply = client.command(f"s{number}", command)
        assert re.search(rb"^s\d+ OK", reply, re.M), reply
    client.send(b"i IDLE\r\n")
    assert client.read_line() == b"+ idling\r\n"
    return client


def _deflated(client: RawClient) -> RawClient:
    assert client.command("Z", "COMPRESS DEFLATE") == b"Z OK DEFLATE active\r\n"
    client.start_deflate()
    return client


def _lines(client: RawClient, count: int) -> list[bytes]:
    return [client.read_line() for _ in range(count)]


def _modseq(reply: bytes) -> int:
    found = re.search(rb"MODSEQ \((\d+)\)", reply)
    assert found is not None, reply
    return int(found.group(1))


def _run_pushes(server: ServerHandle) -> None:
    """Six sessions of alice's INBOX idle with different views; a new message, a flag
    change and a MOVE out are pushed to all of them; each gets its own lines."""
    with ExitStack() as stack:
        login = lambda: stack.enter_context(server.login())  # noqa: E731
        # "plain" selects first: it claims \Recent of messages 1 and 2 (RFC 3501 §2.3.2).
        plain = _idle(login(), "SELECT INBOX")
        qresync = _idle(login(), "ENABLE QRESYNC", "SELECT INBOX")
        condstore = _idle(login(), "EXAMINE INBOX (CONDSTORE)")
        rev2 = _idle(login(), "ENABLE IMAP4rev2", "SELECT INBOX")
        zipped = _idle(_deflated(login()), "SELECT INBOX")
        readonly = _idle(login(), "EXAMINE INBOX")
        writer = login()
        writer.command("e", "ENABLE CONDSTORE")
        writer.command("s", "SELECT INBOX")

        # 1. A new message: EXISTS for all; RECENT (not under IMAP4rev2) counts the
        # session's own \Recent messages, and the new one is \Recent in at most one
        # read-write session (whichever was told first).
        server.append("INBOX", message("three"))
        recent = {
            name: _lines(client, 2)
            for name, client in (
                ("plain", plain),
                ("qresync", qresync),
                ("condstore", condstore),
                ("zipped", zipped),
                ("readonly", readonly),
            )
        }
        for name, (exists, _recent) in recent.items():
            assert exists == b"* 3 EXISTS\r\n", name
        assert rev2.read_line() == b"* 3 EXISTS\r\n"
        counts = {name: int(r[1].split()[1]) for name, r in recent.items()}
        assert all(r[1] == b"* %d RECENT\r\n" % counts[name] for name, r in recent.items())
        # EXAMINE claims nothing; it shows the new message \Recent if told before the
        # claim (as the claim's session is told), so 0 or 1.
        assert counts["condstore"] in (0, 1) and counts["readonly"] in (0, 1)
        claimed = (counts["plain"] - 2) + counts["qresync"] + counts["zipped"]
        # 0: the IMAP4rev2 session claimed it (and shows no \Recent). With steps on
        # store threads (PostgreSQL) several sessions' catch-ups may read the row before
        # any claims it: the store's claim says which one took it.
        assert claimed in (0, 1)
        plain_recent = counts["plain"] > 2

        # 2. A flag change: every session's own FETCH line.
        stored = writer.command("f", "STORE 2 +FLAGS (\\Flagged)")
        modseq = _modseq(stored)
        assert plain.read_line() == b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\n"
        item = b"* 2 FETCH (FLAGS (\\Flagged) UID 2 MODSEQ (%d))\r\n" % modseq
        assert qresync.read_line() == item
        assert condstore.read_line() == item
        assert rev2.read_line() == b"* 2 FETCH (FLAGS (\\Flagged))\r\n"
        assert zipped.read_line() == b"* 2 FETCH (FLAGS (\\Flagged))\r\n"
        assert readonly.read_line() == b"* 2 FETCH (FLAGS (\\Flagged))\r\n"

        # 3. A message moved out: EXPUNGE by sequence number, VANISHED under QRESYNC.
        assert writer.command("m", "UID MOVE 1 Archive").endswith(b"m OK MOVE completed\r\n")
        for client in (plain, condstore, rev2, zipped, readonly):
            assert client.read_line() == b"* 1 EXPUNGE\r\n"
        assert qresync.read_line() == b"* VANISHED 1\r\n"

        # Each view now numbers the messages as the store does, \Recent its own.
        for name, client in (("plain", plain), ("qresync", qresync), ("rev2", rev2)):
            client.send(b"DONE\r\n")
            assert client.read_until_tagged("i") == b"i OK IDLE terminated\r\n", name
            fetched = client.command("x", "FETCH 1:* (UID)")
            assert re.findall(rb"^\* (\d+) FETCH \(UID (\d+)", fetched, re.M) == [
                (b"1", b"2"),
                (b"2", b"3"),
            ], name
        flags = plain.command("y", "FETCH 2 (FLAGS)")
        assert (b"\\Recent" in flags) is plain_recent


def test_each_session_gets_its_own_view_of_one_push(server: ServerHandle) -> None:
    _run_pushes(server)


def test_the_command_path_writes_the_same_lines(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the short path off, every push steps the IDLE command: same bytes."""
    monkeypatch.setattr(IMAPSession, "idle_push", lambda self: None)
    _run_pushes(server)


def test_the_short_path_writes_every_push_but_a_recent_claim(
    tmp_path: Path, short_paths: list[bool]
) -> None:
    """Inline store: of the six idlers, the one claiming the new message's \\Recent takes
    the command's path (its claim is a store write); every other push of the three is
    written by the short path."""
    with running_server(tmp_path) as server:
        server.append("INBOX", message("one"))
        server.append("INBOX", message("two"))
        _run_pushes(server)
    assert short_paths.count(True) == 5 + 6 + 6
    assert short_paths.count(False) == 1


def test_one_catch_up_read_per_push_and_viewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty idlers of one INBOX: one ``changes_since`` per push, including the one whose
    new message is \\Recent (the claiming session's read is kept, \\Recent taken off)."""
    reads: list[int] = []
    flushing: list[bool] = []
    real_flush = IMAPServerFactory._flush_changes

    def flush(self: IMAPServerFactory) -> None:
        flushing.append(True)
        try:
            real_flush(self)
        finally:
            flushing.pop()

    monkeypatch.setattr(IMAPServerFactory, "_flush_changes", flush)
    with running_server(tmp_path) as server:
        real_changes = server.store.changes_since

        def changes_since(mailbox_id: int, modseq: int, **kwargs: object):  # type: ignore[no-untyped-def]
            if flushing:
                reads.append(modseq)
            return real_changes(mailbox_id, modseq, **kwargs)

        monkeypatch.setattr(server.store, "changes_since", changes_since)
        with ExitStack() as stack:
            idlers = [_idle(stack.enter_context(server.login()), "SELECT INBOX") for _ in range(20)]
            server.append("INBOX", message("new"))
            seen = [_lines(client, 2) for client in idlers]
            assert all(lines[0] == b"* 1 EXISTS\r\n" for lines in seen)
            assert sorted(lines[1] for lines in seen) == [b"* 0 RECENT\r\n"] * 19 + [
                b"* 1 RECENT\r\n"
            ]
            assert len(reads) == 1
            with server.login() as writer:
                writer.command("s", "SELECT INBOX")
                writer.command("f", "STORE 1 +FLAGS.SILENT (\\Seen)")
            flagged = sorted(client.read_line() for client in idlers)
            assert (
                flagged
                == [b"* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n"]
                + [b"* 1 FETCH (FLAGS (\\Seen))\r\n"] * 19
            )
            assert len(reads) == 2


def test_a_failing_short_path_leaves_the_push_to_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the short path for one session neither stops the fan-out to the others
    nor loses that session's push: it is logged and the IDLE command tells it."""
    real = IMAPSession.idle_push
    failed: list[bool] = []

    def failing_once(self: IMAPSession) -> bytes | None:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug")
        return real(self)

    monkeypatch.setattr(IMAPSession, "idle_push", failing_once)
    with running_server(tmp_path) as server, ExitStack() as stack:
        idlers = [_idle(stack.enter_context(server.login()), "EXAMINE INBOX") for _ in range(3)]
        server.append("INBOX", message("new"))
        assert [client.read_line() for client in idlers] == [b"* 1 EXISTS\r\n"] * 3
        assert failed == [True]


def test_a_push_of_more_rows_than_the_bound_takes_the_commands_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_paths: list[bool]
) -> None:
    """``PUSH_MAX_CHANGES`` at its edge (lowered to 3): a change of 3 rows is written by
    the short path, one of 4 by the IDLE command (which writes a long catch-up in
    chunks); the client reads the same FETCH lines either way."""
    from gateway.imap import catchup

    monkeypatch.setattr(catchup, "PUSH_MAX_CHANGES", 3)
    with running_server(tmp_path) as server:
        for number in range(4):
            server.append("INBOX", message(f"m{number}"))
        with server.login() as idler, server.login() as writer:
            _idle(idler, "EXAMINE INBOX")
            writer.command("s", "SELECT INBOX")
            writer.command("f", "STORE 1:3 +FLAGS.SILENT (\\Flagged)")
            assert _lines(idler, 3) == [
                b"* %d FETCH (FLAGS (\\Flagged \\Recent))\r\n" % n for n in (1, 2, 3)
            ]
            assert short_paths == [True]
            writer.command("g", "STORE 1:4 +FLAGS.SILENT (\\Seen)")
            assert _lines(idler, 4) == [
                b"* %d FETCH (FLAGS (\\Flagged \\Recent \\Seen))\r\n" % n for n in (1, 2, 3)
            ] + [b"* 4 FETCH (FLAGS (\\Recent \\Seen))\r\n"]
            assert short_paths == [True, False]
