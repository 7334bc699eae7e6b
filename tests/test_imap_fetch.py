"""FETCH and UID FETCH handlers (gateway.imap.messages.fetch), byte for byte.

Each test drives a real :class:`IMAPSession` over a real SQLite store on a temp file,
without a reactor (:class:`gateway.testing.imapsession.SessionDriver`): commands are parsed
by the real parser, then either handed to the handler alone (:meth:`SessionDriver.call`,
to see exactly what the handler yields) or run through the session
(:meth:`SessionDriver.run`, which adds the catch-up and the tagged line, to prove nothing
is reported twice).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap import fetch_items, messages
from gateway.imap.command import FetchAttr
from gateway.imap.fetch_items import INLINE_LITERAL_LIMIT
from gateway.imap.handler import BadCommand, Reply
from gateway.store.interfaces import MessageInfo
from gateway.testing.imapclient import (
    PASSWORD,
    USER,
    ServerHandle,
    running_server,
)
from gateway.testing.imapsession import SessionDriver

SIMPLE = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Hello\r\n"
    b"Date: Mon, 05 Feb 2024 10:11:12 +0100\r\n"
    b"Message-ID: <simple@example.org>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)

MULTI_HEADER = (
    b"From: Carol <carol@example.net>\r\n"
    b"To: Dave <dave@example.com>\r\n"
    b"Subject: Parts\r\n"
    b"Date: Tue, 06 Feb 2024 08:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
)
MULTI_TEXT = (
    b"preamble\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"First part.\r\n"
    b"--XYZ\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: Erin <erin@example.org>\r\n"
    b"Subject: Inner\r\n"
    b"\r\n"
    b"Inner body.\r\n"
    b"--XYZ--\r\n"
    b"epilogue\r\n"
)
MULTI = MULTI_HEADER + MULTI_TEXT


# ---- plain attributes ----------------------------------------------------------------


def test_flags_internaldate_size_uid_are_rendered_in_request_order(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5/§7.4.2: items come back in the order asked; FLAGS shows system
    flags (with this session's \\Recent, §2.3.2) and keywords; INTERNALDATE keeps the
    zone it was given; RFC822.SIZE is the stored octet count."""
    harness.add(SIMPLE, ("\\Flagged", "$Work"))
    harness.select()
    out, reply = harness.call(b"a FETCH 1 (UID RFC822.SIZE FLAGS INTERNALDATE)")
    assert out == (
        b"* 1 FETCH (UID 1 RFC822.SIZE %d FLAGS (\\Flagged \\Recent $Work)"
        b' INTERNALDATE " 5-Feb-2024 10:11:12 +0100")\r\n' % len(SIMPLE)
    )
    assert reply == Reply("OK", "FETCH completed")


def test_envelope_is_the_rfc3501_structure(harness: SessionDriver) -> None:
    """RFC 3501 §7.4.2 ENVELOPE: date, subject, from, sender, reply-to (both default to
    From), to, cc, bcc, in-reply-to, message-id."""
    harness.add(SIMPLE)
    harness.select()
    out, _ = harness.call(b"a FETCH 1 ENVELOPE")
    alice = b'(("Alice Example" NIL "alice" "example.org"))'
    assert out == (
        b'* 1 FETCH (ENVELOPE ("Mon, 05 Feb 2024 10:11:12 +0100" "Hello" '
        + alice
        + b" "
        + alice
        + b" "
        + alice
        + b' ((NIL NIL "bob" "example.com")) NIL NIL NIL "<simple@example.org>"))\r\n'
    )


