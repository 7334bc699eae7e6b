"""FETCH of stored items only (gateway.imap.fetch_stored): the same bytes as the general
item loop of gateway.imap.messages.fetch, whatever the session's \\Recent, the sequence
set, the store batches, CONDSTORE or a concurrent expunge (issue 19).

Each case runs the command twice on one session: once as compiled, and once with the
plan's stored-items path taken away (``summary_picks=None``), which sends it through the
general loop; the untagged data, the tagged reply and what the view remembers of flags it
told the client must be identical.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.imap import fetch_items, messages
from gateway.imap.command import FetchAttr
from gateway.imap.fetch_items import FetchPlan
from gateway.imap.handler import Reply
from gateway.testing.imapsession import SessionDriver
from gateway.testing.postgres import open_test_store


def _message(i: int) -> bytes:
    return (
        b"From: Sender %d <s%d@example.org>\r\n"
        b"To: bob@example.com\r\n"
        b"Subject: message %d\r\n"
        b"Date: Mon, 05 Feb 2024 10:11:12 +0100\r\n"
        b"\r\n"
        b"Body %d.\r\n" % (i, i, i, i)
    )


FLAG_SETS = [(), ("\\Seen",), ("\\Seen", "$Work"), ("\\Flagged", "\\Answered"), ("$Work",)]


def _fill(driver: SessionDriver) -> SessionDriver:
    """Nine messages with a handful of flag sets; messages 4 and 7 expunged, so UIDs and
    sequence numbers differ."""
    box = driver.mailbox().id
    for i in range(9):
        driver.store.append(box, _message(i), FLAG_SETS[i % len(FLAG_SETS)])
    driver.store.store_flags(box, [4, 7], "+", ["\\Deleted"])
    driver.store.expunge(box)
    return driver


@pytest.fixture
def mailbox(harness: SessionDriver) -> Iterator[SessionDriver]:
    yield _fill(harness)


@pytest.fixture
def pg_mailbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionDriver]:
    """The same mailbox on a PostgreSQL store (not inline: FETCH reads batches of
    ``STORED_BATCH_THREADED`` UIDs, each one streamed statement), with batches of 3 UIDs
    streamed in lists of 2 rows, so batches and lists both split the mailbox."""
    store = open_test_store()
    store.summary_chunk = 2
    monkeypatch.setattr(messages, "STORED_BATCH_THREADED", 3)
    driver = SessionDriver(tmp_path, store=store)
    try:
        assert not driver.session.store.runs_inline  # the user's view says what its base does
        yield _fill(driver)
    finally:
        driver.close()


def _general(plan: FetchPlan) -> FetchPlan:
    return dataclasses.replace(plan, summary_picks=None)


def _both_ways(
    harness: SessionDriver, monkeypatch: pytest.MonkeyPatch, line: bytes
) -> tuple[tuple[bytes, Reply, dict[int, int]], tuple[bytes, Reply, dict[int, int]]]:
    """(stored path, general loop): output, reply and the view's reported changes, each
    from the same view state."""
    view = harness.session.selected
    assert view is not None
    reported = dict(view.reported)
    compiled: list[FetchPlan] = []
    compile_plan, cached = fetch_items.compile_plan, fetch_items.compiled_plan

    def recording(*args: Any, **kwargs: Any) -> FetchPlan:
        plan = compile_plan(*args, **kwargs)
        compiled.append(plan)
        return plan

    # The handler takes its plans from the per-request cache (compiled_plan): record
    # (and below, rewrite) the plan each call compiles afresh.
    monkeypatch.setattr(fetch_items, "compiled_plan", recording)
    out, reply = harness.call(line)
    fast = (out, reply, dict(view.reported))
    assert compiled[-1].summary_picks is not None, "the stored path was not taken"
    view.reported = dict(reported)
    monkeypatch.setattr(
        fetch_items, "compiled_plan", lambda *a, **k: _general(compile_plan(*a, **k))
    )
    out, reply = harness.call(line)
    general = (out, reply, dict(view.reported))
    monkeypatch.setattr(fetch_items, "compiled_plan", cached)
    return fast, general


COMMANDS = [
    b"a FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE BODYSTRUCTURE)",
    b"a FETCH 1:* (BODYSTRUCTURE ENVELOPE RFC822.SIZE FLAGS)",
    b"a FETCH 2,4,6:* (UID FLAGS)",
    b"a UID FETCH 3,5:8 (ENVELOPE)",
    b"a FETCH 1:* (RFC822.SIZE MODSEQ)",
    b"a UID FETCH 1:* (FLAGS MODSEQ RFC822.SIZE)",
    b"a FETCH 5 (FLAGS)",
]


@pytest.mark.parametrize("line", COMMANDS)
@pytest.mark.parametrize("batch", [2, 500])
def test_first_session_shows_its_recent_messages_alike(
    mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch, line: bytes, batch: int
) -> None:
    """The first session to select holds \\Recent for every message (RFC 3501 §2.3.2)."""
    monkeypatch.setattr(messages, "INFO_BATCH", batch)
    mailbox.select()
    assert mailbox.session.selected is not None and mailbox.session.selected.recent
    fast, general = _both_ways(mailbox, monkeypatch, line)
    assert fast == general
    assert b"\\Recent" in fast[0] or b"FLAGS" not in line


@pytest.mark.parametrize("line", COMMANDS)
@pytest.mark.parametrize("batch", [2, 500])
def test_a_later_session_shows_no_recent_alike(
    mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch, line: bytes, batch: int
) -> None:
    """Once the first selection has claimed \\Recent, a later session shows none."""
    monkeypatch.setattr(messages, "INFO_BATCH", batch)
    mailbox.select()
    mailbox.select()
    view = mailbox.session.selected
    assert view is not None and not view.recent
    fast, general = _both_ways(mailbox, monkeypatch, line)
    assert fast == general
    assert b"\\Recent" not in fast[0]


@pytest.mark.parametrize("line", COMMANDS)
@pytest.mark.parametrize("batch", [2, 500])
def test_a_view_holding_some_messages_as_recent_shows_exactly_those(
    mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch, line: bytes, batch: int
) -> None:
    """EXAMINE leaves the store's \\Recent bits set (gateway/imap/selection.py); a view
    that holds only some of those messages as \\Recent shows \\Recent on exactly them,
    never on the others, although their stored flags carry it."""
    monkeypatch.setattr(messages, "INFO_BATCH", batch)
    mailbox.select(examine=True)
    view = mailbox.session.selected
    assert view is not None and len(view.recent) == 7
    for held in ([], [3, 8]):
        view.recent = array("I", held)
        fast, general = _both_ways(mailbox, monkeypatch, line)
        assert fast == general
        shown = fast[0].count(b"\\Recent")
        assert shown == len(held) if b"1:* (FLAGS" in line else shown <= len(held)


def test_changes_after_the_views_modseq_are_remembered_alike(
    mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags changed by another session since this one was last told (RFC 7162 §3.1 /
    RFC 3501 §7): FETCH shows them, the view notes them for the catch-up, and a
    CHANGEDSINCE FETCH reports only messages changed after it, with MODSEQ."""
    mailbox.select()
    box = mailbox.mailbox().id
    before = mailbox.mailbox().highestmodseq
    mailbox.store.store_flags(box, [2, 9], "+", ["$Later"])
    fast, general = _both_ways(mailbox, monkeypatch, b"a FETCH 1:* (FLAGS UID)")
    assert fast == general
    assert set(fast[2]) == {2, 9}
    fast, general = _both_ways(
        mailbox, monkeypatch, b"a FETCH 1:* (UID FLAGS) (CHANGEDSINCE %d)" % before
    )
    assert fast == general
    assert fast[0].count(b"FETCH (") == 2 and b"MODSEQ (" in fast[0]


