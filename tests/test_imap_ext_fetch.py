"""FETCH extensions of issue 17, byte for byte over a real server: BINARY (RFC 3516),
PREVIEW (RFC 8970), SAVEDATE (RFC 8514) and OBJECTID (RFC 8474: MAILBOXID, EMAILID,
THREADID), including Roundcube's ``BINARY.PEEK[1]`` / ``BINARY.SIZE`` requests."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.objectid import email_id_of
from gateway.testing.imapclient import RawClient, ServerHandle, running_server

PAYLOAD = bytes(range(256))
"""Binary content with a NUL, so the answer must be a literal8 (RFC 3516 §4.2)."""

MIXED = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Binary\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n'
    b"\r\n"
    b"--B\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9   at\r\n"
    b"   noon =\r\n"
    b"today.\r\n"
    b"--B\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n") + b"--B\r\n"
    b"Content-Type: application/x-odd\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\n"
    b"\r\n"
    b"begin 644 x\r\n"
    b"--B--\r\n"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle) -> Iterator[RawClient]:
    server.append(raw=MIXED)
    with server.connect() as raw:
        raw.login()
        raw.command("s", "SELECT INBOX")
        yield raw


def test_capabilities_announce_the_issue_17_extensions(client: RawClient) -> None:
    caps = client.command("c", "CAPABILITY").split(b"\r\n")[0].split()
    for name in (b"BINARY", b"SEARCHRES", b"CATENATE", b"WITHIN", b"SAVEDATE", b"PREVIEW"):
        assert name in caps
    assert b"OBJECTID" in caps and b"UTF8=ACCEPT" in caps


def test_binary_decodes_base64_into_a_literal8(client: RawClient) -> None:
    """RFC 3516 §4.2: content decoded; NUL octets make it a literal8 (``~{n}``)."""
    reply = client.command("f", "FETCH 1 (BINARY.PEEK[2])")
    assert reply == (
        b"* 1 FETCH (BINARY[2] ~{256}\r\n" + PAYLOAD + b")\r\nf OK FETCH completed\r\n"
    )


def test_binary_decodes_quoted_printable_8bit_content_as_a_literal8(client: RawClient) -> None:
    """8-bit decoded content is a literal8 too (as Dovecot answers)."""
    reply = client.command("f", "FETCH 1 (BINARY.PEEK[1])")
    text = "Café   at\r\n   noon today.".encode()
    assert reply == (
        b"* 1 FETCH (BINARY[1] ~{%d}\r\n" % len(text) + text + b")\r\nf OK FETCH completed\r\n"
    )


def test_binary_of_7bit_content_is_a_plain_literal(server: ServerHandle, client: RawClient) -> None:
    text = b"plain ascii text"
    server.append(
        raw=b"Subject: t\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode(text)
        + b"\r\n"
    )
    client.command("n", "NOOP")
    assert client.command("f", "FETCH 2 (BINARY.PEEK[1])") == (
        b"* 2 FETCH (BINARY[1] {16}\r\n" + text + b")\r\nf OK FETCH completed\r\n"
    )


def test_binary_size_and_partial(client: RawClient) -> None:
    """RFC 3516 §4.2: BINARY.SIZE is the decoded size; ``<origin.count>`` cuts decoded octets."""
    reply = client.command("f", "FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2]<65.3>)")
    assert reply == (
        b"* 1 FETCH (BINARY.SIZE[2] 256 BINARY[2]<65> ~{3}\r\nABC)\r\nf OK FETCH completed\r\n"
    )


def test_binary_without_peek_sets_seen_like_body(client: RawClient) -> None:
    reply = client.command("f", "FETCH 1 (BINARY[1]<0.4>)")
    assert reply == (
        b"* 1 FETCH (BINARY[1]<0> ~{4}\r\nCaf\xc3 FLAGS (\\Recent \\Seen))\r\n"
        b"f OK FETCH completed\r\n"
    )


def test_binary_of_an_unknown_encoding_is_no_unknown_cte(client: RawClient) -> None:
    """RFC 3516 §4.3."""
    reply = client.command("f", "FETCH 1 (BINARY.PEEK[3])")
    assert reply == b"f NO [UNKNOWN-CTE] unknown Content-Transfer-Encoding\r\n"


def test_binary_of_a_missing_part_is_nil(client: RawClient) -> None:
    assert client.command("f", "FETCH 1 (BINARY.PEEK[9] BINARY.SIZE[9])") == (
        b"* 1 FETCH (BINARY[9] NIL BINARY.SIZE[9] 0)\r\nf OK FETCH completed\r\n"
    )


def test_roundcube_binary_requests(client: RawClient) -> None:
    """Roundcube (rcube_imap_generic::handlePartBody) asks ``UID FETCH n (BINARY.PEEK[1])``
    and ``BINARY.SIZE[1]`` for the part size; both well-formed, no \\Seen set."""
    size = client.command("r1", "UID FETCH 1 (UID BINARY.SIZE[1])")
    assert re.fullmatch(
        rb"\* 1 FETCH \(UID 1 BINARY\.SIZE\[1\] \d+\)\r\nr1 OK FETCH completed\r\n", size
    )
    body = client.command("r2", "UID FETCH 1 (BINARY.PEEK[1])")
    # literal8 for 8-bit content, as Dovecot sends it to Roundcube (its parser takes "~{n}")
    assert re.fullmatch(
        rb"\* 1 FETCH \(BINARY\[1\] ~\{26\}\r\n.{26} UID 1\)\r\nr2 OK FETCH completed\r\n",
        body,
        re.DOTALL,
    )
    assert b"\\Seen" not in client.command("r3", "FETCH 1 FLAGS")


def test_preview_is_the_first_text_collapsed(client: RawClient) -> None:
    """RFC 8970 §3: decoded text, whitespace runs collapsed, at most 256 characters;
    UTF-8 makes it a literal in IMAP4rev1."""
    text = "Café at noon today.".encode()
    assert client.command("p", "FETCH 1 (PREVIEW (LAZY))") == (
        b"* 1 FETCH (PREVIEW {%d}\r\n" % len(text) + text + b")\r\np OK FETCH completed\r\n"
    )


def test_preview_of_plain_ascii_is_quoted(server: ServerHandle, client: RawClient) -> None:
    server.append(raw=b"Subject: x\r\n\r\n" + b"word " * 100)
    client.command("n", "NOOP")
    reply = client.command("p", "FETCH 2 PREVIEW")
    assert reply == (
        b'* 2 FETCH (PREVIEW "' + (b"word " * 52)[:256] + b'")\r\np OK FETCH completed\r\n'
    )


def test_savedate_and_objectids(server: ServerHandle, client: RawClient) -> None:
    """RFC 8514 §4.1 SAVEDATE as a date-time; RFC 8474 §5 EMAILID (M + 24 hex) and
    THREADID: a message naming no msg-id is a thread of its own, T + its EMAILID digits
    (gateway.store.objectid)."""
    emailid = email_id_of(MIXED).encode()
    threadid = b"T" + emailid[1:]
    reply = client.command("o", "FETCH 1 (SAVEDATE EMAILID THREADID)")
    assert re.fullmatch(
        rb'\* 1 FETCH \(SAVEDATE "[ 0-9]{2}-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d \+0000" '
        rb"EMAILID \(" + emailid + rb"\) THREADID \(" + threadid + rb"\)\)\r\n"
        rb"o OK FETCH completed\r\n",
        reply,
    )


def test_emailid_survives_copy_and_move_mailboxid_survives_rename(client: RawClient) -> None:
    """RFC 8474 §5.1: a copy keeps its EMAILID; §4: RENAME keeps the MAILBOXID."""
    created = client.command("c", "CREATE Keep")
    m = re.fullmatch(rb"c OK \[MAILBOXID \((F\d+)\)\] CREATE completed\r\n", created)
    assert m is not None
    mailboxid = m.group(1)
    before = client.command("e", "FETCH 1 EMAILID").split(b"\r\n")[0]
    client.command("m", "COPY 1 Keep")
    client.command("r", "RENAME Keep Kept")
    assert client.command("st", "STATUS Kept (MAILBOXID MESSAGES)") == (
        b'* STATUS "Kept" (MAILBOXID (' + mailboxid + b") MESSAGES 1)\r\nst OK STATUS completed\r\n"
    )
    selected = client.command("s2", "EXAMINE Kept")
    assert b"* OK [MAILBOXID (" + mailboxid + b")] Ok\r\n" in selected
    assert client.command("e2", "FETCH 1 EMAILID").split(b"\r\n")[0] == before


def test_search_emailid_and_threadid(client: RawClient) -> None:
    """RFC 8474 §6: SEARCH EMAILID finds the message, SEARCH THREADID its thread; an
    unknown id matches nothing."""
    emailid = email_id_of(MIXED)
    assert client.command("s", f"SEARCH EMAILID {emailid}") == (
        b"* SEARCH 1\r\ns OK SEARCH completed\r\n"
    )
    assert client.command("t", f"SEARCH THREADID T{emailid[1:]}") == (
        b"* SEARCH 1\r\nt OK SEARCH completed\r\n"
    )
    assert client.command("t", "SEARCH THREADID T1") == b"* SEARCH\r\nt OK SEARCH completed\r\n"
    assert client.command("u", "SEARCH EMAILID Mffff") == b"* SEARCH\r\nu OK SEARCH completed\r\n"


def _threaded(subject: str, msgid: str, refs: str = "", reply_to: str = "") -> bytes:
    head = f"From: a@example.org\r\nSubject: {subject}\r\nMessage-ID: <{msgid}>\r\n"
    if reply_to:
        head += f"In-Reply-To: <{reply_to}>\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    return (head + "\r\nbody\r\n").encode()


def test_threadid_groups_replies_and_is_stable(server: ServerHandle) -> None:
    """RFC 8474 §5.2: replies share their root's THREADID (first msg-id of References,
    else In-Reply-To, else the own Message-ID); it is the same in every session and
    mailbox, a copy keeps it, and SEARCH/SORT THREADID select that thread."""
    with server.login() as client:
        client.command("s", "SELECT INBOX")
        for raw in (
            _threaded("root", "r@x"),
            _threaded("Re: root", "a@x", refs="<r@x>", reply_to="r@x"),
            _threaded("Re: root", "b@x", refs="<r@x> <a@x>", reply_to="a@x"),
            _threaded("other", "o@x"),
            _threaded("Re: root", "c@x", reply_to="r@x"),
        ):
            client.command("a", b"APPEND INBOX {%d+}\r\n" % len(raw) + raw)
        client.command("n", "NOOP")
        reply = client.command("f", "FETCH 1:5 THREADID")
        ids = re.findall(rb"\* (\d) FETCH \(THREADID \((T[0-9a-f]{24})\)\)", reply)
        assert [seq for seq, _ in ids] == [b"1", b"2", b"3", b"4", b"5"]
        root = ids[0][1]
        assert [tid for _, tid in ids] == [root, root, root, ids[3][1], root]
        assert ids[3][1] != root
        assert client.command("t", b"SEARCH THREADID " + root) == (
            b"* SEARCH 1 2 3 5\r\nt OK SEARCH completed\r\n"
        )
        assert client.command("o", b"SORT (ARRIVAL) UTF-8 THREADID " + root) == (
            b"* SORT 1 2 3 5\r\no OK SORT completed\r\n"
        )
        client.command("c", "CREATE Other")
        client.command("y", "COPY 3 Other")
    with server.login() as again:
        again.command("e", "EXAMINE Other")
        assert again.command("f", "FETCH 1 THREADID") == (
            b"* 1 FETCH (THREADID (" + root + b"))\r\nf OK FETCH completed\r\n"
        )
