"""SEARCH and APPEND extensions of issue 17, byte for byte over a real server: SEARCHRES
(RFC 5182), WITHIN (RFC 5032), SAVEDATE search keys (RFC 8514), CATENATE (RFC 4469) and
UTF8=ACCEPT (RFC 6855: APPEND ``UTF8 (~{n})`` and UTF-8 mailbox names)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.imapclient import RawClient, ServerHandle, running_server
from gateway.testing.messages import message


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[RawClient]:
    with server.connect() as raw:
        raw.login()
        yield raw


def _fill(server: ServerHandle, client: RawClient, n: int = 5) -> None:
    for i in range(n):
        server.append(raw=message(subject=f"m{i}"), flags=("\\Flagged",) if i % 2 == 0 else ())
    client.command("s", "SELECT INBOX")


# ---- SEARCHRES (RFC 5182) ---------------------------------------------------------------


def test_search_save_then_fetch_dollar(server: ServerHandle, client: RawClient) -> None:
    """RFC 5182 §2.4 example: SAVE alone gives no ESEARCH; ``$`` then names the messages."""
    _fill(server, client)
    assert client.command("A282", "SEARCH RETURN (SAVE) FLAGGED") == (
        b"A282 OK SEARCH completed\r\n"
    )
    assert client.command("A283", "FETCH $ (UID)") == (
        b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n* 5 FETCH (UID 5)\r\n"
        b"A283 OK FETCH completed\r\n"
    )
    # "$" in a later SEARCH, combined with other keys (§2.1), and in UID forms
    assert client.command("a", "UID SEARCH UID $ NOT UID 3") == (
        b"* SEARCH 1 5\r\na OK SEARCH completed\r\n"
    )
    assert client.command("b", "SEARCH $") == b"* SEARCH 1 3 5\r\nb OK SEARCH completed\r\n"


def test_search_save_with_min_max_saves_only_those(server: ServerHandle, client: RawClient) -> None:
    """RFC 5182 §2.1: with MIN and/or MAX only, the saved result is those messages."""
    _fill(server, client)
    assert client.command("a", "UID SEARCH RETURN (SAVE MIN MAX) FLAGGED") == (
        b'* ESEARCH (TAG "a") UID MIN 1 MAX 5\r\na OK SEARCH completed\r\n'
    )
    assert client.command("b", "UID SEARCH $") == b"* SEARCH 1 5\r\nb OK SEARCH completed\r\n"
    assert client.command("c", "SEARCH RETURN (SAVE COUNT) UNFLAGGED") == (
        b'* ESEARCH (TAG "c") COUNT 2\r\nc OK SEARCH completed\r\n'
    )
    assert client.command("d", "UID SEARCH $") == b"* SEARCH 2 4\r\nd OK SEARCH completed\r\n"


def test_dollar_drops_expunged_messages_and_is_empty_after_select(
    server: ServerHandle, client: RawClient
) -> None:
    """RFC 5182 §2.1: an expunged message leaves ``$``; a new SELECT starts empty."""
    _fill(server, client)
    client.command("a", "SEARCH RETURN (SAVE) FLAGGED")
    client.command("b", "UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    client.command("c", "EXPUNGE")
    assert client.command("d", "UID SEARCH $") == b"* SEARCH 1 5\r\nd OK SEARCH completed\r\n"
    assert client.command("e", "UID STORE $ +FLAGS.SILENT (\\Answered)") == (
        b"e OK STORE completed\r\n"
    )
    assert (
        client.command("f", "UID SEARCH ANSWERED") == b"* SEARCH 1 5\r\nf OK SEARCH completed\r\n"
    )
    client.command("g", "SELECT INBOX")
    assert client.command("h", "FETCH $ UID") == b"h OK FETCH completed\r\n"


# ---- WITHIN (RFC 5032) and SAVEDATE keys (RFC 8514) -------------------------------------


def test_older_and_younger_compare_internaldate_with_now(client: RawClient) -> None:
    """RFC 5032 §3: OLDER n = more than n seconds ago, YOUNGER n = within the last n."""
    old = "01-Jan-2020 00:00:00 +0000"
    client.command("a1", f'APPEND INBOX "{old}" {{{len(message())}+}}\r\n'.encode() + message())
    client.command("a2", f"APPEND INBOX {{{len(message())}+}}\r\n".encode() + message())
    client.command("s", "SELECT INBOX")
    assert client.command("o", "SEARCH OLDER 86400") == b"* SEARCH 1\r\no OK SEARCH completed\r\n"
    assert client.command("y", "SEARCH YOUNGER 86400") == b"* SEARCH 2\r\ny OK SEARCH completed\r\n"
    assert (
        client.command("z", "SEARCH YOUNGER 1 OLDER 1") == b"* SEARCH\r\nz OK SEARCH completed\r\n"
    )
    assert client.command("bad", "SEARCH OLDER 0").startswith(b"bad BAD ")


def test_saved_date_keys_use_the_save_day(client: RawClient) -> None:
    """RFC 8514 §4.2: SAVEDON/SAVEDSINCE/SAVEDBEFORE look at the day the message was saved,
    not its INTERNALDATE; SAVEDATESUPPORTED matches every message here."""
    old = "01-Jan-2020 00:00:00 +0000"
    client.command("a1", f'APPEND INBOX "{old}" {{{len(message())}+}}\r\n'.encode() + message())
    client.command("s", "SELECT INBOX")
    today = datetime.datetime.now(datetime.UTC).date()
    day = f"{today.day}-{today.strftime('%b')}-{today.year}"
    assert (
        client.command("a", f"SEARCH SAVEDON {day}") == b"* SEARCH 1\r\na OK SEARCH completed\r\n"
    )
    assert client.command("b", "SEARCH SAVEDBEFORE 2-Jan-2020") == (
        b"* SEARCH\r\nb OK SEARCH completed\r\n"
    )
    assert client.command("c", "SEARCH BEFORE 2-Jan-2020 SAVEDSINCE 1-Jan-2021") == (
        b"* SEARCH 1\r\nc OK SEARCH completed\r\n"
    )
    assert client.command("d", "SEARCH SAVEDATESUPPORTED") == (
        b"* SEARCH 1\r\nd OK SEARCH completed\r\n"
    )


# ---- CATENATE (RFC 4469) -------------------------------------------------------------------

DRAFT = (
    b"From: Alice <alice@example.org>\r\n"
    b"Subject: Draft\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="K"\r\n'
    b"\r\n"
    b"--K\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Old text.\r\n"
    b"--K\r\n"
    b"Content-Type: application/pdf\r\n"
    b"\r\n"
    b"PDFDATA\r\n"
    b"--K--\r\n"
)


def test_catenate_builds_a_message_from_text_and_urls(
    server: ServerHandle, client: RawClient
) -> None:
    """RFC 4469 §4 example: a new draft reusing the old one's header and attachment."""
    server.append("Drafts", raw=DRAFT)
    uidvalidity = server.call(server.store.get_mailbox, "alice", "Drafts").uidvalidity
    base = f"/Drafts;UIDVALIDITY={uidvalidity}/;UID=1"
    text = b"\r\n--K\r\nContent-Type: text/plain\r\n\r\nNew text.\r\n--K\r\n"
    end = b"\r\n--K--\r\n"
    cmd = (
        f'APPEND Drafts (\\Seen \\Draft) CATENATE (URL "{base}/;SECTION=HEADER" '
        f"TEXT {{{len(text)}+}}\r\n".encode()
        + text
        + f' URL "{base}/;SECTION=2.MIME" URL "{base}/;SECTION=2" TEXT {{{len(end)}+}}\r\n'.encode()
        + end
        + b")"
    )
    reply = client.command("A003", cmd)
    assert re.fullmatch(rb"A003 OK \[APPENDUID \d+ 2\] APPEND completed\r\n", reply)
    client.command("s", "EXAMINE Drafts")
    body = client.command("f", "FETCH 2 BODY.PEEK[]")
    expected = (
        DRAFT[: DRAFT.index(b"\r\n\r\n") + 4]
        + text
        + b"Content-Type: application/pdf\r\n\r\n"
        + b"PDFDATA"
        + end
    )
    assert body == (
        b"* 2 FETCH (BODY[] {%d}\r\n" % len(expected) + expected + b")\r\nf OK FETCH completed\r\n"
    )


