"""IMAP4rev2 (RFC 9051): announced next to IMAP4rev1 once its prerequisites are announced,
``ENABLE IMAP4rev2``, and the RFC 9051 forms of the responses after it (Appendix E)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap import capabilities
from gateway.testing.imapclient import RawClient, ServerHandle, running_server, tagged_line
from gateway.testing.messages import message


@pytest.fixture
def plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    """A server without one of IMAP4rev2's prerequisites (SEARCHRES taken away)."""
    monkeypatch.setattr(
        capabilities,
        "EXTENSIONS",
        tuple(c for c in capabilities.EXTENSIONS if c != "SEARCHRES"),
    )
    with running_server(tmp_path) as handle:
        yield handle


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    """The real server: BINARY, SEARCHRES and UTF8=ACCEPT are announced, so IMAP4rev2 is."""
    with running_server(tmp_path) as handle:
        handle.append("INBOX", message("one"))
        handle.append("INBOX", message("two"), flags=("\\Deleted",))
        yield handle


def rev2_client(server: ServerHandle) -> RawClient:
    client = server.login()
    assert client.command("E", "ENABLE IMAP4rev2") == (
        b"* ENABLED IMAP4rev2\r\nE OK ENABLE completed\r\n"
    )
    return client


def test_not_announced_until_its_prerequisites_are(plain: ServerHandle) -> None:
    with plain.login() as client:
        assert b"IMAP4rev2" not in client.command("C", "CAPABILITY")
        assert client.command("E", "ENABLE IMAP4rev2") == b"* ENABLED\r\nE OK ENABLE completed\r\n"


def test_announced_next_to_imap4rev1(server: ServerHandle) -> None:
    with server.connect() as client:
        assert client.greeting().startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")


def test_select_has_no_recent_nor_unseen_and_a_list_response(server: ServerHandle) -> None:
    """RFC 9051 §6.3.2 and Appendix E: the example response of SELECT, in popgate's order."""
    with rev2_client(server) as client:
        reply = client.command("S", "SELECT INBOX")
        assert b"RECENT" not in reply and b"[UNSEEN" not in reply and b"\\Recent" not in reply
        assert b'* LIST () "/" "INBOX"\r\n' in reply
        assert b"* 2 EXISTS\r\n" in reply
        assert tagged_line(reply) == b"S OK [READ-WRITE] SELECT completed"
        assert client.command("F", "FETCH 1:2 FLAGS") == (
            b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS (\\Deleted))\r\nF OK FETCH completed\r\n"
        )
        server.append("INBOX", message("three"))
        assert client.command("N", "NOOP") == b"* 3 EXISTS\r\nN OK NOOP completed\r\n"


def test_search_answers_with_esearch(server: ServerHandle) -> None:
    """RFC 9051 §6.4.4 / §7.3.4: never ``* SEARCH``."""
    with rev2_client(server) as client:
        client.command("S", "SELECT INBOX")
        assert client.command("A", "SEARCH ALL") == (
            b'* ESEARCH (TAG "A") ALL 1:2\r\nA OK SEARCH completed\r\n'
        )
        assert client.command("B", "UID SEARCH DELETED") == (
            b'* ESEARCH (TAG "B") UID ALL 2\r\nB OK SEARCH completed\r\n'
        )
        assert client.command("C", "SEARCH SUBJECT nothing-like-this") == (
            b'* ESEARCH (TAG "C")\r\nC OK SEARCH completed\r\n'
        )


def test_status_drops_recent_and_adds_deleted(server: ServerHandle) -> None:
    with rev2_client(server) as client:
        assert tagged_line(client.command("A", "STATUS INBOX (RECENT)")).startswith(b"A BAD")
        assert client.command("B", "STATUS INBOX (MESSAGES DELETED)") == (
            b'* STATUS "INBOX" (MESSAGES 2 DELETED 1)\r\nB OK STATUS completed\r\n'
        )


def test_list_says_nonexistent_and_names_are_utf8(server: ServerHandle) -> None:
    with rev2_client(server) as client:
        client.command("C", "CREATE a/b")
        client.command("D", "DELETE a")
        reply = client.command("L", 'LIST "" "a*"')
        assert b'* LIST (\\NonExistent \\HasChildren) "/" "a"\r\n' in reply
        created = tagged_line(client.command("K", 'CREATE "K\xc3\xbcche"'.encode("latin-1")))
        assert created.startswith(b"K OK [MAILBOXID (F") and created.endswith(
            b")] CREATE completed"
        )
        # UTF-8 on the wire (a quoted string, as RFC 9051 allows and Dovecot sends), not
        # modified UTF-7
        assert '"K\u00fcche"\r\n'.encode() in client.command("M", 'LIST "" "K*"')


def test_rev1_clients_see_no_change(server: ServerHandle) -> None:
    with server.login() as client:
        reply = client.command("S", "SELECT INBOX")
        assert b"* 0 RECENT\r\n" in reply or b" RECENT\r\n" in reply
        assert client.command("A", "SEARCH ALL") == b"* SEARCH 1 2\r\nA OK SEARCH completed\r\n"
        reply = client.command("L", 'LIST "" "Nothing*"')
        assert reply == b"L OK LIST completed\r\n"