def test_body_and_bodystructure_are_the_stored_wire_forms(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5: BODY is BODYSTRUCTURE without extension data; both are served
    from what ingest computed, for a multipart with a message/rfc822 part."""
    uid = harness.add(MULTI)
    harness.select()
    info = harness.store.message_info(harness.mailbox().id, [uid])[0]
    out, _ = harness.call(b"a FETCH 1 (BODY BODYSTRUCTURE)")
    assert out == b"* 1 FETCH (BODY %s BODYSTRUCTURE %s)\r\n" % (info.body, info.bodystructure)
    assert info.bodystructure.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii")')
    assert b'"MESSAGE" "RFC822"' in info.body
    assert b'"MIXED"' in info.body


# ---- body sections -------------------------------------------------------------------

SECTIONS = [
    ("", MULTI),
    ("HEADER", MULTI_HEADER),
    ("TEXT", MULTI_TEXT),
    ("HEADER.FIELDS (SUBJECT FROM)", b"From: Carol <carol@example.net>\r\nSubject: Parts\r\n\r\n"),
    (
        "HEADER.FIELDS.NOT (FROM TO DATE MIME-VERSION CONTENT-TYPE)",
        b"Subject: Parts\r\n\r\n",
    ),
    ("1", b"First part."),
    ("1.MIME", b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"),
    ("2", b"From: Erin <erin@example.org>\r\nSubject: Inner\r\n\r\nInner body."),
    ("2.MIME", b"Content-Type: message/rfc822\r\n\r\n"),
    ("2.HEADER", b"From: Erin <erin@example.org>\r\nSubject: Inner\r\n\r\n"),
    ("2.TEXT", b"Inner body."),
    ("2.HEADER.FIELDS (SUBJECT)", b"Subject: Inner\r\n\r\n"),
    ("2.1", b"Inner body."),
    ("3", b""),
]


@pytest.mark.parametrize(("section", "data"), SECTIONS)
def test_body_section_is_a_literal_of_the_exact_bytes(
    harness: SessionDriver, section: str, data: bytes
) -> None:
    """RFC 3501 §6.4.5 section spec on a multipart fixture, nested parts included; the
    value is always a literal (§4.3), empty for a part that does not exist."""
    harness.add(MULTI)
    harness.select()
    out, _ = harness.call(b"a FETCH 1 BODY.PEEK[%s]" % section.encode())
    assert out == b"* 1 FETCH (BODY[%s] {%d}\r\n%s)\r\n" % (section.encode(), len(data), data)


@pytest.mark.parametrize(
    ("partial", "name", "data"),
    [
        (b"<0.4>", b"BODY[]<0>", b"From"),
        (b"<6.5>", b"BODY[]<6>", b"Alice"),
        (b"<%d.100>" % (len(SIMPLE) - 3), b"BODY[]<%d>" % (len(SIMPLE) - 3), b".\r\n"),
        (b"<100000.10>", b"BODY[]<100000>", b""),
    ],
)
def test_partial_fetch_slices_and_names_the_origin(
    harness: SessionDriver, partial: bytes, name: bytes, data: bytes
) -> None:
    """RFC 3501 §6.4.5 ``<origin.octets>``: the response is named ``BODY[]<origin>``; a
    count past the end is truncated, an origin past the end gives the empty string."""
    harness.add(SIMPLE)
    harness.select()
    out, _ = harness.call(b"a FETCH 1 BODY.PEEK[]" + partial)
    assert out == b"* 1 FETCH (%s {%d}\r\n%s)\r\n" % (name, len(data), data)


def test_partial_applies_after_the_section_is_cut(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5: the partial range counts octets of the section, not the message."""
    harness.add(MULTI)
    harness.select()
    out, _ = harness.call(b"a FETCH 1 BODY.PEEK[2.TEXT]<2.3>")
    assert out == b"* 1 FETCH (BODY[2.TEXT]<2> {3}\r\nner)\r\n"


def test_rfc822_forms_answer_under_their_own_names(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5: RFC822 ≡ BODY[], RFC822.HEADER ≡ BODY.PEEK[HEADER], RFC822.TEXT
    ≡ BODY[TEXT], each returned under its RFC822 name (§7.4.2)."""
    harness.add(MULTI)
    harness.select(examine=True)  # read-only: no \Seen side effect to muddy the bytes
    out, _ = harness.call(b"a FETCH 1 (RFC822.HEADER RFC822.TEXT RFC822)")
    assert out == (
        b"* 1 FETCH (RFC822.HEADER {%d}\r\n%s RFC822.TEXT {%d}\r\n%s RFC822 {%d}\r\n%s)\r\n"
        % (len(MULTI_HEADER), MULTI_HEADER, len(MULTI_TEXT), MULTI_TEXT, len(MULTI), MULTI)
    )


def test_duplicate_items_are_answered_once(harness: SessionDriver) -> None:
    """RFC 3501 §7.4.2 gives each item once per response: BODY[] and BODY.PEEK[] share
    a name, FLAGS asked twice is one FLAGS."""
    harness.add(SIMPLE, ("\\Seen",))
    harness.select()
    out, _ = harness.call(b"a FETCH 1 (FLAGS BODY.PEEK[TEXT] FLAGS BODY[TEXT])")
    assert out == b"* 1 FETCH (FLAGS (\\Recent \\Seen) BODY[TEXT] {9}\r\nHi Bob.\r\n)\r\n"


# ---- the \Seen side effect -----------------------------------------------------------


def test_body_fetch_sets_seen_and_reports_flags_exactly_once(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5: BODY[section] sets \\Seen; the changed flags are returned in the
    same FETCH response, and the session's catch-up does not repeat them."""
    harness.add(MULTI)
    harness.select()
    out = harness.run(b"a FETCH 1 BODY[1]")
    assert (
        out
        == b"* 1 FETCH (BODY[1] {11}\r\nFirst part. FLAGS (\\Recent \\Seen))\r\na OK FETCH completed\r\n"
    )
    info = harness.store.message_info(harness.mailbox().id, [1])[0]
    assert "\\Seen" in info.flags
    assert harness.run(b"b NOOP") == b"b OK NOOP completed\r\n"
    again = harness.run(b"c FETCH 1 BODY[1]")
    assert again == b"* 1 FETCH (BODY[1] {11}\r\nFirst part.)\r\nc OK FETCH completed\r\n"


def test_seen_side_effect_uses_the_requested_flags_position(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5: when FLAGS was asked for too, it carries the new \\Seen, once."""
    harness.add(SIMPLE)
    harness.select()
    out, _ = harness.call(b"a FETCH 1 (FLAGS RFC822.TEXT)")
    assert out == b"* 1 FETCH (FLAGS (\\Recent \\Seen) RFC822.TEXT {9}\r\nHi Bob.\r\n)\r\n"


@pytest.mark.parametrize("item", [b"BODY.PEEK[]", b"BODY.PEEK[1]", b"RFC822.HEADER"])
def test_peek_forms_do_not_set_seen(harness: SessionDriver, item: bytes) -> None:
    """RFC 3501 §6.4.5: BODY.PEEK and RFC822.HEADER leave \\Seen alone."""
    harness.add(MULTI)
    harness.select()
    out = harness.run(b"a FETCH 1 " + item)
    assert b"FLAGS" not in out
    assert "\\Seen" not in harness.store.message_info(harness.mailbox().id, [1])[0].flags


@pytest.mark.parametrize("item", [b"BODY[]", b"RFC822", b"RFC822.TEXT"])
def test_read_only_mailbox_never_sets_seen(harness: SessionDriver, item: bytes) -> None:
    """RFC 3501 §6.3.2: EXAMINE is read-only, so even a non-PEEK fetch changes nothing."""
    harness.add(MULTI)
    harness.select(examine=True)
    out = harness.run(b"a FETCH 1 " + item)
    assert b"FLAGS" not in out
    assert "\\Seen" not in harness.store.message_info(harness.mailbox().id, [1])[0].flags


def test_already_seen_message_gets_no_extra_flags(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.5: flags are only added to the response when \\Seen changed them."""
    harness.add(SIMPLE, ("\\Seen",))
    harness.select()
    out, _ = harness.call(b"a FETCH 1 RFC822")
    assert out == b"* 1 FETCH (RFC822 {%d}\r\n%s)\r\n" % (len(SIMPLE), SIMPLE)


# ---- UID FETCH, sets, batching, streaming --------------------------------------------


def test_uid_fetch_always_includes_uid_and_uses_uids(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.8: UID FETCH takes UIDs, ignores ones that do not exist, and
    returns UID even when not asked for."""
    for _ in range(3):
        harness.add(SIMPLE)
    harness.store.store_flags(harness.mailbox().id, [2], "+", ["\\Deleted"])
    harness.store.expunge(harness.mailbox().id)
    harness.select()
    out, reply = harness.call(b"a UID FETCH 2:3 RFC822.SIZE")
    assert out == b"* 2 FETCH (RFC822.SIZE %d UID 3)\r\n" % len(SIMPLE)
    assert reply.status == "OK"


def test_fetch_across_batches_returns_every_message_in_order(
    harness: SessionDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 3501 §6.4.5 over several store batches (``INFO_BATCH``, made small here): one
    response per message, ascending, none lost or repeated at a batch boundary, and the
    \\Seen side effect applied in every batch."""
    monkeypatch.setattr(messages, "INFO_BATCH", 2)
    box = harness.mailbox().id
    for i in range(7):
        harness.store.append(box, b"Subject: %d\r\n\r\nx\r\n" % i)
    harness.select(examine=True)
    out, _ = harness.call(b"a FETCH 1:* UID")
    assert out == b"".join(b"* %d FETCH (UID %d)\r\n" % (n, n) for n in range(1, 8))
    harness.select()
    out, _ = harness.call(b"b FETCH 2:* BODY[TEXT]")
    assert out == b"".join(
        b"* %d FETCH (BODY[TEXT] {3}\r\nx\r\n FLAGS (\\Recent \\Seen))\r\n" % n for n in range(2, 8)
    )


def test_large_literal_is_yielded_in_pieces(harness: SessionDriver) -> None:
    """handler.py contract: a big literal streams in bounded chunks (backpressure), and
    the bytes are still exactly ``BODY[] {n}`` + message (RFC 3501 §4.3)."""
    body = b"".join(b"line %06d of a long message body\r\n" % i for i in range(9000))
    raw = b"Subject: big\r\n\r\n" + body
    assert len(raw) > 4 * INLINE_LITERAL_LIMIT
    harness.add(raw)
    harness.select()
    chunks, _ = harness.chunks(b"a UID FETCH 1 (BODY.PEEK[] RFC822.SIZE)")
    assert len(chunks) > 4
    assert max(len(c) for c in chunks) <= messages.LITERAL_PIECE
    assert b"".join(chunks) == b"* 1 FETCH (BODY[] {%d}\r\n%s RFC822.SIZE %d UID 1)\r\n" % (
        len(raw),
        raw,
        len(raw),
    )


def test_two_large_literals_in_one_response(harness: SessionDriver) -> None:
    """RFC 3501 §7.4.2: several streamed literals in one FETCH keep the syntax intact."""
    body = b"x" * (3 * INLINE_LITERAL_LIMIT) + b"\r\n"
    raw = b"Subject: two\r\n\r\n" + body
    harness.add(raw)
    harness.select(examine=True)
    out, _ = harness.call(b"a FETCH 1 (BODY[TEXT] FLAGS BODY[])")
    assert out == b"* 1 FETCH (BODY[TEXT] {%d}\r\n%s FLAGS (\\Recent) BODY[] {%d}\r\n%s)\r\n" % (
        len(body),
        body,
        len(raw),
        raw,
    )


def test_sequence_fetch_of_a_message_expunged_elsewhere_is_expungeissued(
    harness: SessionDriver,
) -> None:
    """RFC 3501 §7.4.1 keeps sequence numbers stable during FETCH, so a message another
    session expunged is still numbered; the rest is returned and the tagged reply says
    so with OK [EXPUNGEISSUED] (RFC 5530). UID FETCH simply omits it (§6.4.8)."""
    for _ in range(3):
        harness.add(SIMPLE)
    harness.select()
    box = harness.mailbox().id
    harness.store.store_flags(box, [2], "+", ["\\Deleted"])
    harness.store.expunge(box)
    out, reply = harness.call(b"a FETCH 1:3 UID")
    assert out == b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n"
    assert (reply.status, reply.code) == ("OK", "EXPUNGEISSUED")
    out, reply = harness.call(b"b UID FETCH 1:3 UID")
    assert out == b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n"
    assert reply.status == "OK"


# ---- CONDSTORE / QRESYNC -------------------------------------------------------------


def test_modseq_item_returns_the_message_modseq(harness: SessionDriver) -> None:
    """RFC 7162 §3.1.4: ``MODSEQ (n)`` is the message's mod-sequence; asking for it is a
    CONDSTORE enabling command, so the session then announces HIGHESTMODSEQ (§3.1)."""
    harness.add(SIMPLE)
    harness.select()
    row = harness.store.store_flags(harness.mailbox().id, [1], "+", ["$A"]).updated[0]
    out = harness.run(b"a FETCH 1 (MODSEQ)")
    assert out.startswith(b"* 1 FETCH (MODSEQ (%d))\r\n" % row.modseq)
    assert b"* OK [HIGHESTMODSEQ %d]" % row.modseq in out
    assert harness.session.condstore_active()


def test_changedsince_returns_only_newer_messages_with_modseq(harness: SessionDriver) -> None:
    """RFC 7162 §3.1.4.1: CHANGEDSINCE limits the answer to messages whose modseq is
    greater, and implies MODSEQ in each response."""
    for _ in range(3):
        harness.add(SIMPLE)
    harness.select()
    box = harness.mailbox().id
    before = harness.mailbox().highestmodseq
    row = harness.store.store_flags(box, [2], "+", ["\\Flagged"]).updated[0]
    out, _ = harness.call(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % before)
    assert out == b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n" % row.modseq
    out, _ = harness.call(b"b FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % row.modseq)
    assert out == b""


def test_changedsince_flags_are_not_reported_again_by_the_catch_up(harness: SessionDriver) -> None:
    """RFC 7162 §3.1.4.1 with RFC 3501 §7: a flag change the FETCH already showed is
    not sent a second time as an unsolicited FETCH."""
    for _ in range(2):
        harness.add(SIMPLE)
    harness.select()
    before = harness.mailbox().highestmodseq
    harness.store.store_flags(harness.mailbox().id, [2], "+", ["\\Answered"])
    out = harness.run(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % before)
    assert out.count(b"FETCH (") == 1


def test_condstore_active_adds_modseq_and_seen_change_adds_uid(harness: SessionDriver) -> None:
    """RFC 7162 §3.1: once CONDSTORE is enabled, FETCH responses carry MODSEQ, and a FETCH
    caused by an implicit \\Seen carries UID and MODSEQ."""
    harness.add(SIMPLE)
    assert b"OK" in harness.run(b"E ENABLE CONDSTORE")
    harness.select()
    out, _ = harness.call(b"a FETCH 1 BODY[TEXT]")
    modseq = harness.store.message_info(harness.mailbox().id, [1])[0].modseq
    assert out == (
        b"* 1 FETCH (BODY[TEXT] {9}\r\nHi Bob.\r\n MODSEQ (%d) FLAGS (\\Recent \\Seen) UID 1)\r\n"
        % modseq
    )


def test_vanished_reports_expunged_uids_before_the_fetch_data(harness: SessionDriver) -> None:
    """RFC 7162 §3.2.6: UID FETCH ... (CHANGEDSINCE n VANISHED) first sends
    ``* VANISHED (EARLIER)`` for UIDs of the set expunged after n, then the FETCHes."""
    for _ in range(5):
        harness.add(SIMPLE)
    assert b"OK" in harness.run(b"E ENABLE QRESYNC")
    harness.select()
    box = harness.mailbox().id
    before = harness.mailbox().highestmodseq
    harness.store.store_flags(box, [2, 5], "+", ["\\Deleted"])
    harness.store.expunge(box)
    row = harness.store.store_flags(box, [3], "+", ["\\Flagged"]).updated[0]
    out, _ = harness.call(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % before)
    assert out == (
        b"* VANISHED (EARLIER) 2,5\r\n"
        b"* 3 FETCH (FLAGS (\\Flagged \\Recent) UID 3 MODSEQ (%d))\r\n" % row.modseq
    )
    out, _ = harness.call(b"b UID FETCH 3:4 (FLAGS) (CHANGEDSINCE %d VANISHED)" % before)
    assert not out.startswith(b"* VANISHED")


def test_vanished_needs_qresync_enabled(harness: SessionDriver) -> None:
    """RFC 7162 §3.2.6: the VANISHED modifier is only valid once QRESYNC is enabled."""
    harness.add(SIMPLE)
    harness.select()
    with pytest.raises(BadCommand):
        harness.call(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")


# ---- over a real socket, with real client libraries ---------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        yield handle


def test_imapclient_parses_every_fetch_item(server: ServerHandle) -> None:
    """RFC 3501 §7.4.2 as a real client library reads it: ENVELOPE, BODYSTRUCTURE,
    flags, sizes, sections and partials over the in-process server."""
    server.append(raw=SIMPLE, flags=("\\Flagged",))
    server.append(raw=MULTI)
    client = server.imapclient()
    try:
        client.select_folder("INBOX")
        items = [
            "FLAGS",
            "RFC822.SIZE",
            "ENVELOPE",
            "BODYSTRUCTURE",
            "BODY.PEEK[2.HEADER]",
            "BODY.PEEK[1]<0.5>",
        ]
        got = client.fetch([1, 2], items)
        envelope = got[1][b"ENVELOPE"]
        assert envelope.subject == b"Hello"
        assert (envelope.from_[0].mailbox, envelope.from_[0].host) == (b"alice", b"example.org")
        assert got[1][b"FLAGS"] == (b"\\Flagged", b"\\Recent")
        assert got[1][b"RFC822.SIZE"] == len(SIMPLE)
        assert got[2][b"BODYSTRUCTURE"].is_multipart
        assert (
            got[2][b"BODY[2.HEADER]"] == b"From: Erin <erin@example.org>\r\nSubject: Inner\r\n\r\n"
        )
        assert got[2][b"BODY[1]<0>"] == b"First"
    finally:
        client.logout()


def test_imaplib_receives_a_large_message_intact(server: ServerHandle) -> None:
    """handler.py streaming contract end to end: a 3 MB literal crosses the socket in
    pieces with backpressure and arrives byte for byte (RFC 3501 §4.3)."""
    raw = b"Subject: big\r\n\r\n" + b"".join(
        b"%07d abcdefghijklmnopqrstuvwxyz\r\n" % i for i in range(90000)
    )
    server.append(raw=raw)
    client = server.imaplib_client()
    try:
        client.login(USER, PASSWORD)
        client.select("INBOX")
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][0] == b"1 (BODY[] {%d}" % len(raw)
        assert data[0][1] == raw
    finally:
        client.logout()


def test_seen_side_effect_over_the_wire(server: ServerHandle) -> None:
    """RFC 3501 §6.4.5 through the real server: BODY[1] sets \\Seen, FLAGS comes once in
    the FETCH response and NOOP does not repeat it."""
    server.append(raw=MULTI)
    with server.connect() as client:
        client.login()
        client.command("s", "SELECT INBOX")
        assert client.command("a", "FETCH 1 (BODY[1])") == (
            b"* 1 FETCH (BODY[1] {11}\r\nFirst part. FLAGS (\\Recent \\Seen))\r\n"
            b"a OK FETCH completed\r\n"
        )
        assert client.command("b", "NOOP") == b"b OK NOOP completed\r\n"


@pytest.mark.parametrize(
    "names",
    [
        ("FLAGS", "UID", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE"),
        ("BODYSTRUCTURE", "MODSEQ", "FLAGS"),
        ("UID", "BODY"),
        ("ENVELOPE",),
    ],
)
def test_one_format_plan_renders_exactly_what_the_item_loop_renders(
    names: tuple[str, ...],
) -> None:
    """Plans of stored items only take the one-format path (issue 19): byte for byte the
    general loop's response, with and without \\Recent among the flags."""
    info = MessageInfo(
        7,
        frozenset({"\\Seen", "$Label"}),
        42,
        1234,
        datetime.datetime(2024, 2, 5, 10, 11, 12, tzinfo=datetime.UTC),
        b'("Mon, 5 Feb 2024 10:11:12 +0000" "100% off" NIL NIL NIL NIL NIL NIL NIL NIL)',
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 1 NIL NIL NIL NIL)',
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 1)',
        "{}",
    )
    plan = fetch_items.compile_plan([FetchAttr(n) for n in names], False, False)
    assert plan.template is not None
    general = dataclasses.replace(plan, template=None, picks=None)
    flags = info.flags if plan.has_flags else None
    for shown in (flags, None if flags is None else flags | {"\\Recent"}):
        fast = fetch_items.render(plan, 3, info, shown, info.modseq, None)
        assert fast == fetch_items.render(general, 3, info, shown, info.modseq, None)
    # An implicit FLAGS/UID after a \Seen side effect goes the general way.
    assert fetch_items.render(plan, 3, info, info.flags, 43, None, (fetch_items.UID,))[0].endswith(
        b" UID 7)\r\n"
    )