def test_catenate_with_a_bad_url_is_badurl_and_stores_nothing(
    server: ServerHandle, client: RawClient
) -> None:
    """RFC 4469 §5: NO [BADURL "url"]; a wrong UIDVALIDITY or a missing UID is bad."""
    server.append("Drafts", raw=DRAFT)
    for url in ("/Drafts;UIDVALIDITY=1/;UID=1", "/Drafts/;UID=9", "/Nope/;UID=1", "http://x/"):
        reply = client.command("b", f'APPEND Drafts CATENATE (TEXT {{1+}}\r\nx URL "{url}")')
        assert reply == f"b NO [BADURL {url}] CATENATE URL cannot be resolved\r\n".encode()
    assert client.command("st", "STATUS Drafts (MESSAGES)") == (
        b'* STATUS "Drafts" (MESSAGES 1)\r\nst OK STATUS completed\r\n'
    )


def test_catenate_relative_url_names_the_selected_mailbox(
    server: ServerHandle, client: RawClient
) -> None:
    server.append(raw=DRAFT)
    client.command("s", "SELECT INBOX")
    reply = client.command("a", 'APPEND INBOX CATENATE (URL ";UID=1/;SECTION=1")')
    assert re.fullmatch(
        rb"\* 2 EXISTS\r\n\* 2 RECENT\r\na OK \[APPENDUID \d+ 2\] APPEND completed\r\n", reply
    )
    assert client.command("f", "FETCH 2 BODY.PEEK[]") == (
        b"* 2 FETCH (BODY[] {9}\r\nOld text.)\r\nf OK FETCH completed\r\n"
    )


# ---- UTF8=ACCEPT (RFC 6855) -----------------------------------------------------------------


def test_utf8_accept_append_and_mailbox_names(client: RawClient) -> None:
    """RFC 6855 §3: after ENABLE UTF8=ACCEPT names are UTF-8 on the wire; §4: APPEND takes
    ``UTF8 (~{n})`` data with UTF-8 header fields."""
    assert client.command("e", "ENABLE UTF8=ACCEPT") == (
        b"* ENABLED UTF8=ACCEPT\r\ne OK ENABLE completed\r\n"
    )
    name = "Récépissés".encode()
    created = client.command("c", b'CREATE "' + name + b'"')
    assert re.fullmatch(rb"c OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n", created)
    assert client.command("l", b'LIST "" "R*"') == (
        b'* LIST (\\HasNoChildren) "/" "' + name + b'"\r\nl OK LIST completed\r\n'
    )
    mail = "From: Zoë <zoe@example.org>\r\nSubject: Grüße\r\n\r\nHallo.\r\n".encode()
    reply = client.command(
        "a", b'APPEND "' + name + b'" UTF8 (~{%d+}\r\n' % len(mail) + mail + b")"
    )
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", reply)
    client.command("s", b'SELECT "' + name + b'"')
    assert client.command("f", "FETCH 1 BODY.PEEK[]") == (
        b"* 1 FETCH (BODY[] {%d}\r\n" % len(mail) + mail + b")\r\nf OK FETCH completed\r\n"
    )
