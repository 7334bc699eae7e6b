"""Issue 17's compliance corners, byte for byte over a socket (RFC 3501).

Each test was written against a failing server first: address searches ignore comments,
a mailbox name that is not modified UTF-7 is NO and LIST with it is OK (the session goes
on), ``CHARSET US-ASCII`` refuses 8-bit strings, and a missing body part is an empty
literal as Dovecot answers. The same searches are compared with Dovecot in
``tests/test_search_differential.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store import schema
from gateway.store.sqlite import SQLiteStore
from gateway.testing.imapclient import running_server, tagged_line

COMMENTED = (
    b"From: <user-from (comment)@ (comment) domain.org>\r\n"
    b"To: Alice (home) <alice@ (the box)\r\n example.org>\r\n"
    b"Cc: john@paren.example (John Doe)\r\n"
    b"Subject: address with comments\r\n"
    b"\r\n"
    b"A body.\r\n"
)
PLAIN = b"From: bob@example.org\r\nSubject: plain\r\n\r\nText caf\xc3\xa9.\r\n"
MULTIPART = (
    b"From: a@example.org\r\nSubject: mp\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=q\r\n\r\n"
    b"--q\r\nContent-Type: text/plain\r\n\r\none\r\n"
    b"--q\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--q--\r\n"
)
INVALID_MUTF7 = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"
"""An atom holding ``&`` not followed by valid modified UTF-7 (RFC 3501 §5.1.3)."""


def test_address_search_ignores_comments_and_folding(tmp_path: Path) -> None:
    """RFC 3501 §6.4.4 FROM/TO/CC match the address as parsed: comments and folding go,
    a trailing comment stays the display name; HEADER From still matches the text as written."""
    with running_server(tmp_path) as server:
        server.append("INBOX", COMMENTED)
        server.append("INBOX", PLAIN)
        client = server.login()
        client.command("s", "SELECT INBOX")
        answers = {
            b"FROM user-from@domain.org": b"* SEARCH 1\r\n",
            b"FROM comment": b"* SEARCH\r\n",
            b"TO alice@example.org": b"* SEARCH 1\r\n",
            b'TO "the box"': b"* SEARCH\r\n",
            b'CC "John Doe"': b"* SEARCH 1\r\n",
            b"HEADER From comment": b"* SEARCH 1\r\n",
            b"HEADER From user-from@domain.org": b"* SEARCH\r\n",
            b'HEADER ":from" ""': b"* SEARCH\r\n",
            b"FROM example.org": b"* SEARCH 2\r\n",
        }
        for n, (criteria, expected) in enumerate(answers.items()):
            reply = client.command(f"t{n}", b"SEARCH " + criteria)
            assert reply == expected + f"t{n} OK SEARCH completed\r\n".encode(), criteria


def test_address_rows_added_to_messages_stored_before(tmp_path: Path) -> None:
    """The schema step adds the parsed-address rows to messages stored by an older version."""
    path = tmp_path / "popgate.sqlite"
    store = SQLiteStore(path)
    store.ensure_user("alice")
    inbox = store.get_mailbox("alice", "INBOX").id
    store.append(inbox, COMMENTED)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM header_field WHERE name LIKE ':%'")
    # Back to the version before the address step (later steps re-run after it).
    conn.execute(f"PRAGMA user_version = {schema.MIGRATIONS.index(schema._address_rows)}")
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        rows = store.db.execute(
            "SELECT name, value_folded FROM header_field WHERE name LIKE ':%' ORDER BY name"
        ).fetchall()
        assert rows == [
            (":cc", "john doe <john@paren.example>"),
            (":from", "user-from@domain.org"),
            (":to", "alice <alice@example.org>"),
        ]
    finally:
        store.close()


def test_mailbox_name_not_modified_utf7_is_no_and_session_goes_on(tmp_path: Path) -> None:
    """RFC 3501 §6.3.1: a well-formed SELECT of a name that cannot exist is NO, not BAD;
    LIST with such a pattern is OK and lists nothing; the client stays connected."""
    with running_server(tmp_path) as server:
        client = server.login()
        reply = client.command("a1", b"SELECT " + INVALID_MUTF7)
        assert reply == b"a1 NO [CANNOT] mailbox name is not valid modified UTF-7\r\n"
        reply = client.command("a2", b'LIST "" ' + INVALID_MUTF7 + b"%*")
        assert reply == b"a2 OK LIST completed\r\n"
        reply = client.command("a3", 'SELECT "caf\xc3\xa9"'.encode("latin-1"))
        assert reply == b"a3 NO [CANNOT] mailbox name is not valid modified UTF-7\r\n"
        reply = client.command("a4", b'CREATE "caf\xc3\xa9"')
        assert reply == b"a4 NO [CANNOT] mailbox name is not valid modified UTF-7\r\n"
        assert tagged_line(client.command("a5", "NOOP")) == b"a5 OK NOOP completed"


def test_search_charset_us_ascii_refuses_8bit_strings(tmp_path: Path) -> None:
    """RFC 3501 §6.4.4: strings are in the CHARSET named; 8-bit octets are not US-ASCII,
    so they are not silently read as UTF-8. Without CHARSET or with UTF-8 they are."""
    with running_server(tmp_path) as server:
        server.append("INBOX", PLAIN)
        client = server.login()
        client.command("s", "SELECT INBOX")
        reply = client.command("a1", b'SEARCH CHARSET US-ASCII BODY "caf\xc3\xa9"')
        assert reply == (
            b"a1 BAD SEARCH: a search string is not US-ASCII, the CHARSET named"
            b" (use CHARSET UTF-8)\r\n"
        )
        reply = client.command(
            "a2", b"SEARCH CHARSET US-ASCII OR BODY caf SUBJECT {5+}\r\nr\xc3\xa9sum"
        )
        assert reply.startswith(b"a2 BAD ")
        reply = client.command("a3", b'SEARCH CHARSET UTF-8 BODY "caf\xc3\xa9"')
        assert reply == b"* SEARCH 1\r\na3 OK SEARCH completed\r\n"
        reply = client.command("a4", b"SEARCH CHARSET US-ASCII BODY caf")
        assert reply == b"* SEARCH 1\r\na4 OK SEARCH completed\r\n"


def test_missing_body_part_is_an_empty_literal(tmp_path: Path) -> None:
    """A BODY[section] naming a part the message lacks is the empty literal ``{0}``, the
    same for every form of the section, as Dovecot answers (RFC 3501 §6.4.5 leaves it open;
    popgate never answers NIL for it)."""
    with running_server(tmp_path) as server:
        server.append("INBOX", PLAIN)
        server.append("INBOX", MULTIPART)
        client = server.login()
        client.command("s", "SELECT INBOX")
        reply = client.command(
            "f1", "FETCH 1 (BODY.PEEK[2] BODY.PEEK[2.MIME] BODY.PEEK[1.2] BODY.PEEK[2.TEXT])"
        )
        assert reply == (
            b"* 1 FETCH (BODY[2] {0}\r\n BODY[2.MIME] {0}\r\n BODY[1.2] {0}\r\n"
            b" BODY[2.TEXT] {0}\r\n)\r\nf1 OK FETCH completed\r\n"
        )
        reply = client.command("f2", "FETCH 2 (BODY.PEEK[3] BODY.PEEK[3]<0.2> BODY.PEEK[1])")
        assert reply == (
            b"* 2 FETCH (BODY[3] {0}\r\n BODY[3]<0> {0}\r\n BODY[1] {3}\r\none)\r\n"
            b"f2 OK FETCH completed\r\n"
        )
