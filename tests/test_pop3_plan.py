"""The POP3 sync plan (gateway.pop3.plan): parsing UIDL/LIST answers, the UIDL fallback
fingerprint, and deciding what to fetch, skip, delete (per policy) and forget, by examples
and by Hypothesis properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pop3.plan import (
    FALLBACK_UIDL_PREFIX,
    MAX_UIDL_LENGTH,
    POLICY_AGE,
    POLICY_FETCHED,
    POLICY_IMAP,
    POLICY_SIZE,
    DeletionPolicy,
    LedgerFact,
    ListedMessage,
    build_listing,
    fallback_uidl,
    header_fields,
    parse_list_line,
    parse_uidl_line,
    plan_deletions,
    plan_sync,
)

LIMIT = 1000


def listing(*items: tuple[str, int]) -> list[ListedMessage]:
    return [ListedMessage(n, uidl, size) for n, (uidl, size) in enumerate(items, 1)]


def plan(messages, known=(), *, keep=True, limit=LIMIT, **kw):
    return plan_sync(messages, set(known), keep_on_server=keep, max_message_size=limit, **kw)


# ---- parsing (RFC 1939 §5, §7) ---------------------------------------------------------


def test_uidl_line_with_number_and_printable_id_parses() -> None:
    assert parse_uidl_line(b"1 whqtswO00WBw418f9t5JxYwZ") == (1, "whqtswO00WBw418f9t5JxYwZ")
    assert parse_uidl_line(b"12 0000002a5f3e1c7b") == (12, "0000002a5f3e1c7b")


def test_malformed_uidl_lines_are_rejected() -> None:
    for line in [
        b"",
        b"1",
        b"1 ",
        b"x abc",
        b"0 abc",
        b"-1 abc",
        b"1 two words",
        b"1 tab\there",
        b"1 caf\xc3\xa9",
        b"1 " + b"a" * (MAX_UIDL_LENGTH + 1),
        b"this is not a listing line",
    ]:
        assert parse_uidl_line(line) is None, line


def test_list_line_parses_and_ignores_what_follows_the_size() -> None:
    assert parse_list_line(b"3 1205") == (3, 1205)
    assert parse_list_line(b"3 1205 extra info") == (3, 1205)
    assert parse_list_line(b"3") is None
    assert parse_list_line(b"3 big") is None
    assert parse_list_line(b"0 10") is None


def test_consistent_uidl_and_list_answers_make_a_complete_listing() -> None:
    result = build_listing([b"2 b", b"1 a"], [b"1 10", b"2 20"], stat_count=2)
    assert result.complete
    assert result.messages == (ListedMessage(1, "a", 10), ListedMessage(2, "b", 20))


def test_a_garbage_line_makes_the_listing_incomplete_but_keeps_good_lines() -> None:
    result = build_listing([b"garbage", b"1 a"], [b"1 10"])
    assert not result.complete
    assert result.messages == (ListedMessage(1, "a", 10),)
    assert any("malformed" in p for p in result.problems)


def test_uidl_and_list_disagreeing_on_numbers_is_incomplete() -> None:
    result = build_listing([b"1 a", b"2 b"], [b"1 10"])
    assert not result.complete
    assert result.messages == (ListedMessage(1, "a", 10), ListedMessage(2, "b", None))


def test_a_number_given_two_uidls_is_dropped_as_ambiguous() -> None:
    result = build_listing([b"1 a", b"1 b", b"2 c"], [b"1 10", b"2 20"])
    assert not result.complete
    assert [m.uidl for m in result.messages] == ["c"]


def test_stat_disagreeing_with_uidl_is_incomplete() -> None:
    assert not build_listing([b"1 a"], [b"1 10"], stat_count=2).complete


def test_missing_list_answer_gives_unknown_sizes_and_incomplete_listing() -> None:
    result = build_listing([b"1 a"], None)
    assert not result.complete
    assert result.messages == (ListedMessage(1, "a", None),)


# ---- planning ---------------------------------------------------------------------------


def test_new_uidls_are_fetched_in_message_number_order() -> None:
    p = plan(listing(("a", 10), ("b", 10), ("c", 10)), known={"b"})
    assert [m.uidl for m in p.fetch] == ["a", "c"]
    assert p.delete == () and p.too_large == ()


def test_messages_over_the_limit_are_planned_as_too_large_not_fetched() -> None:
    p = plan(listing(("a", LIMIT), ("b", LIMIT + 1)))
    assert [m.uidl for m in p.fetch] == ["a"]
    assert [m.uidl for m in p.too_large] == ["b"]


def test_unknown_size_is_fetched_and_bounded_while_streaming() -> None:
    p = plan([ListedMessage(1, "a", None)])
    assert [m.uidl for m in p.fetch] == ["a"]


def test_keep_on_server_never_deletes() -> None:
    assert plan(listing(("a", 1)), known={"a"}, keep=True).delete == ()


def test_delete_only_known_delivered_uidls_when_not_keeping() -> None:
    p = plan(
        listing(("a", 1), ("b", 1), ("c", 1)),
        known={"a", "c"},
        keep=False,
        not_deletable={"c"},
    )
    assert [m.uidl for m in p.delete] == ["a"]
    assert [m.uidl for m in p.fetch] == ["b"]


def test_an_incomplete_listing_deletes_and_forgets_nothing() -> None:
    p = plan(listing(("a", 1)), known={"a", "gone"}, keep=False, complete=False)
    assert p.delete == () and p.forget == frozenset()
    assert not p.trustworthy


def test_duplicate_uidls_fetch_the_first_occurrence_and_are_never_deleted() -> None:
    messages = listing(("a", 1), ("dup", 2), ("dup", 3), ("b", 4))
    p = plan(messages, known=set(), keep=False)
    assert [(m.number, m.uidl) for m in p.fetch] == [(1, "a"), (2, "dup"), (4, "b")]
    assert p.duplicates == {"dup"}
    p2 = plan(messages, known={"a", "dup", "b"}, keep=False)
    assert [m.uidl for m in p2.delete] == ["a", "b"]
    assert not p2.trustworthy and p2.forget == frozenset()


def test_known_uidls_no_longer_listed_are_forgotten() -> None:
    p = plan(listing(("a", 1)), known={"a", "old1", "old2"})
    assert p.forget == {"old1", "old2"}


def test_an_empty_listing_forgets_nothing() -> None:
    p = plan([], known={"a", "b"})
    assert p.forget == frozenset() and not p.trustworthy


# ---- properties -------------------------------------------------------------------------

# A small UIDL alphabet makes duplicates and overlaps with the ledger common.
uidls = st.sampled_from([f"u{i}" for i in range(12)])


@st.composite
def scenarios(draw):
    entries = draw(st.lists(st.tuples(uidls, st.integers(0, 2 * LIMIT)), max_size=15))
    messages = [ListedMessage(n, u, s) for n, (u, s) in enumerate(entries, 1)]
    known = draw(st.sets(uidls))
    not_deletable = draw(st.sets(st.sampled_from(sorted(known)))) if known else set()
    return (
        messages,
        known,
        not_deletable,
        draw(st.booleans()),  # keep_on_server
        draw(st.booleans()),  # complete
        draw(st.randoms(use_true_random=False)),
    )


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_plan_properties_hold_whatever_the_listing_order(scenario) -> None:
    """Never fetch a known UIDL, never forget a listed one, never delete an unknown or
    skipped one, fetch each UIDL at most once, and the same plan for any order."""
    messages, known, not_deletable, keep, complete, rnd = scenario
    shuffled = list(messages)
    rnd.shuffle(shuffled)
    kwargs = dict(
        keep_on_server=keep,
        max_message_size=LIMIT,
        not_deletable=not_deletable,
        complete=complete,
    )
    p = plan_sync(messages, known, **kwargs)
    q = plan_sync(shuffled, known, **kwargs)
    assert p == q

    listed = {m.uidl for m in messages}
    fetched = [m.uidl for m in p.fetch]
    skipped = [m.uidl for m in p.too_large]
    assert not set(fetched) & known
    assert len(fetched) == len(set(fetched))
    assert not set(fetched) & set(skipped)
    assert set(fetched) | set(skipped) == listed - known
    assert not p.forget & listed
    assert p.forget <= known
    deleted = [m.uidl for m in p.delete]
    assert set(deleted) <= known - not_deletable
    assert not set(deleted) & p.duplicates
    if keep or not complete:
        assert deleted == []
    # the fetched occurrence is the first (lowest message number) of its UIDL
    first = {}
    for m in sorted(messages):
        first.setdefault(m.uidl, m.number)
    assert all(first[m.uidl] == m.number for m in p.fetch + p.too_large)
    assert [m.number for m in p.fetch] == sorted(m.number for m in p.fetch)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(uidls, max_size=10), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
def test_repeated_passes_over_a_changing_server_fetch_every_uidl_at_most_once(
    maildrops, rnd
) -> None:
    """Simulates several sessions, each listing in a random order: a UIDL is fetched
    at most once while the ledger remembers it; the ledger only forgets what vanished."""
    ledger: set[str] = set()
    fetched_ever: list[str] = []
    for maildrop in maildrops:
        messages = [ListedMessage(n, u, 1) for n, u in enumerate(maildrop, 1)]
        rnd.shuffle(messages)
        p = plan_sync(messages, ledger, keep_on_server=True, max_message_size=LIMIT)
        for m in p.fetch:
            assert m.uidl not in ledger
            fetched_ever.append(m.uidl)
            ledger.add(m.uidl)
        assert not p.forget & set(maildrop)
        ledger -= p.forget
    # a UIDL fetched twice must have vanished from the server (and been forgotten) between
    for uidl in set(fetched_ever):
        if fetched_ever.count(uidl) > 1:
            sessions_listing = [uidl in set(m) for m in maildrops]
            assert not all(sessions_listing)


def test_shuffled_listings_give_identical_plans_for_a_large_maildrop() -> None:
    messages = listing(*((f"id{i:05d}", 100) for i in range(5000)))
    known = {f"id{i:05d}" for i in range(0, 5000, 3)}
    shuffled = list(messages)
    random.Random(7).shuffle(shuffled)
    a = plan(messages, known, keep=False)
    b = plan(shuffled, known, keep=False)
    assert a == b
    assert len(a.fetch) == 5000 - len(known) and len(a.delete) == len(known)


# ---- identity without UIDL (fallback_uidl) -----------------------------------------------

HEAD = [
    b"Received: from a by b",
    b"Message-ID: <abc@example.net>",
    b"Date: Mon, 2 Jan 2023 10:00:00 +0000",
    b"From: Ann <ann@example.net>",
    b"Subject: hello",
    b"  folded part",
]


def test_fallback_uidl_is_stable_printable_and_a_valid_ledger_key() -> None:
    first = fallback_uidl(HEAD, 1234)
    assert first == fallback_uidl(list(HEAD), 1234)
    assert first.startswith(FALLBACK_UIDL_PREFIX)
    assert parse_uidl_line(b"1 " + first.encode()) == (1, first)


def test_fallback_uidl_changes_with_size_or_any_identifying_field() -> None:
    base = fallback_uidl(HEAD, 1234)
    assert fallback_uidl(HEAD, 1235) != base
    for i in range(1, 6):
        changed = list(HEAD)
        changed[i] = changed[i] + b"x"
        assert fallback_uidl(changed, 1234) != base, changed[i]


def test_fallback_uidl_ignores_other_headers_case_and_folding_whitespace() -> None:
    other = [b"Received: from elsewhere"] + [
        line.replace(b"Message-ID", b"message-id") for line in HEAD[1:]
    ]
    other[-1] = b"\tfolded   part"
    assert fallback_uidl(other, 1234) == fallback_uidl(HEAD, 1234)


def test_header_fields_unfold_and_keep_the_first_occurrence_only() -> None:
    fields = header_fields([b"Subject: a", b" b", b"Subject: second", b"", b"Body: not"])
    assert fields == {"subject": b"a b"}


# ---- deletion policies ------------------------------------------------------------------

NOW = 1_000_000.0
DAY = 86400.0


def facts(**entries: tuple[str, float] | tuple[str, float, bool]) -> dict[str, LedgerFact]:
    return {uidl: LedgerFact(*value) for uidl, value in entries.items()}


def chosen(result) -> dict[str, str]:
    return {m.uidl: policy for m, policy in result}


def test_default_policy_deletes_nothing() -> None:
    msgs = listing(("a", 10), ("b", 10))
    ledger = facts(a=("delivered", 0.0), b=("delivered", 0.0))
    assert plan_deletions(msgs, ledger, DeletionPolicy(), now=NOW, complete=True) == ()


def test_keep_on_server_false_deletes_every_delivered_message_only() -> None:
    msgs = listing(("a", 10), ("s", 10), ("i", 10), ("new", 10))
    ledger = facts(a=("delivered", NOW), s=("skipped", NOW), i=("imported", NOW))
    result = plan_deletions(
        msgs, ledger, DeletionPolicy(keep_on_server=False), now=NOW, complete=True
    )
    assert chosen(result) == {"a": POLICY_FETCHED}


def test_delete_after_deletes_messages_fetched_at_least_that_long_ago() -> None:
    msgs = listing(("old", 10), ("edge", 10), ("young", 10))
    ledger = facts(
        old=("delivered", NOW - 40 * DAY),
        edge=("delivered", NOW - 30 * DAY),
        young=("delivered", NOW - 29 * DAY),
    )
    policy = DeletionPolicy(delete_after=30 * DAY)
    result = plan_deletions(msgs, ledger, policy, now=NOW, complete=True)
    assert chosen(result) == {"old": POLICY_AGE, "edge": POLICY_AGE}


def test_delete_when_over_removes_oldest_fetched_until_under_the_limit() -> None:
    msgs = listing(("m1", 100), ("m2", 100), ("m3", 100), ("m4", 100))
    ledger = facts(
        m1=("delivered", NOW - 1),
        m2=("delivered", NOW - 4),
        m3=("delivered", NOW - 3),
        m4=("delivered", NOW - 2),
    )
    policy = DeletionPolicy(delete_when_over=250)
    result = plan_deletions(msgs, ledger, policy, now=NOW, complete=True)
    assert chosen(result) == {"m2": POLICY_SIZE, "m3": POLICY_SIZE}
    assert [m.number for m, _ in result] == [2, 3]  # reported in message-number order


def test_delete_when_over_never_touches_undelivered_mail_even_if_still_over() -> None:
    msgs = listing(("new", 500), ("d", 100))
    ledger = facts(d=("delivered", NOW))
    result = plan_deletions(
        msgs, ledger, DeletionPolicy(delete_when_over=100), now=NOW, complete=True
    )
    assert chosen(result) == {"d": POLICY_SIZE}


def test_deleted_in_imap_delete_removes_only_messages_no_longer_stored() -> None:
    msgs = listing(("gone", 10), ("kept", 10))
    ledger = facts(gone=("delivered", NOW, False), kept=("delivered", NOW, True))
    assert plan_deletions(msgs, ledger, DeletionPolicy(), now=NOW, complete=True) == ()
    result = plan_deletions(
        msgs, ledger, DeletionPolicy(deleted_in_imap="delete"), now=NOW, complete=True
    )
    assert chosen(result) == {"gone": POLICY_IMAP}


def test_no_deletion_from_an_incomplete_listing_or_of_a_duplicated_uidl() -> None:
    msgs = listing(("a", 10), ("dup", 10), ("dup", 10))
    ledger = facts(a=("delivered", 0.0), dup=("delivered", 0.0))
    policy = DeletionPolicy(keep_on_server=False)
    assert plan_deletions(msgs, ledger, policy, now=NOW, complete=False) == ()
    assert chosen(plan_deletions(msgs, ledger, policy, now=NOW, complete=True)) == {
        "a": POLICY_FETCHED
    }


policies = st.builds(
    DeletionPolicy,
    keep_on_server=st.booleans(),
    delete_after=st.none() | st.floats(0, 10 * DAY),
    delete_when_over=st.none() | st.integers(0, 5000),
    deleted_in_imap=st.sampled_from(["keep", "delete"]),
)
ledger_states = st.sampled_from(["delivered", "skipped", "imported", None])


@settings(max_examples=300)
@given(
    data=st.lists(
        st.tuples(
            st.sampled_from([f"u{i}" for i in range(12)]),
            st.integers(0, 1000),
            ledger_states,
            st.floats(0, 20 * DAY),
            st.booleans(),
        ),
        max_size=15,
    ),
    policy=policies,
    complete=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_policies_only_ever_delete_delivered_uniquely_listed_messages_in_any_order(
    data, policy, complete, seed
) -> None:
    msgs = [ListedMessage(n, uidl, size) for n, (uidl, size, *_rest) in enumerate(data, 1)]
    ledger: dict[str, LedgerFact] = {}
    for uidl, _size, state, age, stored in data:
        if state is not None:
            ledger.setdefault(uidl, LedgerFact(state, NOW - age, stored))
    result = plan_deletions(msgs, ledger, policy, now=NOW, complete=complete)
    shuffled = list(msgs)
    random.Random(seed).shuffle(shuffled)
    assert plan_deletions(shuffled, ledger, policy, now=NOW, complete=complete) == result
    numbers = [m.number for m, _ in result]
    assert numbers == sorted(set(numbers))
    listed_twice = {u for u in (m.uidl for m in msgs) if sum(x.uidl == u for x in msgs) > 1}
    for message, _why in result:
        assert complete and policy.deletes_anything
        assert ledger[message.uidl].state == "delivered"
        assert message.uidl not in listed_twice
    if complete and policy.delete_when_over is not None:
        left = sum(m.size or 0 for m in msgs) - sum(m.size or 0 for m, _ in result)
        deletable = [
            m
            for m in msgs
            if m.uidl not in listed_twice
            and ledger.get(m.uidl, LedgerFact("none", 0)).state == "delivered"
        ]
        assert left <= policy.delete_when_over or len(result) == len(deletable)
