"""STORE and SEARCH handlers (messages.store, searching.search), byte for byte.

Uses :class:`gateway.testing.imapsession.SessionDriver`: a real session and SQLite store, the
handler driven alone (``call``) or through the session with its catch-up (``run``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap.handler import BadCommand, Refused, Reply
from gateway.store.search import MAX_SEARCH_DEPTH
from gateway.testing.imapclient import ServerHandle, running_server
from gateway.testing.imapsession import SessionDriver
from gateway.testing.messages import message

UTC = datetime.UTC


def plain(n: int) -> bytes:
    return message(f"message {n}", f"body {n}\r\n", None, to=None, date=None, message_id=None)


def quiet_select(harness: SessionDriver, count: int) -> None:
    """``count`` messages, selected twice so that none is \\Recent any more (RFC 3501
    §2.3.2: only the first session to see a message gets \\Recent), keeping expected
    flag lists short."""
    for n in range(1, count + 1):
        harness.add(plain(n))
    harness.select()
    harness.select()


# ---- STORE -----------------------------------------------------------------------------


def test_store_replace_add_remove(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.6: FLAGS replaces, +FLAGS adds, -FLAGS removes; each message of the
    set is answered with its new flags."""
    quiet_select(harness, 2)
    out, reply = harness.call(b"a STORE 1 FLAGS (\\Seen $Label)")
    assert out == b"* 1 FETCH (FLAGS (\\Seen $Label))\r\n"
    assert reply == Reply("OK", "STORE completed")
    out, _ = harness.call(b"b STORE 1:2 +FLAGS (\\Flagged)")
    assert out == (
        b"* 1 FETCH (FLAGS (\\Flagged \\Seen $Label))\r\n* 2 FETCH (FLAGS (\\Flagged))\r\n"
    )
    out, _ = harness.call(b"c STORE 1 -FLAGS (\\seen $label)")
    assert out == b"* 1 FETCH (FLAGS (\\Flagged))\r\n"
    rows = harness.store.message_rows(harness.mailbox().id)
    assert [r.flags for r in rows] == [{"\\Flagged"}, {"\\Flagged"}]


