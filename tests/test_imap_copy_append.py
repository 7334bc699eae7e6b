"""COPY/MOVE, EXPUNGE/UID EXPUNGE and APPEND handlers (gateway.imap.messages), byte for byte.

Uses :class:`gateway.testing.imapsession.SessionDriver`: a real session and SQLite store, the
handler driven alone (``call``) or through the session with its catch-up (``run``).
Expunge responses are checked by meaning too: replaying them on a model of the client's
message list must leave exactly the surviving UIDs, in order.
"""

from __future__ import annotations

import datetime
import imaplib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap.handler import BadCommand, Refused, Reply
from gateway.testing.imapclient import (
    PASSWORD,
    USER,
    ServerHandle,
    running_server,
)
from gateway.testing.imapsession import SessionDriver

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n"


def fill(harness: SessionDriver, count: int, flags: tuple[str, ...] = ()) -> None:
    for n in range(1, count + 1):
        harness.add(b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n), flags)


def replay(model: list[int], responses: bytes) -> list[int]:
    """Apply ``* n EXPUNGE`` lines one by one as a client must (RFC 3501 §7.4.1: each
    removes message n and renumbers the ones above it)."""
    model = list(model)
    for seq in re.findall(rb"^\* (\d+) EXPUNGE\r$", responses, re.M):
        del model[int(seq) - 1]
    return model


# ---- EXPUNGE ---------------------------------------------------------------------------