@pytest.mark.parametrize("uid", [False, True])
def test_a_message_expunged_elsewhere_is_left_out_alike(
    mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch, uid: bool
) -> None:
    """RFC 3501 §7.4.1: the message keeps its sequence number in this view but is gone
    from the store; FETCH says EXPUNGEISSUED (RFC 5530), UID FETCH just omits it."""
    monkeypatch.setattr(messages, "INFO_BATCH", 3)
    mailbox.select()
    box = mailbox.mailbox().id
    mailbox.store.store_flags(box, [5], "+", ["\\Deleted"])
    mailbox.store.expunge(box)
    line = b"a UID FETCH 1:* (FLAGS ENVELOPE)" if uid else b"a FETCH 1:* (FLAGS ENVELOPE)"
    fast, general = _both_ways(mailbox, monkeypatch, line)
    assert fast == general
    assert fast[1].code == (None if uid else "EXPUNGEISSUED")
    assert b"UID 5 " not in fast[0] and fast[0].count(b"FETCH (") == 6


@pytest.mark.postgres
@pytest.mark.parametrize("line", COMMANDS)
def test_a_streamed_store_answers_alike(
    pg_mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch, line: bytes
) -> None:
    """On a store that does not run inline the batches are larger and each is streamed
    in lists (gateway/store/postgres/messages.py); the responses are still those of the
    general loop, \\Recent and all."""
    pg_mailbox.select()
    fast, general = _both_ways(pg_mailbox, monkeypatch, line)
    assert fast == general
    assert fast[0].count(b"FETCH (") == (7 if b" 1:* " in line else fast[0].count(b"\r\n"))


