"""SORT, ESORT and THREAD through the session, byte for byte (RFC 5256, RFC 5267, RFC 5957),
and the pieces underneath: the base subject (RFC 5256 §2.1), the address and msg-id keys,
and the REFERENCES and ORDEREDSUBJECT algorithms on hand-made cases."""

from __future__ import annotations

import pytest

from gateway.core.sorting import ThreadFacts
from gateway.imap.command import ParseError
from gateway.imap.handler import Reply
from gateway.imap.threads import ordered_subject, references, thread_text
from gateway.message.analysis import analyze
from gateway.message.sortkeys import base_subject, msg_ids
from gateway.testing.imapsession import SessionDriver

# ---- RFC 5256 §2.1 base subject ----------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "base", "refwd"),
    [
        (b"hello", "hello", False),
        (b"Re: hello", "hello", True),
        (b"RE: re: Fwd: hello", "hello", True),
        (b"Re[2]: hello", "hello", True),  # subj-refwd with a subj-blob before the colon
        (b"Fw : hello", "hello", True),  # *WSP between "fw" and ":"
        (b"[list] Re: hello", "hello", True),  # (*subj-blob subj-refwd)
        (b"[list] hello", "hello", False),  # step 4: a blob goes when text is left
        (b"[list]", "[list]", False),  # ... and stays when nothing would be left
        (b"[a] [b]", "[b]", False),
        (b"hello (fwd)", "hello", True),  # step 2 trailer
        (b"hello (FWD)  (fwd) ", "hello", True),
        (b"[Fwd: Re: hello]", "hello", True),  # step 6, then again from step 2
        (b"[fwd: [fwd: hello]]", "hello", True),
        (b"  Re:\t\r\n  hello   world  ", "hello world", True),  # step 1 white space
        (b"=?utf-8?q?Re=3A_hello?=", "hello", True),  # step 1 encoded words first
        (b"Reply to this", "Reply to this", False),  # "re" without a colon is text
        (b"Re", "Re", False),
        (b"", "", False),
    ],
)
def test_base_subject(subject: bytes, base: str, refwd: bool) -> None:
    assert base_subject(subject) == (base, refwd)


def test_sort_keys_take_first_addresses_display_names_and_msg_ids() -> None:
    raw = (
        b"From: =?utf-8?q?Ann_Lee?= <ann@x.org>, bob@y\r\n"
        b"To: team: carl@z.org, dee@z.org;, eve@e\r\n"
        b"Cc: <Frank@F.example>\r\n"
        b"Subject: Re: [x] Hi\r\n"
        b"Message-ID: <id1@x.org>\r\n"
        b"In-Reply-To: <p@x.org>\r\n\r\nbody"
    )
    keys = analyze(raw).sort
    assert (keys.from_, keys.to, keys.cc) == ("ANN", "CARL", "FRANK")
    assert (keys.display_from, keys.display_to) == ("ANN LEE", "CARL@Z.ORG")
    assert (keys.subject, keys.reply_or_forward) == ("HI", True)
    assert (keys.message_id, keys.references) == ("id1@x.org", ("p@x.org",))


def test_references_header_wins_over_in_reply_to() -> None:
    raw = b"References: <a@x> (c) <b@x>\r\nIn-Reply-To: <z@x>\r\n\r\n"
    assert analyze(raw).sort.references == ("a@x", "b@x")
    assert msg_ids(b"<no-at-sign> <ok@x>") == ["ok@x"]


# ---- the threading algorithms --------------------------------------------------------------


def fact(uid: int, sent: int, subject: str, mid: str | None, *refs: str) -> ThreadFacts:
    refwd = subject.startswith("RE:")
    return ThreadFacts(uid, sent, subject.removeprefix("RE:"), refwd, mid, refs)


def text(roots: list) -> bytes:
    return thread_text(roots, lambda uid: uid)


