"""Exact-bytes checks from an audit of the handlers against RFC 3501 §6/§7 (and RFC 9051
where clients rely on it), for the corners other test files do not reach: \\Recent
between two sessions, STATUS of the selected mailbox, RENAME INBOX under another
session's feet, LIST patterns across levels and references, SEARCH strings as quoted
UTF-8 and literals, and the one tagged reply every command gets, even when the server
fails inside the catch-up that follows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from gateway.store.interfaces import Delivery
from gateway.testing.imapclient import USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message


@pytest.fixture
def server(tmp_path: Path):
    with running_server(tmp_path) as handle:
        for name in ("Work/Projects/2024", "Work/Notes", "INBOX/Sub"):
            handle.call(handle.store.create_mailbox, USER, name)
        yield handle


def session(server: ServerHandle, select: str | None = "INBOX") -> RawClient:
    client = server.connect()
    client.login()
    if select is not None:
        reply = client.command("s", f"SELECT {select}")
        assert reply.endswith(b"s OK [READ-WRITE] SELECT completed\r\n"), reply
    return client


def deliver(server: ServerHandle, uidl: str, subject: str) -> int:
    uid = server.call(server.store.deliver, USER, "INBOX", Delivery("isp", uidl, message(subject)))
    assert uid is not None
    return uid


# ---- \Recent (RFC 3501 §2.3.2) --------------------------------------------------------


def test_recent_belongs_to_the_first_session_told_of_a_message(server: ServerHandle) -> None:
    """RFC 3501 §2.3.2: \\Recent is set in exactly one session, the first to be notified;
    §7.3.2 RECENT counts differ accordingly, and SEARCH RECENT/NEW (§6.4.4) answer per
    session. EXAMINE (§6.3.2) never takes \\Recent away from anybody."""
    with session(server) as a, session(server) as b, session(server, None) as c:
        assert c.command("e", "EXAMINE INBOX").count(b"* 0 RECENT\r\n") == 1
        deliver(server, "u1", "first")
        assert a.command("n", "NOOP") == b"* 1 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
        assert b.command("n", "NOOP") == b"* 1 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n"
        assert a.command("f", "FETCH 1 FLAGS") == (
            b"* 1 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"
        )
        assert (
            b.command("f", "FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS ())\r\nf OK FETCH completed\r\n"
        )
        assert a.command("r", "SEARCH RECENT") == b"* SEARCH 1\r\nr OK SEARCH completed\r\n"
        assert a.command("r", "SEARCH NEW") == b"* SEARCH 1\r\nr OK SEARCH completed\r\n"
        assert b.command("r", "SEARCH RECENT") == b"* SEARCH\r\nr OK SEARCH completed\r\n"
        assert b.command("r", "SEARCH OLD") == b"* SEARCH 1\r\nr OK SEARCH completed\r\n"
        # The second message: B asks first this time, so B gets it.
        deliver(server, "u2", "second")
        assert b.command("n", "NOOP") == b"* 2 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
        assert a.command("n", "NOOP") == b"* 2 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
        assert a.command("r", "SEARCH RECENT") == b"* SEARCH 1\r\nr OK SEARCH completed\r\n"
        assert b.command("r", "SEARCH RECENT") == b"* SEARCH 2\r\nr OK SEARCH completed\r\n"
        # A read-only session told first shows \Recent but leaves it to the next one.
        deliver(server, "u3", "third")
        assert c.command("n", "NOOP") == b"* 3 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
        assert a.command("n", "NOOP") == b"* 3 EXISTS\r\n* 2 RECENT\r\nn OK NOOP completed\r\n"
        assert c.command("f", "FETCH 3 FLAGS") == (
            b"* 3 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"
        )
    with session(server, None) as later:
        reply = later.command("s", "SELECT INBOX")
        assert b"* 3 EXISTS\r\n* 0 RECENT\r\n" in reply


# ---- STATUS (RFC 3501 §6.3.10) ----------------------------------------------------------


def test_status_of_the_selected_mailbox_shows_what_the_session_was_not_yet_told(
    server: ServerHandle,
) -> None:
    """RFC 3501 §6.3.10: STATUS answers from the mailbox as it is; for the selected
    mailbox that includes changes not yet announced to this session, which then come
    as untagged EXISTS/EXPUNGE/FETCH after the STATUS line (§7), never before it."""
    server.append(raw=message("one"))
    server.append(raw=message("two"))
    with session(server) as watcher, session(server) as actor:
        actor.command("a", "STORE 1 +FLAGS.SILENT (\\Seen \\Deleted)")
        actor.command("b", "EXPUNGE")
        deliver(server, "u1", "three")
        deliver(server, "u2", "four")
        reply = watcher.command("t", "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)")
        lines = reply.splitlines(keepends=True)
        assert lines[0] == b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 3 UIDNEXT 5)\r\n'
        assert lines[1:] == [
            b"* 1 EXPUNGE\r\n",
            b"* 3 EXISTS\r\n",
            b"* 3 RECENT\r\n",  # the watcher selected first: all of them are its recent
            b"t OK STATUS completed\r\n",
        ]


# ---- RENAME INBOX (RFC 3501 §6.3.5) -------------------------------------------------------


def test_rename_inbox_while_another_session_has_it_selected(server: ServerHandle) -> None:
    """RFC 3501 §6.3.5: RENAME INBOX moves every message to the new name and leaves INBOX
    empty but existing. A session with INBOX selected is told the messages went (EXPUNGE,
    highest first) and keeps working on the same INBOX: UIDVALIDITY unchanged, UIDs not
    reused for what arrives next."""
    for index in range(3):
        server.append(raw=message(f"m{index}"))
    with session(server) as viewer, session(server, None) as renamer:
        before = server.call(server.store.get_mailbox, USER, "INBOX")
        assert renamer.command("r", "RENAME INBOX Saved") == b"r OK RENAME completed\r\n"
        assert viewer.command("n", "NOOP") == (
            b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\nn OK NOOP completed\r\n"
        )
        uid = deliver(server, "u1", "after the rename")
        assert uid == 4
        assert viewer.command("n", "NOOP") == b"* 1 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
        assert viewer.command("f", "UID FETCH 1:* (UID)") == (
            b"* 1 FETCH (UID 4)\r\nf OK FETCH completed\r\n"
        )
        after = server.call(server.store.get_mailbox, USER, "INBOX")
        assert after.uidvalidity == before.uidvalidity
        status = renamer.command("s", 'STATUS "Saved" (MESSAGES UIDNEXT)')
        assert status.startswith(b'* STATUS "Saved" (MESSAGES 3 UIDNEXT 4)\r\n')
        listing = renamer.command("l", 'LIST "" "INBOX*"')
        assert listing == (
            b'* LIST (\\HasChildren) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren) "/" "INBOX/Sub"\r\n'
            b"l OK LIST completed\r\n"
        )


# ---- LIST (RFC 3501 §6.3.8) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "pattern", "expected"),
    [
        (
            '""',
            "%/%",
            [
                b'* LIST (\\HasNoChildren) "/" "INBOX/Sub"',
                b'* LIST (\\HasNoChildren) "/" "Work/Notes"',
                b'* LIST (\\HasChildren) "/" "Work/Projects"',
            ],
        ),
        ('""', "Work/%/%", [b'* LIST (\\HasNoChildren) "/" "Work/Projects/2024"']),
        ('""', "%/Projects", [b'* LIST (\\HasChildren) "/" "Work/Projects"']),
        (
            "Work/",
            "%",
            [
                b'* LIST (\\HasNoChildren) "/" "Work/Notes"',
                b'* LIST (\\HasChildren) "/" "Work/Projects"',
            ],
        ),
        ("Work/Projects/", "*", [b'* LIST (\\HasNoChildren) "/" "Work/Projects/2024"']),
        (
            '""',
            "INBOX*",
            [
                b'* LIST (\\HasChildren) "/" "INBOX"',
                b'* LIST (\\HasNoChildren) "/" "INBOX/Sub"',
            ],
        ),
        ('""', "inbox", [b'* LIST (\\HasChildren) "/" "INBOX"']),
        ('""', "iNbOx/%", [b'* LIST (\\HasNoChildren) "/" "INBOX/Sub"']),
        ('""', "work", []),  # only INBOX is case-insensitive (RFC 3501 §5.1)
        ("Work/", '""', [b'* LIST (\\Noselect) "/" ""']),
    ],
)
def test_list_patterns_across_levels_and_references(
    server: ServerHandle, reference: str, pattern: str, expected: list[bytes]
) -> None:
    """RFC 3501 §6.3.8: ``%`` stops at the delimiter, at every level it appears; a
    reference ending in the delimiter is a prefix of the pattern; INBOX matches in any
    case; an empty pattern asks for the delimiter."""
    with session(server, None) as client:
        reply = client.command("l", f"LIST {reference} {pattern}")
    assert reply.splitlines() == [*expected, b"l OK LIST completed"]


def test_list_percent_shows_deleted_parent_as_noselect(server: ServerHandle) -> None:
    """RFC 3501 §6.3.8: with ``%`` at the end, a level of hierarchy that is not itself a
    mailbox is still returned, with \\Noselect (here: a parent that was DELETEd)."""
    with session(server, None) as client:
        assert client.command("d", "DELETE Work") == b"d OK DELETE completed\r\n"
        reply = client.command("l", 'LIST "" W%')
        assert reply == b'* LIST (\\Noselect \\HasChildren) "/" "Work"\r\nl OK LIST completed\r\n'
        assert client.command("d", "DELETE Work").startswith(b"d NO [NONEXISTENT]")


# ---- SEARCH strings (RFC 3501 §6.4.4) ----------------------------------------------------


@pytest.fixture
def greetings(server: ServerHandle) -> ServerHandle:
    server.append(raw=message("=?UTF-8?B?R3LDvMOfZSBhdXMgV2llbg==?="))  # "Grüße aus Wien"
    server.append(raw=message("Greetings"))
    server.append(raw=message("plain", body="Viele Grüße, Anna"))
    return server


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ('SEARCH CHARSET UTF-8 SUBJECT "grüße"'.encode(), b"* SEARCH 1\r\n"),
        ('SEARCH SUBJECT "GRÜSSE"'.encode(), b"* SEARCH 1\r\n"),  # full case folding
        (b"SEARCH CHARSET UTF-8 SUBJECT {7}\r\n" + "Grüße".encode(), b"* SEARCH 1\r\n"),
        (b"SEARCH CHARSET UTF-8 BODY {6+}\r\n" + "grüß".encode(), b"* SEARCH 3\r\n"),
        (b'SEARCH CHARSET utf-8 TEXT "ANNA" NOT SUBJECT {4+}\r\ngree', b"* SEARCH 3\r\n"),
        (b"UID SEARCH OR SUBJECT {5}\r\ngreet TEXT wien", b"* SEARCH 1 2\r\n"),
    ],
)
def test_search_strings_as_quoted_utf8_and_literals(
    greetings: ServerHandle, command: bytes, expected: bytes
) -> None:
    """RFC 3501 §6.4.4: SEARCH strings may be quoted (UTF-8 accepted, as Dovecot does) or
    literals (synchronizing ones get ``+``), with or without CHARSET; matching is a
    case-insensitive substring over decoded header and body text."""
    with session(greetings) as client:
        reply = client.command("q", command)
    lines = [line for line in reply.splitlines(keepends=True) if not line.startswith(b"+ ")]
    assert lines == [expected, b"q OK SEARCH completed\r\n"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            b'SEARCH SUBJECT "gr\xfc\xdfe"',
            b"q BAD SEARCH: a quoted string that is not valid UTF-8\r\n",
        ),
        (
            b'SEARCH CHARSET ISO-8859-1 SUBJECT "x"',
            b"q NO [BADCHARSET (US-ASCII UTF-8)] SEARCH: charset not supported\r\n",
        ),
    ],
)
def test_search_refuses_invalid_utf8_and_unknown_charsets(
    greetings: ServerHandle, command: bytes, expected: bytes
) -> None:
    """RFC 3501 §6.4.4: an unsupported charset is ``NO [BADCHARSET (...)]`` listing the
    supported ones (§7.1); bytes that are not UTF-8 are BAD, never guessed at."""
    with session(greetings) as client:
        assert client.command("q", command) == expected
        assert client.command("n", "NOOP") == b"n OK NOOP completed\r\n"


# ---- one tagged reply per command -------------------------------------------------------


def test_a_failure_in_the_catch_up_still_gets_exactly_one_tagged_reply(
    server: ServerHandle,
) -> None:
    """RFC 3501 §2.2.2 / STYLE.md habit 4: when reporting other sessions' changes fails
    inside the server after a command ran, the client gets one ``NO [SERVERBUG]`` for
    that command (no exception text), and the session goes on."""
    server.append()
    with session(server) as client:
        store = server.store
        original = store.changes_since
        calls = {"n": 0}

        def failing_once(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("secret detail")
            return original(*args, **kwargs)

        server.call(setattr, store, "changes_since", failing_once)
        try:
            with structlog.testing.capture_logs():
                reply = client.command("n", "NOOP")
        finally:
            server.call(delattr, store, "changes_since")
        assert reply == b"n NO [SERVERBUG] Internal error, see server log\r\n"
        assert client.command("f", "FETCH 1 (UID)") == (
            b"* 1 FETCH (UID 1)\r\nf OK FETCH completed\r\n"
        )
