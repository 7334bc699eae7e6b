"""SEARCH answered like Dovecot: one mailbox delivered to both servers, many criteria compared.

Issue 17's acceptance: "SEARCH results identical to Dovecot's for a table of at least 40
criteria (including the address-comment case)". The same messages (sample mail plus
hand-made edge cases: comments and folding in addresses, dates written in odd offsets,
encoded words, multipart) go to Dovecot 2.3 (Maildir delivery) and to popgate (the store,
as the POP3 fetcher delivers), each with the same INTERNALDATE and the same flags; every
criterion's ``UID SEARCH`` answer is mapped to Message-IDs and the two sets compared.

Criteria where the two servers legitimately differ are not in the table: \\Recent and
NEW/OLD (which session sees \\Recent differs by design), and body words that only occur
inside HTML tags (popgate searches the text of HTML parts; Dovecot without FTS searches the
markup). One deliberate difference is kept out of the comparison and asserted on its own:
a message without a usable Date: has, for SENTBEFORE/SENTON/SENTSINCE, its INTERNALDATE's
day in popgate (the RFC 5256 §2.2 rule SORT uses, so SEARCH and SORT agree), where Dovecot
takes 1 Jan 1970 (it is "SENTBEFORE" every date).
"""

from __future__ import annotations

import datetime as dt
import imaplib
import pprint
import re
from email.utils import parsedate_to_datetime
from pathlib import Path

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapclient import HOST, PASSWORD, USER, running_server
from gateway.testing.samplemail import generate

SAMPLE_COUNT = 60
"""Sample messages delivered besides the hand-made edge cases."""

_EDGE: tuple[bytes, ...] = (
    # RFC 5322 §3.4: comments and folding inside an address; the address is user-from@domain.org.
    b"From: <user-from (comment)@ (comment) domain.org>\r\n"
    b"To: Alice (home) <alice@ (the box)\r\n example.org>\r\n"
    b"Subject: address with comments\r\n"
    b"Date: Mon, 01 Dec 2025 10:00:00 +0000\r\n"
    b"Message-ID: <edge-comment@test.example>\r\n"
    b"\r\n"
    b"A body.\r\n",
    # Late evening west of UTC: the day as written is 2 Dec, in UTC it is 3 Dec.
    b"From: Bob Late <bob@late.example>\r\n"
    b"To: alice@example.org\r\n"
    b'Cc: "Carol, C." <carol@cc.example>, dave@cc.example\r\n'
    b"Subject: late evening\r\n"
    b"Date: Tue, 02 Dec 2025 23:30 -0800\r\n"
    b"Message-ID: <edge-late@test.example>\r\n"
    b"\r\n"
    b"Evening text with the word zanzibar.\r\n",
    # Early morning east of UTC: the day as written is 4 Dec, in UTC it is 3 Dec.
    b'From: "Early, Eve" <eve@early.example>\r\n'
    b"To: alice@example.org\r\n"
    b"Bcc: hidden@bcc.example\r\n"
    b"Subject: =?iso-8859-1?q?caf=E9_cr=E8me?=\r\n"
    b"Date: Thu, 4 Dec 2025 01:15:00 +1300\r\n"
    b"Message-ID: <edge-early@test.example>\r\n"
    b"\r\n"
    b"Morning text.\r\n",
    # Multipart with a quoted-printable Latin-1 part and a base64 part.
    b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@mixed.example>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: =?utf-8?b?R3LDvMOfZQ==?= aus Berlin\r\n"
    b"Date: Fri, 5 Dec 2025 12:00:00 +0100\r\n"
    b"Message-ID: <edge-multipart@test.example>\r\n"
    b"X-Priority: 1\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Sch=F6ne Gr=FC=DFe aus der Stra=DFe.\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"UXVva2thIGluIGJhc2U2NA==\r\n"
    b"--b1--\r\n",
    # RFC 5322 §4.4 obsolete form: the display name in a trailing comment.
    b"From: john@paren.example (John Doe)\r\n"
    b"To: alice@example.org\r\n"
    b"Subject: name in a comment\r\n"
    b"Date: Sat, 6 Dec 2025 08:00:00 GMT\r\n"
    b"Message-ID: <edge-paren@test.example>\r\n"
    b"\r\n"
    b"Parenthesised.\r\n",
    # No Date: at all; SENT* fall back to the internal date (RFC 5256 §2.2 for both servers).
    b"From: nodate@nowhere.example\r\n"
    b"To: alice@example.org\r\n"
    b"Subject: no date here\r\n"
    b"Message-ID: <edge-nodate@test.example>\r\n"
    b"\r\n"
    b"Undated.\r\n",
)

NO_DATE = "<edge-nodate@test.example>"
"""The edge case without a Date: field (see the module docstring)."""

_EDGE_INTERNAL = dt.datetime(2025, 12, 3, 12, 0, tzinfo=dt.UTC)