def test_expunge_numbers_stay_valid_when_replayed(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.3/§7.4.1: expunging 2, 3 and 5 of 6 sends one EXPUNGE each, with
    numbers that, applied in order, leave 1, 4, 6; the view matches."""
    fill(harness, 6)
    harness.select()
    harness.store.store_flags(harness.mailbox().id, [2, 3, 5], "+", ["\\Deleted"])
    out, reply = harness.call(b"a EXPUNGE")
    assert out == b"* 5 EXPUNGE\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n"
    assert replay([1, 2, 3, 4, 5, 6], out) == [1, 4, 6]
    assert reply == Reply("OK", "EXPUNGE completed")
    assert harness.session.selected is not None
    assert list(harness.session.selected.uids) == [1, 4, 6]
    assert [r.uid for r in harness.store.message_rows(harness.mailbox().id)] == [1, 4, 6]


def test_expunge_is_not_repeated_by_the_catch_up(harness: SessionDriver) -> None:
    """RFC 3501 §7.4.1: each expunged message is reported exactly once."""
    fill(harness, 3)
    harness.select()
    harness.run(b"s STORE 2 +FLAGS.SILENT (\\Deleted)")
    out = harness.run(b"a EXPUNGE")
    assert out == b"* 2 EXPUNGE\r\na OK EXPUNGE completed\r\n"
    assert harness.run(b"b NOOP") == b"b OK NOOP completed\r\n"


def test_expunge_with_qresync_sends_vanished(harness: SessionDriver) -> None:
    """RFC 7162 §3.2.10: once QRESYNC is enabled, ``* VANISHED uid-set`` replaces
    EXPUNGE."""
    fill(harness, 6)
    assert b"OK" in harness.run(b"E ENABLE QRESYNC")
    harness.select()
    harness.store.store_flags(harness.mailbox().id, [2, 3, 5], "+", ["\\Deleted"])
    out, _ = harness.call(b"a EXPUNGE")
    assert out == b"* VANISHED 2:3,5\r\n"
    assert harness.session.selected is not None
    assert list(harness.session.selected.uids) == [1, 4, 6]


def test_expunge_nothing_deleted_sends_nothing(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.3: without \\Deleted messages EXPUNGE just completes."""
    fill(harness, 2)
    harness.select()
    assert harness.call(b"a EXPUNGE") == (b"", Reply("OK", "EXPUNGE completed"))


def test_expunge_in_read_only_mailbox_is_refused(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.2: an EXAMINEd mailbox cannot be changed; EXPUNGE answers NO."""
    fill(harness, 2, ("\\Deleted",))
    harness.select(examine=True)
    with pytest.raises(Refused):
        harness.call(b"a EXPUNGE")
    with pytest.raises(Refused):
        harness.call(b"b UID EXPUNGE 1")
    assert len(harness.store.message_rows(harness.mailbox().id)) == 2


def test_uid_expunge_removes_only_the_given_deleted_messages(harness: SessionDriver) -> None:
    """RFC 4315 §2.1: UID EXPUNGE removes \\Deleted messages among the UIDs given and
    leaves other \\Deleted messages alone."""
    fill(harness, 5, ("\\Deleted",))
    harness.store.store_flags(harness.mailbox().id, [4], "-", ["\\Deleted"])
    harness.select()
    out, _ = harness.call(b"a UID EXPUNGE 2:4")
    assert replay([1, 2, 3, 4, 5], out) == [1, 4, 5]
    assert out == b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n"
    assert [r.uid for r in harness.store.message_rows(harness.mailbox().id)] == [1, 4, 5]


# ---- COPY / MOVE -----------------------------------------------------------------------


def test_copy_answers_copyuid_and_keeps_flags(harness: SessionDriver) -> None:
    """RFC 4315 §3: ``OK [COPYUID uidvalidity source-set dest-set]``, the two sets in
    corresponding order; RFC 3501 §6.4.7: flags travel with the copies, the source is
    untouched."""
    fill(harness, 4)
    harness.store.store_flags(harness.mailbox().id, [2], "+", ["\\Flagged", "$Tag"])
    trash = harness.mailbox("Trash")
    harness.add(MESSAGE, mailbox="Trash")  # the copies get UIDs 2 and up
    harness.select()
    out, reply = harness.call(b"a COPY 2:3 Trash")
    assert out == b""
    assert reply == Reply("OK", "COPY completed", f"COPYUID {trash.uidvalidity} 2:3 2:3")
    rows = harness.store.message_rows(trash.id)
    assert [(r.uid, r.flags - {"\\Recent"}) for r in rows] == [
        (1, set()),
        (2, {"\\Flagged", "$Tag"}),
        (3, set()),
    ]
    assert len(harness.store.message_rows(harness.mailbox().id)) == 4


def test_uid_copy_sets_follow_source_order(harness: SessionDriver) -> None:
    """RFC 4315 §3 with §6.4.8: UID COPY of a non-contiguous UID set pairs source and
    destination UIDs element by element."""
    fill(harness, 5)
    trash = harness.mailbox("Trash")
    harness.select()
    _out, reply = harness.call(b"a UID COPY 5,1,3 Trash")
    assert reply.code == f"COPYUID {trash.uidvalidity} 1,3,5 1:3"


def test_copy_to_missing_mailbox_is_trycreate(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.7: a destination that does not exist is ``NO [TRYCREATE]``."""
    fill(harness, 1)
    harness.select()
    with pytest.raises(Refused) as refused:
        harness.call(b"a COPY 1 Nowhere")
    assert refused.value.code == "TRYCREATE"
    with pytest.raises(Refused) as refused:
        harness.call(b"b MOVE 1 Nowhere")
    assert refused.value.code == "TRYCREATE"
    assert harness.run(b"c COPY 1 Nowhere") == b"c NO [TRYCREATE] mailbox does not exist\r\n"


def test_uid_copy_of_no_existing_message_is_ok_without_copyuid(harness: SessionDriver) -> None:
    """RFC 4315 §3 / RFC 3501 §6.4.8: a UID set naming no existing message copies
    nothing and is still OK, with no COPYUID (there is nothing to describe)."""
    fill(harness, 2)
    harness.select()
    assert harness.call(b"a UID COPY 10:20 Trash") == (
        b"",
        Reply("OK", "COPY completed, no messages"),
    )


def test_copy_into_the_selected_mailbox_is_announced_by_exists(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.7/§7.3.1: copies into the selected mailbox show up as EXISTS after
    the command, sent by the session, not by the handler."""
    fill(harness, 2)
    harness.select()
    box = harness.mailbox()
    out = harness.run(b"a COPY 1:2 INBOX")
    assert out == (
        b"* 4 EXISTS\r\n* 4 RECENT\r\n"
        b"a OK [COPYUID %d 1:2 3:4] COPY completed\r\n" % box.uidvalidity
    )


def test_move_sends_copyuid_then_expunges_then_ok(harness: SessionDriver) -> None:
    """RFC 6851 §3.3/§4.3: MOVE answers ``* OK [COPYUID ...]`` first, then the expunge
    of every moved message, then the tagged OK; the catch-up repeats nothing."""
    fill(harness, 6)
    trash = harness.mailbox("Trash")
    harness.select()
    out = harness.run(b"a MOVE 2:3,5 Trash")
    head, rest = out.split(b"\r\n", 1)
    assert head == b"* OK [COPYUID %d 2:3,5 1:3] moved" % trash.uidvalidity
    assert replay([1, 2, 3, 4, 5, 6], rest) == [1, 4, 6]
    assert rest.endswith(b"\r\na OK MOVE completed\r\n")
    assert rest.count(b"EXPUNGE\r\n") == 3
    assert harness.session.selected is not None
    assert list(harness.session.selected.uids) == [1, 4, 6]
    assert [r.uid for r in harness.store.message_rows(harness.mailbox().id)] == [1, 4, 6]
    assert len(harness.store.message_rows(trash.id)) == 3
    assert harness.run(b"b NOOP") == b"b OK NOOP completed\r\n"


def test_uid_move_with_qresync_sends_vanished(harness: SessionDriver) -> None:
    """RFC 6851 §3.3 with RFC 7162 §3.2.10: under QRESYNC the moved messages are
    reported by ``* VANISHED``."""
    fill(harness, 4)
    trash = harness.mailbox("Trash")
    assert b"OK" in harness.run(b"E ENABLE QRESYNC")
    harness.select()
    out, reply = harness.call(b"a UID MOVE 2,4 Trash")
    assert out == b"* OK [COPYUID %d 2,4 1:2] moved\r\n* VANISHED 2,4\r\n" % trash.uidvalidity
    assert reply == Reply("OK", "MOVE completed")


def test_move_from_read_only_mailbox_is_refused(harness: SessionDriver) -> None:
    """RFC 6851 §3.3: MOVE needs the right to expunge, which EXAMINE does not give."""
    fill(harness, 1)
    harness.select(examine=True)
    with pytest.raises(Refused):
        harness.call(b"a MOVE 1 Trash")
    assert len(harness.store.message_rows(harness.mailbox("Trash").id)) == 0


# ---- APPEND ----------------------------------------------------------------------------


def test_append_without_flags_or_date_answers_appenduid(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.11 with RFC 4315 §3: ``OK [APPENDUID uidvalidity uid]``; the
    message is stored byte for byte."""
    box = harness.mailbox()
    out, reply = harness.call(b"a APPEND INBOX {%d}\r\n%s" % (len(MESSAGE), MESSAGE))
    assert out == b""
    assert reply == Reply("OK", "APPEND completed", f"APPENDUID {box.uidvalidity} 1")
    assert harness.store.message_bytes(box.id, 1) == MESSAGE


def test_append_with_flags_and_date_stores_them(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.11: the flag list and date-time are kept; \\Recent in the list is
    ignored (§2.3.2: the server sets it)."""
    box = harness.mailbox("Archive")
    out, reply = harness.call(
        b'a APPEND Archive (\\Seen \\Recent $Done) "07-Feb-1994 21:52:25 -0800" {%d}\r\n%s'
        % (len(MESSAGE), MESSAGE)
    )
    assert reply.code == f"APPENDUID {box.uidvalidity} 1"
    info = harness.store.message_info(box.id, [1])[0]
    assert info.flags - {"\\Recent"} == {"\\Seen", "$Done"}
    zone = datetime.timezone(datetime.timedelta(hours=-8))
    assert info.internaldate == datetime.datetime(1994, 2, 7, 21, 52, 25, tzinfo=zone)
    assert info.internaldate.utcoffset() == datetime.timedelta(hours=-8)


def test_append_to_missing_mailbox_is_trycreate(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.11: APPEND to a mailbox that does not exist is ``NO [TRYCREATE]``."""
    with pytest.raises(Refused) as refused:
        harness.call(b"a APPEND Nowhere {%d}\r\n%s" % (len(MESSAGE), MESSAGE))
    assert refused.value.code == "TRYCREATE"


def test_multiappend_answers_a_uid_set(harness: SessionDriver) -> None:
    """RFC 3502 §6.3.11 with RFC 4315 §3: several messages in one APPEND, answered with
    ``APPENDUID uidvalidity uid-set``."""
    box = harness.mailbox()
    harness.add(MESSAGE)
    line = b"a APPEND INBOX (\\Flagged) {%d}\r\n%s {%d}\r\n%s" % (
        len(MESSAGE),
        MESSAGE,
        len(MESSAGE) + 1,
        MESSAGE + b"!",
    )
    _out, reply = harness.call(line)
    assert reply.code == f"APPENDUID {box.uidvalidity} 2:3"
    assert harness.store.message_bytes(box.id, 3) == MESSAGE + b"!"
    assert harness.store.message_rows(box.id)[1].flags - {"\\Recent"} == {"\\Flagged"}


def test_multiappend_is_all_or_nothing(tmp_path: Path) -> None:
    """RFC 3502 §6.3.11: if one message cannot be appended, none is; the error is the
    store's (``NO [TOOBIG]`` for an oversized message, RFC 5530)."""
    harness = SessionDriver(tmp_path / "store.db", max_message_size=200)
    try:
        big = b"Subject: big\r\n\r\n" + b"x" * 300 + b"\r\n"
        before = harness.mailbox()
        line = b"a APPEND INBOX {%d}\r\n%s {%d}\r\n%s" % (len(MESSAGE), MESSAGE, len(big), big)
        assert harness.run(line) == b"a NO [TOOBIG] Message too large\r\n"
        assert harness.store.message_rows(before.id) == []
        # No trace at all: no UID used up, no modseq, nothing for QRESYNC to report.
        after = harness.mailbox()
        assert (after.uidnext, after.highestmodseq) == (before.uidnext, before.highestmodseq)
        assert harness.store.changes_since(before.id, 0).expunged == []
    finally:
        harness.close()


def test_append_of_an_empty_message_is_bad(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.11: a message is an RFC 5322 message; zero octets is not one."""
    with pytest.raises(BadCommand):
        harness.call(b"a APPEND INBOX {0}\r\n")
    assert harness.store.message_rows(harness.mailbox().id) == []


def test_append_into_selected_mailbox_leaves_exists_to_the_session(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.11: appending to the selected mailbox is reported by EXISTS, which
    the session's catch-up sends after the handler, exactly once."""
    fill(harness, 1)
    harness.select()
    box = harness.mailbox()
    out = harness.run(b"a APPEND INBOX {%d}\r\n%s" % (len(MESSAGE), MESSAGE))
    assert out == (
        b"* 2 EXISTS\r\n* 2 RECENT\r\na OK [APPENDUID %d 2] APPEND completed\r\n" % box.uidvalidity
    )


def test_append_into_selected_mailbox_is_recent_for_the_appender_alone(
    harness: SessionDriver, tmp_path: Path
) -> None:
    """RFC 3501 §2.3.2: a message is \\Recent in one session, the first told of it. The
    session APPENDing to the mailbox it has selected read-write is (its catch-up ends
    the APPEND), and takes the claim in the APPEND's own write (issue 19, session 7):
    one write transaction, not two; its sibling and a later SELECT see it as not recent."""
    fill(harness, 1)
    harness.select()
    sibling = SessionDriver(tmp_path / "store.db", store=harness.store)
    sibling.select()
    writes: list[str] = []
    harness.store.db.set_trace_callback(writes.append)
    out = harness.run(b"a APPEND INBOX {%d}\r\n%s" % (len(MESSAGE), MESSAGE))
    harness.store.db.set_trace_callback(None)
    assert out.startswith(b"* 2 EXISTS\r\n* 2 RECENT\r\na OK [APPENDUID ")
    assert writes.count("BEGIN IMMEDIATE") == 1, writes
    assert b"* 2 FETCH (FLAGS (\\Recent))" in harness.run(b"f FETCH 2 FLAGS")
    assert sibling.run(b"n NOOP") == b"* 2 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n"
    assert b"* 2 FETCH (FLAGS ())" in sibling.run(b"f FETCH 2 FLAGS")
    later = SessionDriver(tmp_path / "store.db", store=harness.store)
    assert b"* 0 RECENT" in later.run(b"s SELECT INBOX")


@pytest.mark.parametrize("where", ["examined", "other mailbox"])
def test_append_elsewhere_leaves_recent_to_the_next_selector(
    harness: SessionDriver, tmp_path: Path, where: str
) -> None:
    """An APPEND from a read-only view of the mailbox (which claims nothing) or into a
    mailbox the session has not selected (Archive, a default folder) stores the message
    \\Recent, for the first session that selects it read-write (RFC 3501 §2.3.2)."""
    harness.select(examine=where == "examined")
    target = b"INBOX" if where == "examined" else b"Archive"
    out = harness.run(b"a APPEND %s {%d}\r\n%s" % (target, len(MESSAGE), MESSAGE))
    assert b"a OK [APPENDUID" in out
    later = SessionDriver(tmp_path / "store.db", store=harness.store)
    assert b"* 1 RECENT" in later.run(b"s SELECT " + target)
    assert b"* 1 FETCH (FLAGS (\\Recent))" in later.run(b"f FETCH 1 FLAGS")


# ---- over a real socket, with real client libraries ---------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        yield handle


def test_imapclient_append_copy_move_expunge(server: ServerHandle) -> None:
    """RFC 3501 §6.3.11/§6.4.3/§6.4.7, RFC 4315 and RFC 6851 as imapclient drives them:
    the APPENDUID codes it returns, UID COPY/MOVE, and the EXPUNGE responses it parses."""
    client = server.imapclient()
    try:
        inbox = server.call(server.store.get_mailbox, USER, "INBOX")
        trash = server.call(server.store.get_mailbox, USER, "Trash")
        when = datetime.datetime(2024, 2, 5, 10, 11, 12, tzinfo=datetime.UTC)
        assert client.append("INBOX", MESSAGE, [b"\\Seen"], when) == (
            b"[APPENDUID %d 1] APPEND completed" % inbox.uidvalidity
        )
        multi = client.multiappend("INBOX", [MESSAGE, {"msg": MESSAGE, "flags": [b"$X"]}])
        assert multi == ("OK", [b"[APPENDUID %d 2:3] APPEND completed" % inbox.uidvalidity])
        client.select_folder("INBOX")
        client.copy([1, 3], "Trash")
        client.move([2], "Trash")
        assert client.search() == [1, 3]
        trash_rows = server.call(server.store.message_rows, trash.id)
        assert [row.uid for row in trash_rows] == [1, 2, 3]
        client.add_flags([3], [b"\\Deleted"])
        text, responses = client.expunge()
        assert text == b"EXPUNGE completed"
        assert responses == [(2, b"EXPUNGE")]
        assert client.search() == [1]
    finally:
        client.logout()


def test_imaplib_append_and_expunge(server: ServerHandle) -> None:
    """RFC 3501 §6.3.11 and §6.4.3 with the standard library client."""
    client = server.imaplib_client()
    try:
        client.login(USER, PASSWORD)
        date = imaplib.Time2Internaldate(
            datetime.datetime(2024, 2, 5, 10, 11, 12, tzinfo=datetime.UTC)
        )
        for flags in ("(\\Deleted)", None, "(\\Deleted)"):
            typ, _data = client.append("INBOX", flags, date, MESSAGE)
            assert typ == "OK"
        client.select("INBOX")
        assert client.expunge() == ("OK", [b"3", b"1"])
        assert client.search(None, "ALL") == ("OK", [b"1"])
    finally:
        client.logout()


def test_move_over_the_wire(server: ServerHandle) -> None:
    """RFC 6851 §4.3 through the real server, exact bytes."""
    for _ in range(3):
        server.append(raw=MESSAGE)
    trash = server.call(server.store.get_mailbox, USER, "Trash")
    with server.connect() as client:
        client.login()
        client.command("s", "SELECT INBOX")
        assert client.command("a", "MOVE 2:3 Trash") == (
            b"* OK [COPYUID %d 2:3 1:2] moved\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n"
            b"a OK MOVE completed\r\n" % trash.uidvalidity
        )
