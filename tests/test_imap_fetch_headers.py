"""The list-view FETCH paths (issue 19); each must answer byte for byte what the general
item loop answers, for any such request and message:

* a plan of FLAGS, UID, MODSEQ, RFC822.SIZE and one whole-message
  ``BODY.PEEK[HEADER.FIELDS (...)]`` (``FetchPlan.header_names``) reads the fields as the
  store keeps them (``message_header_fields``, gateway/store/heads.py) and formats a
  list of messages at once (gateway/imap/fetch_stored.py);
* a plan of stored items and whole-message ``BODY[HEADER]`` / ``BODY[HEADER.FIELDS
  (...)]`` sections renders each message with one bytes format
  (``FetchPlan.head_template``, gateway/imap/fetch_items.py) and ``top_header_cutter``
  (gateway/message/sections.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.imap import fetch_items
from gateway.imap.fetch_items import FetchPlan
from gateway.message.analysis import analyze
from gateway.message.sections import section, top_header_cutter
from gateway.testing import samplemail
from gateway.testing.imapsession import SessionDriver

LONG_SUBJECT = "word " * 300  # HEADER.FIELDS over INLINE_LITERAL_LIMIT: the general loop

MESSAGES = [
    b"From: a@example.com\r\nSubject: plain\r\nDate: Mon, 5 Feb 2024 10:11:12 +0000\r\n\r\nHi\r\n",
    b"Subject: folded\r\n  line\r\nFROM : b@example.com\r\nX-Date: no\r\n\r\nbody\r\n",
    b"Subject: Stra\xdfe\r\nFrom: c@example.com\r\n\r\n8-bit header: the scan's folding\r\n",
    b"From: d@example.com\r\nSubject: no body",
    f"From: e@example.com\r\nSubject: {LONG_SUBJECT}\r\n\r\nlong\r\n".encode(),
    b'From: f@example.com\r\nSubject: multi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b--\r\n",
    "Subject: =?utf-8?q?x?= \u00e9t\u00e9 \u65e5\u672c\r\nfrom: g@example.com\r\n\r\n8-bit UTF-8\r\n".encode(),
    b"sUbJeCt: cases\r\nDATE : Tue, 6 Feb 2024 10:11:12 +0000\r\nFrom:h@example.com\r\n\r\nx\r\n",
    b"To: nobody@example.com\r\nX-Subject: not this one\r\n\r\nno wanted field\r\n",
    b"Date: Tue, 6 Feb 2024 10:11:12 +0000\nFrom: bare@example.com\n\nbare LF\n",
    b"Subject: first\r\nFrom: i@example.com\r\nSubject: second\r\n\tfolded\r\n\r\ntwo\r\n",
    b"From: j@example.com\r\nSubject: large\r\n\r\n" + b"0123456789abcdef" * 2048,  # blob read
    *samplemail.generate(6, 3, size_profile="realistic"),
]

REQUESTS = [
    b"(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])",
    b"(BODY.PEEK[HEADER.FIELDS (Subject)] FLAGS)",
    b"(RFC822.SIZE BODY.PEEK[HEADER])",
    b"(UID BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID)] MODSEQ)",
    b'(FLAGS BODY.PEEK[HEADER.FIELDS ("X-%s")] ENVELOPE BODYSTRUCTURE)',
]


@pytest.fixture
def harness(tmp_path: Path):
    h = SessionDriver(tmp_path / "s.sqlite")
    for raw in MESSAGES:
        h.add(raw)
    h.store.store_flags(h.mailbox().id, [1, 3], "+", ["\\Seen", "$Label"])
    h.select()
    yield h
    h.close()


def _per_message(plan: FetchPlan) -> FetchPlan:
    """The plan without the store's kept fields: the head template's path, if any."""
    return dataclasses.replace(plan, summary_picks=None, header_names=None)


def _general(plan: FetchPlan) -> FetchPlan:
    return dataclasses.replace(_per_message(plan), head_template=None, head_steps=())


STORE_PATH = {0, 1, 3}
"""The REQUESTS that take the store's kept fields (the others have no HEADER.FIELDS, or
an item a MessageHead does not hold)."""


@pytest.mark.parametrize("index", range(len(REQUESTS)))
@pytest.mark.parametrize("verb", [b"FETCH 1:*", b"UID FETCH 2:*", b"FETCH 2,4:5,9:*"])
def test_the_list_view_paths_answer_what_the_general_loop_answers(
    harness: SessionDriver, monkeypatch: pytest.MonkeyPatch, verb: bytes, index: int
) -> None:
    items = REQUESTS[index]
    compiled = fetch_items.compile_plan
    plans: list[FetchPlan] = []

    def recording(*args, **kwargs) -> FetchPlan:  # type: ignore[no-untyped-def]
        plans.append(compiled(*args, **kwargs))
        return plans[-1]

    harness.run(b"w " + verb + b" " + items)  # a MODSEQ item turns CONDSTORE on: once, first
    monkeypatch.setattr(fetch_items, "compiled_plan", recording)
    fast = harness.run(b"a " + verb + b" " + items)
    again = harness.run(b"a " + verb + b" " + items)  # the fields as the store kept them
    assert plans[-1].head_template is not None, "the list-view path was not taken"
    assert (plans[-1].header_names is not None) == (index in STORE_PATH)
    answers = [fast, again]
    for strip in (_per_message, _general):
        monkeypatch.setattr(
            fetch_items, "compiled_plan", lambda *a, strip=strip, **k: strip(compiled(*a, **k))
        )
        answers.append(harness.run(b"a " + verb + b" " + items))
    assert answers == [answers[-1]] * 4
    assert fast.endswith(b"a OK FETCH completed\r\n")


def test_the_store_path_shows_flags_as_they_are_now(harness: SessionDriver) -> None:
    """The fields are kept, the flags are not: a STORE between two list views shows."""
    line = b"a FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
    first = harness.run(line)
    harness.store.store_flags(harness.mailbox().id, [2], "+", ["$Later"])
    second = harness.run(line)
    assert b"* 2 FETCH (FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)]" in first
    assert b"* 2 FETCH (FLAGS (\\Recent $Later) BODY[HEADER.FIELDS (SUBJECT)]" in second
    assert first.split(b"* 2 FETCH")[0] == second.split(b"* 2 FETCH")[0]


def test_the_path_is_taken_only_for_whole_message_headers() -> None:
    def plan(line: bytes) -> FetchPlan:
        from gateway.imap.framing import CommandParser

        parser = CommandParser()
        parser.receive_data(b"a FETCH 1 " + line + b"\r\n")
        cmd = parser.next_event()
        return fetch_items.compile_plan(cmd.items, False, False)  # type: ignore[union-attr]

    assert plan(b"(UID BODY.PEEK[HEADER.FIELDS (FROM)])").head_template is not None
    assert plan(b"(BODY.PEEK[HEADER])").head_template is not None
    for other in (
        b"(BODY.PEEK[1.HEADER])",  # a part's header
        b"(BODY.PEEK[HEADER.FIELDS.NOT (FROM)])",
        b"(BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>)",  # partial
        b"(BODY.PEEK[TEXT])",
        b"(BODY.PEEK[])",
        b"(INTERNALDATE BODY.PEEK[HEADER])",  # not a stored-template item
        b"(UID FLAGS)",  # no section: the stored-items path
    ):
        assert plan(other).head_template is None, other


@pytest.mark.parametrize("raw", MESSAGES)
def test_the_cutter_gives_what_section_gives(raw: bytes) -> None:
    parts = analyze(raw).parts
    for kind, fields in (
        ("HEADER", ()),
        ("header.fields", ("from", "SUBJECT", "Date")),
        ("HEADER.FIELDS", ("X-%s",)),
    ):
        cutter = top_header_cutter(kind, fields)
        assert cutter is not None
        assert cutter(raw, parts) == section(raw, parts, (), kind, fields)
    assert top_header_cutter("HEADER.FIELDS", ("FROM ",)) is None  # not a plain name
    assert top_header_cutter("TEXT", ()) is None