@pytest.mark.postgres
@pytest.mark.parametrize("uid", [False, True])
def test_a_streamed_store_leaves_out_a_message_expunged_elsewhere(
    pg_mailbox: SessionDriver, monkeypatch: pytest.MonkeyPatch, uid: bool
) -> None:
    """EXPUNGEISSUED (RFC 5530) from a streamed read, as from a batched one: the batch's
    statement returns fewer rows than it was asked for."""
    pg_mailbox.select()
    box = pg_mailbox.mailbox().id
    pg_mailbox.store.store_flags(box, [5], "+", ["\\Deleted"])
    pg_mailbox.store.expunge(box)
    line = b"a UID FETCH 1:* (FLAGS ENVELOPE)" if uid else b"a FETCH 1:* (FLAGS ENVELOPE)"
    fast, general = _both_ways(pg_mailbox, monkeypatch, line)
    assert fast == general
    assert fast[1].code == (None if uid else "EXPUNGEISSUED")
    assert b"UID 5 " not in fast[0] and fast[0].count(b"FETCH (") == 6


def test_body_keeps_the_general_path() -> None:
    """BODY is not in a MessageSummary: such a plan has no stored-items picks."""
    plan = fetch_items.compile_plan([FetchAttr("FLAGS"), FetchAttr("BODY")], False, False)
    assert plan.template is not None and plan.summary_picks is None


def test_plans_are_kept_by_the_items_identity_and_equal_items_share_them() -> None:
    """The grammar hands out one tuple per request text; its plan (and whether it asks
    for MODSEQ) is found by identity, an equal tuple parsed afresh finds the same plan,
    and a different mode or an evicted entry compiles the right one again."""
    items = (FetchAttr("UID"), FetchAttr("FLAGS"), FetchAttr("MODSEQ"))
    plan = fetch_items.compiled_plan(items, False, True)
    assert fetch_items.compiled_plan(items, False, True) is plan
    assert _same_plan(plan, fetch_items.compile_plan(items, False, True))
    equal = tuple(FetchAttr(item.name) for item in items)
    assert fetch_items.compiled_plan(equal, False, True) is plan
    flags = (FetchAttr("FLAGS"),)
    uid_mode = fetch_items.compiled_plan(flags, True, False)  # UID FETCH adds UID
    assert _same_plan(uid_mode, fetch_items.compile_plan(flags, True, False))
    assert not _same_plan(uid_mode, fetch_items.compiled_plan(flags, False, False))
    assert fetch_items.asks_modseq(items) and fetch_items.asks_modseq(items)
    assert not fetch_items.asks_modseq(items[:2])
    for n in range(fetch_items.PLANS_KEPT + 1):  # past the bound: everything cleared
        fetch_items.compiled_plan((FetchAttr("UID"),) * (n + 1), False, False)
        fetch_items.asks_modseq((FetchAttr("FLAGS"),) * (n + 1))
    assert _same_plan(fetch_items.compiled_plan(items, False, True), plan)
    assert fetch_items.asks_modseq(items)


def _same_plan(a: FetchPlan, b: FetchPlan) -> bool:
    """Equal plans (their item getters compare by identity, so they are left out)."""
    return (a.steps, a.template) == (b.steps, b.template)