def test_references_chains_siblings_and_missing_parents() -> None:
    """A chain is written flat, siblings nested; a dummy parent with several children at
    the root stays as a nameless list; one child of a dummy is promoted (§3 step 4)."""
    facts = [
        fact(1, 10, "A", "a"),
        fact(2, 20, "RE:A", "b", "a"),
        fact(3, 30, "RE:A", "c", "a", "b"),
        fact(4, 25, "RE:A", "d", "a"),
        fact(5, 5, "B", "e", "lost"),
        fact(6, 6, "C", "f", "gone"),
        fact(7, 7, "C2", "g", "gone"),
        fact(8, 1, "D", "h", "missing", "alsomissing"),
    ]
    assert text(references(facts)) == b"(8)(5)((6)(7))(1 (2 3)(4))"


def test_references_duplicate_ids_and_loops() -> None:
    """A repeated Message-ID belongs to the first message only (§3 step 1); a link that
    would make a loop is not made (step 1.B: 3 names itself as parent, so it loses its
    link to 1 and gets none), and step 1.A links references only where a message has no
    parent yet (4's references make 1 a child of 3)."""
    facts = [
        fact(1, 1, "X", "a"),
        fact(2, 2, "Y", "a"),  # duplicate: a thread of its own
        fact(3, 3, "Z", "c", "a", "c"),  # refers to itself last
        fact(4, 4, "W", "d", "c", "a"),
    ]
    assert text(references(facts)) == b"(2)(3 1 4)"


def test_references_gathers_threads_by_subject() -> None:
    """§3 step 5: a reply-subject thread joins the original's; two originals get a dummy."""
    facts = [
        fact(1, 1, "A", "a"),
        fact(2, 2, "RE:A", "b"),  # no references, but a reply to A by subject
        fact(3, 3, "A", "c"),  # same subject, not a reply: a dummy holds both
        fact(4, 4, "", "d"),  # an empty subject is never gathered
        fact(5, 5, "", "e"),
    ]
    assert text(references(facts)) == b"((1 2)(3))(4)(5)"


def test_ordered_subject_groups_by_base_subject_then_date() -> None:
    facts = [
        fact(1, 30, "B", None),
        fact(2, 10, "A", None),
        fact(3, 20, "RE:A", None),
        fact(4, 5, "A", None),
        fact(5, 40, "B", None),
    ]
    assert text(ordered_subject(facts)) == b"(4 (2)(3))(1 5)"


# ---- the commands through the session ------------------------------------------------------


def mail(mid: str, subject: str, sender: str, date: str, refs: str = "") -> bytes:
    head = f"From: {sender}\r\nTo: t@x\r\nSubject: {subject}\r\nDate: {date}\r\n"
    head += f"Message-ID: <{mid}@x>\r\n"
    if refs:
        head += f"References: <{refs}@x>\r\n"
    return (head + "\r\nbody\r\n").encode()


@pytest.fixture
def sorted_box(harness: SessionDriver) -> SessionDriver:
    harness.add(mail("a", "hello", "Zed <z@x>", "Mon, 1 Jan 2024 10:00:00 +0000"))
    harness.add(mail("b", "Re: hello", "amy@x", "Mon, 1 Jan 2024 11:00:00 +0000", "a"))
    harness.add(mail("c", "other", "bob@x", "Mon, 1 Jan 2024 09:00:00 +0000"))
    harness.add(mail("d", "Re: hello", "cat@x", "Mon, 1 Jan 2024 03:00:00 -0900", "a"))
    harness.select()
    return harness


def test_sort_and_uid_sort(sorted_box: SessionDriver) -> None:
    """RFC 5256 §4: ``* SORT`` lists sequence numbers (or UIDs) in sort order; DATE is
    the sent date in UTC (12:00 for the -0900 one)."""
    assert sorted_box.call(b"a SORT (DATE) UTF-8 ALL") == (
        b"* SORT 3 1 2 4\r\n",
        Reply("OK", "SORT completed"),
    )
    out, _ = sorted_box.call(b"b UID SORT (REVERSE FROM) US-ASCII NOT SUBJECT other")
    assert out == b"* SORT 1 4 2\r\n"
    out, _ = sorted_box.call(b"c SORT (DISPLAYFROM SUBJECT) UTF-8 ALL")
    assert out == b"* SORT 2 3 4 1\r\n"
    out, _ = sorted_box.call(b"d SORT (SUBJECT) UTF-8 SUBJECT nothing")
    assert out == b"* SORT\r\n"