def test_store_answers_unchanged_messages_too(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.6: the untagged FETCH goes to every message of the set, also when
    its flags did not change, carrying its current flags."""
    quiet_select(harness, 2)
    harness.store.store_flags(harness.mailbox().id, [2], "+", ["\\Seen"])
    out, _ = harness.call(b"a STORE 1:2 +FLAGS (\\Seen)")
    assert out == b"* 1 FETCH (FLAGS (\\Seen))\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"


def test_store_shows_changes_by_others_once(harness: SessionDriver) -> None:
    """RFC 3501 §7.4.2: a message's FLAGS in the STORE answer includes what another
    session set meanwhile, and the catch-up then does not send it again."""
    quiet_select(harness, 2)
    harness.store.store_flags(harness.mailbox().id, [2], "+", ["$Other"])
    out = harness.run(b"a STORE 2 +FLAGS ($Other)")
    assert out == b"* 2 FETCH (FLAGS ($Other))\r\na OK STORE completed\r\n"
    assert harness.run(b"b NOOP") == b"b OK NOOP completed\r\n"


def test_store_ignores_recent(harness: SessionDriver) -> None:
    """RFC 3501 §2.3.2: \\Recent cannot be altered by the client; it stays as shown."""
    harness.add(plain(1))
    harness.select()
    out, _ = harness.call(b"a STORE 1 +FLAGS (\\Recent \\Draft)")
    assert out == b"* 1 FETCH (FLAGS (\\Draft \\Recent))\r\n"
    out, _ = harness.call(b"b STORE 1 FLAGS ()")
    assert out == b"* 1 FETCH (FLAGS (\\Recent))\r\n"


def test_uid_store_includes_uid(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.8: UID STORE takes UIDs and its FETCH responses include UID."""
    for n in range(1, 4):
        harness.add(plain(n))
    box = harness.mailbox().id
    harness.store.store_flags(box, [1], "+", ["\\Deleted"])
    harness.store.expunge(box)
    harness.select()
    harness.select()
    out, _ = harness.call(b"a UID STORE 3 +FLAGS (\\Answered)")
    assert out == b"* 2 FETCH (FLAGS (\\Answered) UID 3)\r\n"


def test_silent_store_sends_nothing_and_catch_up_stays_quiet(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.6 .SILENT: no untagged FETCH for the change the client made, not
    even later from the catch-up."""
    quiet_select(harness, 2)
    assert harness.run(b"a STORE 1:2 +FLAGS.SILENT (\\Seen)") == b"a OK STORE completed\r\n"
    assert harness.run(b"b NOOP") == b"b OK NOOP completed\r\n"
    rows = harness.store.message_rows(harness.mailbox().id)
    assert all(r.flags == {"\\Seen"} for r in rows)


def test_silent_store_still_reports_flags_the_client_cannot_infer(harness: SessionDriver) -> None:
    """RFC 3501 §6.4.6/§7.4.2: when another session changed the message too, the client
    cannot know the result from its own request, so FLAGS is sent (once)."""
    quiet_select(harness, 1)
    harness.store.store_flags(harness.mailbox().id, [1], "+", ["$Other"])
    out = harness.run(b"a STORE 1 +FLAGS.SILENT (\\Seen)")
    assert out == b"* 1 FETCH (FLAGS (\\Seen $Other))\r\na OK STORE completed\r\n"
    assert harness.run(b"b NOOP") == b"b OK NOOP completed\r\n"


def test_store_on_read_only_mailbox_is_refused(harness: SessionDriver) -> None:
    """RFC 3501 §6.3.2: EXAMINE opens the mailbox read-only; STORE answers NO."""
    harness.add(plain(1))
    harness.select(examine=True)
    with pytest.raises(Refused) as refused:
        harness.call(b"a STORE 1 +FLAGS (\\Seen)")
    assert refused.value.code == "READ-ONLY"
    assert harness.store.message_rows(harness.mailbox().id)[0].flags == {"\\Recent"}


def test_store_unknown_system_flag_is_bad(harness: SessionDriver) -> None:
    """RFC 3501 §2.3.2: only the defined system flags exist; ``\\Bogus`` is not a flag a
    client may set (PERMANENTFLAGS lists \\* for keywords only)."""
    quiet_select(harness, 1)
    with pytest.raises(BadCommand):
        harness.call(b"a STORE 1 +FLAGS (\\Bogus)")


def _unchangedsince_setup(harness: SessionDriver) -> tuple[int, int]:
    """UIDs 2..5 as sequence numbers 1..4; UIDs 3 and 5 changed after ``since``."""
    for n in range(1, 6):
        harness.add(plain(n))
    box = harness.mailbox().id
    harness.store.store_flags(box, [1], "+", ["\\Deleted"])
    harness.store.expunge(box)
    harness.select()
    harness.select()
    since = harness.mailbox().highestmodseq
    harness.store.store_flags(box, [3, 5], "+", ["$Other"])
    return box, since


def test_unchangedsince_refuses_modified_messages_with_sequence_numbers(
    harness: SessionDriver,
) -> None:
    """RFC 7162 §3.1.3: messages changed after UNCHANGEDSINCE are left alone and listed
    in ``OK [MODIFIED set]`` (sequence numbers for STORE); the others are stored and
    answered with MODSEQ (and UID, CONDSTORE being now enabled, §3.1)."""
    box, since = _unchangedsince_setup(harness)
    out, reply = harness.call(b"a STORE 1:4 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % since)
    rows = {r.uid: r for r in harness.store.message_rows(box)}
    assert out == (
        b"* 1 FETCH (FLAGS (\\Seen) UID 2 MODSEQ (%d))\r\n"
        b"* 3 FETCH (FLAGS (\\Seen) UID 4 MODSEQ (%d))\r\n" % (rows[2].modseq, rows[4].modseq)
    )
    assert reply == Reply("OK", "Conditional STORE failed", "MODIFIED 2,4")
    assert rows[3].flags == {"$Other"} and rows[5].flags == {"$Other"}


def test_uid_store_unchangedsince_lists_uids(harness: SessionDriver) -> None:
    """RFC 7162 §3.1.3: for UID STORE the MODIFIED set holds UIDs."""
    _box, since = _unchangedsince_setup(harness)
    _out, reply = harness.call(b"a UID STORE 2:5 (UNCHANGEDSINCE %d) -FLAGS (\\Seen)" % since)
    assert reply.code == "MODIFIED 3,5"


def test_silent_unchangedsince_reports_only_modseq(harness: SessionDriver) -> None:
    """RFC 7162 §3.1.3 (example with +FLAGS.SILENT): updated messages still get their
    new MODSEQ in an untagged FETCH; FLAGS is left out."""
    box, since = _unchangedsince_setup(harness)
    out, reply = harness.call(b"a STORE 1,2 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Deleted)" % since)
    modseq = harness.store.message_rows(box)[0].modseq
    assert out == b"* 1 FETCH (UID 2 MODSEQ (%d))\r\n" % modseq
    assert reply.code == "MODIFIED 2"


def test_unchangedsince_zero_refuses_everything(harness: SessionDriver) -> None:
    """RFC 7162 §3.1.3: UNCHANGEDSINCE 0 always fails (every modseq is above 0)."""
    quiet_select(harness, 2)
    out, reply = harness.call(b"a STORE 1:2 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert out == b""
    assert reply.code == "MODIFIED 1:2"


# ---- SEARCH ----------------------------------------------------------------------------

FIXTURES = {
    1: (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Alpha report\r\n"
        b"Date: Thu, 01 Feb 2024 09:00:00 +0000\r\n\r\napples and pears\r\n",
        ("\\Seen", "\\Answered"),
        datetime.datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
    ),
    2: (b"Subject: Gone\r\n\r\nx\r\n", ("\\Deleted",), datetime.datetime(2024, 3, 1, tzinfo=UTC)),
    3: (
        b"From: Carol <carol@example.net>\r\nTo: bob@example.com\r\nCc: dave@example.com\r\n"
        b"Subject: Beta\r\nDate: Fri, 02 Feb 2024 09:00:00 +0000\r\n\r\nbananas\r\n",
        ("\\Flagged", "$Work"),
        datetime.datetime(2024, 3, 2, 12, 0, tzinfo=UTC),
    ),
    4: (
        b"From: Erin <erin@example.org>\r\nTo: zed@example.com\r\nBcc: frank@example.com\r\n"
        b"Subject: Gamma alpha\r\nX-Priority: high\r\nDate: Sat, 03 Feb 2024 09:00:00 +0000\r\n"
        b"\r\ncherries\r\n" + b"filler line of text\r\n" * 100,
        ("\\Draft",),
        datetime.datetime(2024, 3, 3, 12, 0, tzinfo=UTC),
    ),
    5: (
        b"Subject: Gone too\r\n\r\ny\r\n",
        ("\\Deleted",),
        datetime.datetime(2024, 3, 1, tzinfo=UTC),
    ),
    6: (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Delta\r\n"
        b"Date: Sun, 04 Feb 2024 09:00:00 +0000\r\n\r\ndates\r\n",
        ("\\Deleted",),
        datetime.datetime(2024, 3, 4, 12, 0, tzinfo=UTC),
    ),
}
LATE = (
    b"From: Gina <gina@example.com>\r\nTo: bob@example.com\r\nSubject: Epsilon\r\n"
    b"Date: Mon, 05 Feb 2024 09:00:00 +0000\r\n\r\nelderberries\r\n"
)
UIDS = [1, 3, 4, 6, 7]
"""The view after setup: sequence number n is UIDS[n - 1] (2 and 5 were expunged)."""


@pytest.fixture
def mailbox(harness: SessionDriver) -> SessionDriver:
    """UIDs 1..6, of which 2 and 5 are expunged before selection; UID 7 arrives after
    selection and is the only \\Recent one. So sequence numbers differ from UIDs."""
    for uid, (raw, flags, date) in FIXTURES.items():
        assert harness.add(raw, flags, date) == uid
    box = harness.mailbox().id
    harness.store.expunge(box, [2, 5])
    harness.select()
    harness.select()
    assert harness.add(LATE, (), datetime.datetime(2024, 3, 5, 12, 0, tzinfo=UTC)) == 7
    assert b"* 5 EXISTS" in harness.run(b"n NOOP")
    return harness


SEARCHES = [
    (b"ALL", [1, 2, 3, 4, 5]),
    (b"SEEN", [1]),
    (b"UNSEEN", [2, 3, 4, 5]),
    (b"ANSWERED", [1]),
    (b"UNANSWERED", [2, 3, 4, 5]),
    (b"FLAGGED", [2]),
    (b"UNFLAGGED", [1, 3, 4, 5]),
    (b"DELETED", [4]),
    (b"UNDELETED", [1, 2, 3, 5]),
    (b"DRAFT", [3]),
    (b"UNDRAFT", [1, 2, 4, 5]),
    (b"KEYWORD $Work", [2]),
    (b"UNKEYWORD $Work", [1, 3, 4, 5]),
    (b"RECENT", [5]),
    (b"NEW", [5]),
    (b"OLD", [1, 2, 3, 4]),
    (b"FROM alice", [1, 4]),
    (b'FROM "example.net"', [2]),
    (b"TO bob", [1, 2, 4, 5]),
    (b"CC dave", [2]),
    (b"BCC frank", [3]),
    (b"SUBJECT alpha", [1, 3]),
    (b"HEADER X-Priority high", [3]),
    (b'HEADER X-Priority ""', [3]),
    (b"BODY bananas", [2]),
    (b"BODY Carol", []),
    (b"TEXT Carol", [2]),
    (b"BEFORE 3-Mar-2024", [1, 2]),
    (b"ON 3-Mar-2024", [3]),
    (b"SINCE 4-Mar-2024", [4, 5]),
    (b"BEFORE 3-Feb-2024", []),
    (b"SENTBEFORE 2-Feb-2024", [1]),
    (b"SENTON 4-Feb-2024", [4]),
    (b"SENTSINCE 3-Feb-2024", [3, 4, 5]),
    (b"LARGER 1000", [3]),
    (b"SMALLER 1000", [1, 2, 4, 5]),
    (b"2:3", [2, 3]),
    (b"*", [5]),
    (b"4:*", [4, 5]),
    (b"2,4", [2, 4]),
    (b"UID 3:6", [2, 3, 4]),
    (b"UID 2", []),
    (b"UID *", [5]),
    (b"NOT SEEN", [2, 3, 4, 5]),
    (b"NOT 1:3", [4, 5]),
    (b"OR FLAGGED DRAFT", [2, 3]),
    (b"OR 1 UID 7", [1, 5]),
    (b"(FROM alice SUBJECT delta)", [4]),
    (b"FROM alice UNDELETED", [1]),
    (b"CHARSET UTF-8 SUBJECT beta", [2]),
]


@pytest.mark.parametrize(("key", "seqs"), SEARCHES, ids=[k.decode() for k, _ in SEARCHES])
def test_search_answers_sequence_numbers_and_uid_search_uids(
    mailbox: SessionDriver, key: bytes, seqs: list[int]
) -> None:
    """RFC 3501 §6.4.4 every search key kind, with sequence-number keys resolved against
    this session's numbering (not UIDs); SEARCH answers sequence numbers, UID SEARCH
    (§6.4.8) answers UIDs; ``* SEARCH`` alone when nothing matches (§7.2.5)."""
    out, reply = mailbox.call(b"a SEARCH " + key)
    assert out == b"".join([b"* SEARCH", *(b" %d" % s for s in seqs), b"\r\n"])
    assert reply == Reply("OK", "SEARCH completed")
    out, _ = mailbox.call(b"b UID SEARCH " + key)
    assert out == b"".join([b"* SEARCH", *(b" %d" % UIDS[s - 1] for s in seqs), b"\r\n"])


def test_search_only_reports_messages_the_client_knows(mailbox: SessionDriver) -> None:
    """RFC 3501 §7.4.1/§5.2: a message that arrived since the last EXISTS has no sequence
    number yet, so SEARCH leaves it out; the EXISTS follows the answer."""
    mailbox.add(LATE)
    out, _ = mailbox.call(b"a SEARCH SUBJECT epsilon")
    assert out == b"* SEARCH 5\r\n"
    out = mailbox.run(b"b UID SEARCH SUBJECT epsilon")
    assert out.startswith(b"* SEARCH 7\r\n* 6 EXISTS\r\n")


def test_esearch_min_max_count_all(mailbox: SessionDriver) -> None:
    """RFC 4731 §3.1: ``* ESEARCH (TAG "t")`` with the requested return data; ALL is a
    compact sequence set."""
    out, _ = mailbox.call(b"t1 SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
    assert out == b'* ESEARCH (TAG "t1") MIN 2 MAX 5 COUNT 4 ALL 2:5\r\n'
    out, _ = mailbox.call(b"t2 SEARCH RETURN (COUNT) NOT 2")
    assert out == b'* ESEARCH (TAG "t2") COUNT 4\r\n'


def test_uid_esearch_marks_uid_and_empty_return_means_all(mailbox: SessionDriver) -> None:
    """RFC 4731 §3.1: ``RETURN ()`` is ALL; UID SEARCH adds the UID indicator and
    answers UIDs."""
    out, _ = mailbox.call(b"t3 UID SEARCH RETURN () UNSEEN")
    assert out == b'* ESEARCH (TAG "t3") UID ALL 3:4,6:7\r\n'


def test_esearch_without_matches(mailbox: SessionDriver) -> None:
    """RFC 4731 §3.1: with no match MIN, MAX and ALL are left out; COUNT is 0."""
    out, _ = mailbox.call(b"t4 SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT nothing-like-this")
    assert out == b'* ESEARCH (TAG "t4") COUNT 0\r\n'
    out, _ = mailbox.call(b"t5 UID SEARCH RETURN (MIN) SUBJECT nothing-like-this")
    assert out == b'* ESEARCH (TAG "t5") UID\r\n'


def test_search_modseq_returns_the_highest_modseq(mailbox: SessionDriver) -> None:
    """RFC 7162 §3.1.5: with a MODSEQ key the answer ends with ``(MODSEQ n)``, the
    highest mod-sequence of the messages found; none found → plain ``* SEARCH``."""
    box = mailbox.mailbox().id
    first = mailbox.store.store_flags(box, [3], "+", ["$X"]).updated[0].modseq
    last = mailbox.store.store_flags(box, [6], "+", ["$X"]).updated[0].modseq
    out, _ = mailbox.call(b"a SEARCH MODSEQ %d" % first)
    assert out == b"* SEARCH 2 4 (MODSEQ %d)\r\n" % last
    out, _ = mailbox.call(b"b UID SEARCH MODSEQ %d" % first)
    assert out == b"* SEARCH 3 6 (MODSEQ %d)\r\n" % last
    out, _ = mailbox.call(b"c SEARCH MODSEQ %d" % (last + 1))
    assert out == b"* SEARCH\r\n"
    out, _ = mailbox.call(b"d SEARCH RETURN (MIN) MODSEQ %d" % first)
    assert out == b'* ESEARCH (TAG "d") MIN 2 MODSEQ %d\r\n' % first
    assert mailbox.session.condstore_active()


# ---- over a real socket, with real client libraries ---------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        yield handle


def test_imapclient_store_and_search(server: ServerHandle) -> None:
    """RFC 3501 §6.4.6/§6.4.4 as imapclient uses them (UID STORE, UID SEARCH): the flags
    it parses from our FETCH answers and the UIDs it parses from SEARCH."""
    for n in range(1, 4):
        server.append(raw=plain(n))
    client = server.imapclient()
    try:
        client.select_folder("INBOX")
        assert client.add_flags([1, 3], [b"\\Flagged", b"$Work"]) == {
            1: (b"\\Flagged", b"\\Recent", b"$Work"),
            3: (b"\\Flagged", b"\\Recent", b"$Work"),
        }
        assert client.remove_flags([3], [b"$Work"]) == {3: (b"\\Flagged", b"\\Recent")}
        assert client.search(["FLAGGED"]) == [1, 3]
        assert client.search(["KEYWORD", "$Work"]) == [1]
        assert client.search(["SUBJECT", "message 2"]) == [2]
    finally:
        client.logout()


def test_imapclient_reads_search_modseq(server: ServerHandle) -> None:
    """RFC 7162 §3.1.5: imapclient exposes the ``(MODSEQ n)`` of a SEARCH answer."""
    server.append(raw=plain(1))
    server.append(raw=plain(2))
    client = server.imapclient()
    try:
        client.select_folder("INBOX")
        client.add_flags([2], [b"\\Seen"])
        modseq = server.call(server.store.message_rows, server.mailbox_id())[1].modseq
        found = client.search(["MODSEQ", str(modseq)])
        assert list(found) == [2]
        assert found.modseq == modseq
    finally:
        client.logout()


def test_esearch_and_modified_over_the_wire(server: ServerHandle) -> None:
    """RFC 4731 §3.1 and RFC 7162 §3.1.3 through the real server, exact bytes."""
    for n in range(1, 4):
        server.append(raw=plain(n))
    with server.connect() as client:
        client.login()
        client.command("s", "SELECT INBOX")
        assert client.command("a", "SEARCH RETURN (MIN COUNT) ALL") == (
            b'* ESEARCH (TAG "a") MIN 1 COUNT 3\r\na OK SEARCH completed\r\n'
        )
        out = client.command("b", "STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
        assert out.endswith(b"b OK [MODIFIED 1:3] Conditional STORE failed\r\n")


def test_search_depth_edge_over_the_wire(server: ServerHandle) -> None:
    """One SEARCH depth limit, the store's MAX_SEARCH_DEPTH: a program exactly that deep
    is answered by the store; one level deeper is refused by the parser with a tagged
    BAD [LIMIT] giving the reason, and the session goes on."""
    server.append(raw=plain(1))
    with server.connect() as client:
        client.login()
        client.command("s", "SELECT INBOX")
        deepest = "NOT " * (MAX_SEARCH_DEPTH - 1) + "SEEN"
        answer = b"* SEARCH 1\r\n" if (MAX_SEARCH_DEPTH - 1) % 2 else b"* SEARCH\r\n"
        assert client.command("a", "SEARCH " + deepest) == answer + b"a OK SEARCH completed\r\n"
        assert client.command("b", "SEARCH NOT " + deepest) == (
            b"b BAD [LIMIT] SEARCH: search keys nested deeper than %d\r\n" % MAX_SEARCH_DEPTH
        )
        assert client.command("c", "SEARCH UNSEEN") == b"* SEARCH 1\r\nc OK SEARCH completed\r\n"