CRITERIA: tuple[str, ...] = (
    "ALL",
    "SEEN",
    "UNSEEN",
    "FLAGGED",
    "UNFLAGGED",
    "ANSWERED",
    "UNANSWERED",
    "DELETED",
    "UNDELETED",
    "DRAFT",
    "KEYWORD $Forwarded",
    "UNKEYWORD $Forwarded",
    "FROM user-from@domain.org",
    "FROM domain.org",
    "FROM comment",
    "FROM alice",
    "FROM example.net",
    'FROM "Early, Eve"',
    "FROM eve@early.example",
    "TO alice@example.org",
    'TO "the box"',
    "TO undisclosed",
    "CC carol@cc.example",
    'CC "Carol"',
    "BCC hidden@bcc.example",
    "SUBJECT late",
    'SUBJECT "Recette de la"',
    "CHARSET UTF-8 SUBJECT café",
    "CHARSET UTF-8 SUBJECT Grüße",
    "CHARSET UTF-8 FROM Müller",
    "HEADER Message-ID edge",
    "HEADER From comment",
    "HEADER From user-from@domain.org",
    'HEADER To "the box"',
    'FROM "John Doe"',
    "FROM john@paren.example",
    'HEADER X-Priority ""',
    'HEADER X-Missing ""',
    "HEADER List-Id fromager",
    "BODY zanzibar",
    "BODY base64",
    "CHARSET UTF-8 BODY Grüße",
    "CHARSET UTF-8 BODY Straße",
    "TEXT zanzibar",
    "TEXT late.example",
    "BODY fromage",
    "TEXT Alice",
    "SENTON 2-Dec-2025",
    "SENTON 3-Dec-2025",
    "SENTON 4-Dec-2025",
    "SENTBEFORE 3-Dec-2025",
    "SENTSINCE 3-Dec-2025",
    "SENTSINCE 4-Dec-2025",
    "SENTBEFORE 10-Mar-2024",
    "SENTSINCE 10-Mar-2024",
    "ON 3-Dec-2025",
    "BEFORE 10-Mar-2024",
    "SINCE 10-Mar-2024",
    "LARGER 4000",
    "SMALLER 4000",
    "1:10",
    "UID 5:15",
    "OR FROM eve SUBJECT late",
    "NOT FROM example.net",
    "OR SEEN FLAGGED",
    "NOT OR SEEN FLAGGED",
    "SEEN SINCE 10-Mar-2024 NOT FLAGGED",
    "OR SENTON 2-Dec-2025 SENTON 4-Dec-2025",
)


def _messages() -> list[tuple[bytes, dt.datetime]]:
    """Sample mail then the edge cases, each with its INTERNALDATE."""
    out = []
    for raw in generate(SAMPLE_COUNT, seed=17):
        match = re.search(rb"^Date: (.*)\r$", raw, re.M)
        assert match is not None
        out.append((raw, parsedate_to_datetime(match.group(1).decode()).astimezone(dt.UTC)))
    out.extend((raw, _EDGE_INTERNAL) for raw in _EDGE)
    return out


_FLAG_PLAN = (
    ("1:10", r"(\Seen)"),
    ("5:15", r"(\Flagged)"),
    ("20:25", r"(\Answered $Forwarded)"),
    ("30,62", r"(\Deleted \Draft)"),
    (f"{SAMPLE_COUNT + 1}:{SAMPLE_COUNT + 3}", r"(\Seen)"),
)


def _answers(client: imaplib.IMAP4) -> dict[str, set[str]]:
    """Each criterion's matching Message-IDs, after applying the same flag plan."""
    client.select("INBOX")
    for sequence, flags in _FLAG_PLAN:
        typ, _ = client.store(sequence, "+FLAGS", flags)
        assert typ == "OK"
    typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK"
    ids: dict[str, str] = {}
    for item in data:
        if isinstance(item, tuple):
            uid = re.search(rb"UID (\d+)", item[0])
            mid = re.search(rb"<[^>]*>", item[1])
            assert uid is not None and mid is not None
            ids[uid.group(1).decode()] = mid.group(0).decode()
    out = {}
    for criterion in CRITERIA:
        head, _, last = criterion.rpartition(" ")
        if last.isascii():
            typ, data = client.uid("SEARCH", criterion)
        else:
            client.literal = last.encode()  # 8-bit text goes as a literal (RFC 3501 §4.3)
            typ, data = client.uid("SEARCH", head)
        assert typ == "OK", (criterion, data)
        out[criterion] = {ids[u] for u in data[0].decode().split()}
    return out


def _popgate_answers(
    tmp_path: Path, messages: list[tuple[bytes, dt.datetime]]
) -> dict[str, set[str]]:
    with running_server(tmp_path) as server:
        box = server.mailbox_id()
        for raw, when in messages:
            server.call(server.store.append, box, raw, [], when)
        client = imaplib.IMAP4(HOST, server.port)
        client.login(USER, PASSWORD)
        try:
            return _answers(client)
        finally:
            client.logout()


def _dovecot_answers(
    dovecot: Dovecot, messages: list[tuple[bytes, dt.datetime]]
) -> dict[str, set[str]]:
    for raw, when in messages:
        dovecot.deliver("alice", raw, when=when)
    client = imaplib.IMAP4(HOST, dovecot.imap_port)
    client.login("alice", "secret")
    try:
        return _answers(client)
    finally:
        client.logout()


def test_search_matches_dovecot_for_every_criterion(dovecot: Dovecot, tmp_path: Path) -> None:
    """At least 40 criteria, each answered with the same messages by popgate and Dovecot."""
    assert len(CRITERIA) >= 40
    messages = _messages()
    ours = _popgate_answers(tmp_path, messages)
    theirs = _dovecot_answers(dovecot, messages)
    assert NO_DATE in ours["SENTON 3-Dec-2025"]
    assert NO_DATE in theirs["SENTBEFORE 10-Mar-2024"]
    for criterion in CRITERIA:
        if "SENT" in criterion:
            ours[criterion].discard(NO_DATE)
            theirs[criterion].discard(NO_DATE)
    differences = {
        c: (sorted(ours[c] - theirs[c]), sorted(theirs[c] - ours[c]))
        for c in CRITERIA
        if ours[c] != theirs[c]
    }
    assert not differences, pprint.pformat(differences)