def test_esort_return_options(sorted_box: SessionDriver) -> None:
    """RFC 5267 §3.2: MIN/MAX are the first and last in sort order, ALL keeps the order
    (ascending runs as ``a:b``); §4.4 PARTIAL takes a window of the sorted result."""
    out, _ = sorted_box.call(b"e SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL")
    assert out == b'* ESEARCH (TAG "e") MIN 1 MAX 3 COUNT 4 ALL 1:2,4,3\r\n'
    out, _ = sorted_box.call(b"f UID SORT RETURN () (REVERSE DATE) UTF-8 ALL")
    assert out == b'* ESEARCH (TAG "f") UID ALL 4,2,1,3\r\n'
    # All four arrived at the same INTERNALDATE: ties keep mailbox order even reversed.
    out, _ = sorted_box.call(b"f2 UID SORT RETURN (ALL) (REVERSE ARRIVAL) UTF-8 ALL")
    assert out == b'* ESEARCH (TAG "f2") UID ALL 1:4\r\n'
    out, _ = sorted_box.call(b"g SORT RETURN (COUNT) (DATE) UTF-8 FROM nobody")
    assert out == b'* ESEARCH (TAG "g") COUNT 0\r\n'
    out, _ = sorted_box.call(b"h SORT RETURN (PARTIAL 2:3) (DATE) UTF-8 ALL")
    assert out == b'* ESEARCH (TAG "h") PARTIAL (2:3 1:2)\r\n'
    out, _ = sorted_box.call(b"i SORT RETURN (PARTIAL 9:10) (DATE) UTF-8 ALL")
    assert out == b'* ESEARCH (TAG "i") PARTIAL (9:10 NIL)\r\n'


def test_thread_both_algorithms(sorted_box: SessionDriver) -> None:
    out, reply = sorted_box.call(b"j THREAD REFERENCES UTF-8 ALL")
    assert (out, reply) == (b"* THREAD (3)(1 (2)(4))\r\n", Reply("OK", "THREAD completed"))
    out, _ = sorted_box.call(b"k UID THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert out == b"* THREAD (3)(1 (2)(4))\r\n"  # threads by their first message's date
    out, _ = sorted_box.call(b"l THREAD REFERENCES UTF-8 SUBJECT zzz")
    assert out == b"* THREAD\r\n"


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        (b"m SORT (COLOUR) UTF-8 ALL", b"m BAD"),
        (b"n SORT () UTF-8 ALL", b"n BAD"),
        (b"o SORT (DATE) ALL", b"o NO [BADCHARSET"),  # the charset is not optional
        (b"p SORT (DATE) KOI8-R ALL", b"p NO [BADCHARSET (US-ASCII UTF-8)]"),
        (b"q THREAD NEWEST UTF-8 ALL", b"q BAD"),
        (b"r SORT RETURN (SAVE) (DATE) UTF-8 ALL", b"r BAD"),
        (b"s SORT (REVERSE) UTF-8 ALL", b"s BAD"),
    ],
)
def test_malformed_sort_and_thread(sorted_box: SessionDriver, line: bytes, answer: bytes) -> None:
    assert _parse_and_run(sorted_box, line).startswith(answer)


def _parse_and_run(driver: SessionDriver, line: bytes) -> bytes:
    """The tagged reply to a line that may not parse: a parse error goes to the session's
    own error path, as the server glue sends it."""
    driver.parser.receive_data(line + b"\r\n")
    event = driver.parser.next_event()
    if isinstance(event, ParseError):
        out, _ = driver.drive(driver.session.parse_error(event), ())
        return b"".join(out)
    return driver.run(line)


def test_sort_needs_a_selected_mailbox(harness: SessionDriver) -> None:
    out = harness.run(b"t SORT (DATE) UTF-8 ALL")
    assert out.startswith(b"t BAD"), out
