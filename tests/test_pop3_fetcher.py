"""The POP3 fetcher (gateway.pop3.fetcher, .client) against FakePOP3Server over real loopback
sockets and a real SQLiteStore (gateway.testing.pop3fetch.FetchHarness, the ``fake_upstream``
fixture). The poller's scheduling is in test_pop3_poller.py.

The reactor runs in a background thread (gateway.testing.reactor_thread.ReactorThread); everything
that touches the reactor or the store goes through ``rt.call``.
"""

from __future__ import annotations

import poplib
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from twisted.internet import reactor as global_reactor
from twisted.internet.error import ConnectionAborted
from twisted.internet.error import TimeoutError as StepTimedOut
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail.pop3 import AdvancedPOP3Client, LineTooLong
from twisted.python.failure import Failure

from gateway.pop3 import fetcher as fetcher_module
from gateway.pop3 import spool as spool_module
from gateway.pop3.client import UpstreamClient
from gateway.pop3.errors import UpstreamProtocolError
from gateway.pop3.fetcher import fetch_once
from gateway.pop3.framing import MAX_LINE_LENGTH
from gateway.pop3.retrieval import PIPELINE_DEPTH
from gateway.pop3.spool import MessageSink
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.pop3data import dot_stuff, normalize_message
from gateway.testing.pop3fetch import OWNER, PASSWORD, USER
from gateway.testing.tlsca import CA, ServerTLSContext, make_ca


def sample(count: int, seed: int = 1) -> list[bytes]:
    return samplemail.generate(count, seed)


# ---- basic fetching -----------------------------------------------------------------------


def test_fetches_every_message_byte_identical_in_server_order(fake_upstream) -> None:
    messages = sample(20)
    h = fake_upstream(messages=messages)
    result = h.fetch()
    assert result.fetched == 20 and result.listed == 20 and result.errors == 0
    assert result.bytes == sum(len(m) for m in messages)
    assert result.complete_listing
    assert h.inbox() == [normalize_message(m) for m in messages]
    ledger = h.ledger()
    assert set(ledger) == set(h.server.uidls())
    assert all(e.state == "delivered" for e in ledger.values())
    assert len(h.server.messages) == 20  # keep_on_server defaults to true


def test_second_pass_fetches_nothing_new(fake_upstream) -> None:
    h = fake_upstream(messages=sample(5))
    h.fetch()
    again = h.fetch()
    assert again.fetched == 0 and again.listed == 5
    assert len(h.inbox()) == 5
    assert "RETR" not in h.verbs(session=2)


def test_only_newly_arrived_messages_are_fetched(fake_upstream) -> None:
    h = fake_upstream(messages=sample(4))
    h.fetch()
    extra = sample(3, seed=99)
    for raw in extra:
        h.server.add_message(raw)
    result = h.fetch()
    assert result.fetched == 3
    retrieved = [c.args for c in h.server.commands if c.session == 2 and c.verb == "RETR"]
    assert retrieved == [("5",), ("6",), ("7",)]
    assert h.inbox()[4:] == [normalize_message(m) for m in extra]


def test_auto_login_uses_user_pass_even_when_the_greeting_offers_apop(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1), sasl=())
    h.server.faults.apop_challenge = True
    assert h.fetch().fetched == 1
    assert "APOP" not in h.verbs()
    assert h.verbs()[:3] == ["CAPA", "USER", "PASS"]


def test_auto_login_prefers_sasl_plain_when_capa_offers_it(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1))
    h.server.faults.apop_challenge = True
    assert h.fetch(auth="auto").fetched == 1
    assert h.verbs()[:2] == ["CAPA", "AUTH"]
    assert not {"USER", "PASS", "APOP"} & set(h.verbs())


def test_user_mode_never_asks_capa_and_sends_user_pass(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1))
    assert h.fetch(auth="user").fetched == 1
    assert h.verbs()[:2] == ["USER", "PASS"]


def test_plain_mode_is_refused_before_any_credential_when_not_offered(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1), sasl=())
    error = h.fetch_error(auth="plain")
    assert error.kind == "auth" and "SASL PLAIN" in str(error)
    assert h.verbs() == ["CAPA", "QUIT"] or h.verbs() == ["CAPA"]


def test_starttls_with_auto_reads_capa_again_over_tls_before_auth(
    fake_upstream, fake_ca, tmp_path
) -> None:
    context = tls_options(fake_ca, tmp_path / "good", ("localhost", "127.0.0.1"))
    h = fake_upstream(messages=sample(2), tls_context=context)
    assert h.fetch(tls="starttls", ca_file=str(fake_ca.cert_path)).fetched == 2
    records = h.server.commands
    assert [(c.verb, c.tls) for c in records[:4]] == [
        ("CAPA", False),
        ("STLS", False),
        ("CAPA", True),
        ("AUTH", True),
    ]


def test_apop_is_used_only_when_configured(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1))
    h.server.faults.apop_challenge = True
    assert h.fetch(auth="apop").fetched == 1
    assert "APOP" in h.verbs() and "PASS" not in h.verbs()


def test_auth_plain_when_configured(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1))
    assert h.fetch(auth="plain").fetched == 1
    assert h.verbs()[:2] == ["CAPA", "AUTH"]
    auth = next(c for c in h.server.commands if c.verb == "AUTH")
    assert auth.args == ("***",)  # the fake redacts; the credentials went as one SASL token


def test_wrong_password_fails_as_auth_error_and_fetches_nothing(fake_upstream) -> None:
    h = fake_upstream(messages=sample(2))
    error = h.fetch_error(password="wrong")
    assert error.kind == "auth"
    assert "refused the login" in str(error)
    assert "wrong" not in str(error)
    assert h.inbox() == []


def test_server_without_uidl_is_fetched_once_by_header_fingerprint(fake_upstream) -> None:
    messages = sample(6, seed=11)
    h = fake_upstream(messages=messages)
    h.server.faults.no_uidl = True
    first = h.fetch()
    assert first.fetched == 6 and first.complete_listing
    assert h.inbox() == [normalize_message(m) for m in messages]
    assert all(u.startswith("popgate-h-") for u in h.ledger())
    h.server.add_message(sample(1, seed=12)[0])
    second = h.fetch()
    assert second.fetched == 1 and len(h.inbox()) == 7
    assert "RETR" in h.verbs(session=2) and h.verbs(session=2).count("RETR") == 1


def test_server_without_uidl_keep_on_server_false_deletes_what_it_stored(fake_upstream) -> None:
    h = fake_upstream(messages=sample(4, seed=13))
    h.server.faults.no_uidl = True
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 4 and result.deleted == 4
    assert h.server.messages == [] and len(h.inbox()) == 4


def test_server_with_neither_uidl_nor_top_is_a_clear_error(fake_upstream) -> None:
    h = fake_upstream(messages=sample(2))
    h.server.faults.no_uidl = True
    h.server.faults.no_top = True
    error = h.fetch_error()
    assert error.kind == "uidl_unsupported"
    assert "UIDL" in str(error) and "TOP" in str(error)
    assert h.inbox() == []


def test_log_events_name_the_upstream_and_counts_and_never_the_password(fake_upstream) -> None:
    h = fake_upstream(messages=sample(2))
    with structlog.testing.capture_logs() as events:
        h.fetch()
        h.fetch_error(password=PASSWORD + "-wrong")
    names = [e["event"] for e in events]
    assert names.count("pop3.fetch_start") == 2
    fetched = next(e for e in events if e["event"] == "pop3.fetched")
    assert fetched["upstream"] == "isp" and fetched["count"] == 2
    assert fetched["bytes"] > 0 and "seconds" in fetched
    failed = next(e for e in events if e["event"] == "pop3.fetch_failed")
    assert failed["error"] == "auth" and failed["upstream"] == "isp"
    assert PASSWORD not in repr(events)


# ---- deletion policy ------------------------------------------------------------------------


def test_keep_on_server_false_deletes_only_after_the_delivery_committed(fake_upstream) -> None:
    messages = sample(6)
    h = fake_upstream(messages=messages)
    seen_at_dele: list[tuple[str, str | None]] = []

    def hook(session, verb, args) -> None:
        if verb == "DELE":
            uidl = session.maildrop[int(args[0]) - 1].uidl
            entries = {e.uidl: e.state for e in h.store.ledger_entries("isp")}
            seen_at_dele.append((uidl, entries.get(uidl)))

    h.server.command_hook = hook
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 6 and result.deleted == 6
    assert len(seen_at_dele) == 6
    assert all(state == "delivered" for _, state in seen_at_dele)
    assert h.server.messages == []
    verbs = h.verbs(session=1)
    assert verbs.index("DELE") > max(i for i, v in enumerate(verbs) if v == "RETR")
    assert verbs[-1] == "QUIT"
    assert h.inbox() == [normalize_message(m) for m in messages]


def test_too_large_message_is_skipped_recorded_and_never_deleted(fake_upstream) -> None:
    small, big = b"Subject: small\r\n\r\nhi\r\n", b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
    h = fake_upstream(messages=[("small", small), ("big", big)])
    result = h.fetch(max_message_size=1000, keep_on_server=False)
    assert result.fetched == 1 and result.skipped == 1 and result.deleted == 1
    assert h.inbox() == [small]
    ledger = h.ledger()
    assert ledger["big"].state == "skipped" and "too large" in (ledger["big"].reason or "")
    assert h.server.uidls() == ["big"]
    assert ("2",) not in [c.args for c in h.server.commands if c.verb == "RETR"]
    again = h.fetch(max_message_size=1000, keep_on_server=False)
    assert again.fetched == 0 and again.skipped == 0 and again.deleted == 0
    assert h.server.uidls() == ["big"]


def test_size_limit_is_enforced_while_streaming_when_list_understates(fake_upstream) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100
    h = fake_upstream(messages=[("ok", b"Subject: ok\r\n\r\nfine\r\n"), ("big", big)])
    h.server.faults.understate_list_sizes = True
    result = h.fetch(max_message_size=2000)
    assert result.fetched == 1 and result.skipped == 1
    assert h.ledger()["big"].state == "skipped"
    assert len(h.inbox()) == 1


def test_failed_quit_leaves_messages_on_the_server_and_the_next_pass_deletes_them(
    fake_upstream,
) -> None:
    h = fake_upstream(messages=sample(3))
    h.server.faults.err_on_quit = True
    first = h.fetch(keep_on_server=False)
    assert first.fetched == 3 and first.deleted == 0 and first.errors == 1
    assert len(h.server.messages) == 3
    h.server.faults.err_on_quit = False
    second = h.fetch(keep_on_server=False)
    assert second.fetched == 0 and second.deleted == 3
    assert h.server.messages == [] and len(h.inbox()) == 3


def test_dele_refused_leaves_that_message_and_deletes_the_rest(fake_upstream) -> None:
    h = fake_upstream(messages=[("a", b"A\r\n"), ("b", b"B\r\n"), ("c", b"C\r\n")])
    h.server.faults.err_on_dele = {"b"}
    result = h.fetch(keep_on_server=False)
    assert result.deleted == 2 and result.errors == 1
    assert h.server.uidls() == ["b"]


def test_messages_gone_from_the_server_are_forgotten_by_the_ledger(fake_upstream) -> None:
    h = fake_upstream(messages=[("a", b"A\r\n"), ("b", b"B\r\n"), ("c", b"C\r\n")])
    h.fetch()
    h.server.remove_message("a")
    h.server.remove_message("b")
    result = h.fetch()
    assert result.forgotten == 2
    assert set(h.ledger()) == {"c"}
    assert len(h.inbox()) == 3  # forgetting the ledger entry never touches stored mail


# ---- batch commits, policies, dedup, progress -------------------------------------------------


class CountingStore:
    """Wraps a store, recording the size of every deliver_many batch."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.batches: list[int] = []

    def deliver_many(self, owner, mailbox, deliveries, **kw):
        self.batches.append(len(deliveries))
        return self._store.deliver_many(owner, mailbox, deliveries, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_messages_are_committed_in_batches_of_bounded_size(fake_upstream, monkeypatch) -> None:
    monkeypatch.setattr(fetcher_module, "BATCH_MAX_MESSAGES", 20)
    monkeypatch.setattr(fetcher_module, "BATCH_MAX_SECONDS", 3600.0)
    messages = sample(45, seed=21)
    h = fake_upstream(messages=messages)
    counting = CountingStore(h.store)
    result = h.rt.call(fetch_once, h.upstream(), counting, reactor=global_reactor)
    h.rt.call(h.server.when_idle)
    assert counting.batches == [20, 20, 5]
    assert result.fetched == 45
    assert h.inbox() == [normalize_message(m) for m in messages]


def test_a_batch_with_a_message_over_the_store_limit_is_retried_one_by_one(
    fake_upstream, rt, tmp_path
) -> None:
    small_store = rt.call(SQLiteStore, tmp_path / "small.db", max_message_size=2000)
    try:
        big = b"Subject: big\r\n\r\n" + b"b" * 3000 + b"\r\n"
        h = fake_upstream(
            messages=[("a", b"A\r\n"), ("big", big), ("c", b"C\r\n")], store=small_store
        )
        result = h.fetch()
        assert result.fetched == 2 and result.skipped == 1
        assert h.inbox() == [b"A\r\n", b"C\r\n"]
        assert h.ledger()["big"].state == "skipped"
    finally:
        rt.call(small_store.close)


def test_delete_after_deletes_only_messages_fetched_long_enough_ago(
    fake_upstream, rt, tmp_path
) -> None:
    import time as _time

    offset = {"days": 0.0}
    store = rt.call(
        SQLiteStore, tmp_path / "aged.db", clock=lambda: _time.time() - offset["days"] * 86400
    )
    try:
        h = fake_upstream(messages=[("old1", b"1\r\n"), ("old2", b"2\r\n")], store=store)
        offset["days"] = 31
        with structlog.testing.capture_logs() as events:
            first = h.fetch(delete_after=30 * 86400.0)
        assert first.fetched == 2 and first.deleted == 2  # fetched "31 days ago"
        deleted = [e for e in events if e["event"] == "pop3.deleted"]
        assert deleted == [
            {
                "event": "pop3.deleted",
                "upstream": "isp",
                "owner": "alice",
                "count": 2,
                "policy": "delete_after",
                "log_level": "info",
            }
        ]
        h.server.add_message(b"3\r\n", uidl="young")
        offset["days"] = 1
        second = h.fetch(delete_after=30 * 86400.0)
        assert second.fetched == 1 and second.deleted == 0
        assert h.server.uidls() == ["young"]
    finally:
        rt.call(store.close)


def test_delete_when_over_removes_oldest_fetched_until_the_mailbox_is_small_enough(
    fake_upstream,
) -> None:
    bodies = [(f"m{i}", b"x" * 98 + b"\r\n") for i in range(5)]  # 100 octets each
    h = fake_upstream(messages=bodies)
    result = h.fetch(delete_when_over=300)
    assert result.fetched == 5 and result.deleted == 2
    assert h.server.uidls() == ["m2", "m3", "m4"]
    assert len(h.inbox()) == 5
    again = h.fetch(delete_when_over=300)
    assert again.deleted == 0


def test_deleted_in_imap_keep_is_the_default_and_delete_removes_expunged_mail(
    fake_upstream,
) -> None:
    h = fake_upstream(messages=[("a", b"A\r\n"), ("b", b"B\r\n"), ("c", b"C\r\n")])
    h.fetch()

    def expunge_b() -> None:
        box = h.store.get_mailbox(OWNER, "INBOX")
        h.store.store_flags(box.id, [2], "+", ["\\Deleted"])
        h.store.expunge(box.id)

    h.rt.call(expunge_b)
    assert h.fetch().deleted == 0  # default "keep": the server copy stays as a backup
    assert h.server.uidls() == ["a", "b", "c"]
    result = h.fetch(deleted_in_imap="delete")
    assert result.deleted == 1 and h.server.uidls() == ["a", "c"]
    assert h.inbox() == [b"A\r\n", b"C\r\n"]


def test_same_message_through_two_upstreams_is_stored_once_and_both_ledgers_record_it(
    fake_upstream, rt
) -> None:
    shared = normalize_message(sample(1, seed=31)[0])
    first = fake_upstream(messages=[("one-a", shared), ("one-b", b"only in one\r\n")])
    second = fake_upstream(messages=[("two-a", shared)], store=first.store)
    assert first.fetch().fetched == 2
    result = second.fetch(name="other")
    assert result.fetched == 0 and result.deduplicated == 1
    assert first.inbox() == [shared, b"only in one\r\n"]
    assert set(first.ledger("other")) == {"two-a"}
    third = fake_upstream(messages=[("three-a", shared)], store=first.store)
    assert third.fetch(name="third", dedup=False).fetched == 1
    assert first.inbox().count(shared) == 2


def test_progress_reports_every_message_and_logs_every_n(fake_upstream, monkeypatch) -> None:
    monkeypatch.setattr(fetcher_module, "PROGRESS_LOG_EVERY", 4)
    h = fake_upstream(messages=sample(9, seed=41))
    seen: list[dict[str, Any]] = []
    with structlog.testing.capture_logs() as events:
        result = h.fetch(progress=seen.append)
    fetching = [p for p in seen if p["phase"] == "fetching" and p["received"]]
    assert [p["received"] for p in fetching] == list(range(1, 10))
    assert all(p["upstream"] == "isp" and p["to_fetch"] == 9 for p in fetching)
    assert [p["backlog"] for p in fetching] == list(range(8, -1, -1))
    assert seen[-1]["phase"] == "done" and seen[-1]["stored"] == 9
    assert seen[-1]["bytes"] == result.bytes
    logged = [e["received"] for e in events if e["event"] == "pop3.progress"]
    assert logged == [4, 8]


# ---- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_connection_drop_mid_retr_keeps_earlier_messages_and_refetches_without_duplicates(
    fake_upstream, pipelining: bool
) -> None:
    """The connection drops inside one answer (with pipelining, while later RETRs are on
    the wire): what came before is committed, nothing is deleted, and the next pass
    fetches the rest exactly once."""
    messages = sample(12)
    h = fake_upstream(messages=messages)
    h.server.faults.pipelining = pipelining
    victim = h.server.uidls()[4]
    h.server.faults.drop_mid_retr = {victim}
    error = h.fetch_error(keep_on_server=False)
    assert error.kind == "connection_lost"
    assert error.result.fetched == 4
    assert h.inbox() == [normalize_message(m) for m in messages[:4]]
    assert victim not in h.ledger()
    assert len(h.server.messages) == 12  # no QUIT: no deletion took effect
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 8 and result.deleted == 12
    assert h.inbox() == [normalize_message(m) for m in messages]
    assert h.server.messages == []


def test_pipelined_retrs_fetch_every_message_once_in_order_and_skip_a_refused_one(
    fake_upstream,
) -> None:
    """A server announcing PIPELINING (RFC 2449 §6.6) gets up to PIPELINE_DEPTH RETRs
    ahead; the store still receives every message once, in server order, and an -ERR
    among the pipelined answers skips only that message."""
    messages = sample(PIPELINE_DEPTH * 3)
    h = fake_upstream(messages=messages)
    h.server.faults.pipelining = True
    refused = h.server.uidls()[5]
    h.server.faults.err_on_retr = {refused}
    first = h.fetch(keep_on_server=False)
    assert first.fetched == len(messages) - 1 and first.errors == 1
    retrieved = [c.args for c in h.server.commands if c.session == 1 and c.verb == "RETR"]
    assert retrieved == [(str(n),) for n in range(1, len(messages) + 1)]
    assert h.inbox() == [normalize_message(m) for i, m in enumerate(messages) if i != 5]
    assert h.server.uidls() == [refused]
    h.server.faults.err_on_retr = set()
    assert h.fetch(keep_on_server=False).fetched == 1
    assert sorted(h.inbox()) == sorted(normalize_message(m) for m in messages)


def test_err_on_retr_skips_the_message_for_this_pass_only(fake_upstream) -> None:
    messages = sample(4)
    h = fake_upstream(messages=messages)
    refused = h.server.uidls()[1]
    h.server.faults.err_on_retr = {refused}
    first = h.fetch(keep_on_server=False)
    assert first.fetched == 3 and first.errors == 1 and first.deleted == 3
    assert refused not in h.ledger()
    assert h.server.uidls() == [refused]
    h.server.faults.err_on_retr = set()
    second = h.fetch(keep_on_server=False)
    assert second.fetched == 1 and second.deleted == 1
    assert sorted(h.inbox()) == sorted(normalize_message(m) for m in messages)


def test_stalled_server_times_out_with_a_clear_error_and_the_next_pass_recovers(
    fake_upstream,
) -> None:
    messages = sample(2)
    h = fake_upstream(messages=messages)
    h.server.faults.stall_on = {"RETR"}
    error = h.fetch_error(timeout=0.5)
    assert error.kind == "timeout"
    assert h.inbox() == []
    h.server.faults.stall_on = set()
    assert h.fetch(keep_on_server=False).fetched == 2
    assert h.inbox() == [normalize_message(m) for m in messages] and h.server.messages == []


def test_err_on_dele_then_recovery_deletes_it_later_and_stores_it_once(fake_upstream) -> None:
    h = fake_upstream(messages=[("a", b"A\r\n"), ("b", b"B\r\n")])
    h.server.faults.err_on_dele = {"a"}
    assert h.fetch(keep_on_server=False).deleted == 1
    h.server.faults.err_on_dele = set()
    again = h.fetch(keep_on_server=False)
    assert again.fetched == 0 and again.deleted == 1
    assert h.inbox() == [b"A\r\n", b"B\r\n"] and h.server.messages == []


def test_garbage_in_listings_still_fetches_but_neither_deletes_nor_forgets(fake_upstream) -> None:
    h = fake_upstream(messages=[("a", b"A\r\n"), ("b", b"B\r\n")])
    h.fetch()
    h.server.add_message(b"C\r\n", uidl="c")
    h.server.remove_message("a")
    h.server.faults.garbage_in_listings = True
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 1 and not result.complete_listing
    assert result.deleted == 0 and result.forgotten == 0
    assert set(h.ledger()) == {"a", "b", "c"}
    assert h.server.uidls() == ["b", "c"]


def test_a_stray_line_instead_of_a_status_stops_the_session_before_the_password(
    fake_upstream,
) -> None:
    h = fake_upstream(messages=sample(1))
    h.server.faults.garbage_after_greeting = True
    error = h.fetch_error()
    assert error.kind == "protocol"
    assert "+OK or -ERR" in str(error)
    assert "PASS" not in h.verbs()
    assert h.inbox() == []


def test_duplicate_uidls_fetch_the_first_and_delete_neither(fake_upstream) -> None:
    h = fake_upstream(
        messages=[
            ("one", b"Subject: 1\r\n\r\n1\r\n"),
            ("dup", b"Subject: first dup\r\n\r\nA\r\n"),
            ("dup", b"Subject: second dup\r\n\r\nB\r\n"),
            ("two", b"Subject: 2\r\n\r\n2\r\n"),
        ]
    )
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 3 and result.duplicates == 1
    assert b"Subject: first dup\r\n\r\nA\r\n" in h.inbox()
    assert b"Subject: second dup\r\n\r\nB\r\n" not in h.inbox()
    assert result.deleted == 2
    assert h.server.uidls() == ["dup", "dup"]


def test_reordered_listing_pairs_each_number_with_its_own_uidl(fake_upstream) -> None:
    messages = sample(10, seed=5)
    h = fake_upstream(messages=messages)
    h.server.faults.reverse_listings = True
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 10 and result.complete_listing and result.deleted == 10
    assert h.inbox() == [normalize_message(m) for m in messages]
    assert h.server.messages == []
    expected_sizes = {f"fake-{n:08d}": len(normalize_message(m)) for n, m in enumerate(messages, 1)}
    assert {u: e.size for u, e in h.ledger().items()} == expected_sizes


# ---- message bytes --------------------------------------------------------------------------


def test_a_100_kb_line_arrives_intact(fake_upstream) -> None:
    raw = b"Subject: long\r\n\r\n" + b"z" * 100_000 + b"\r\nend\r\n"
    h = fake_upstream(messages=[raw])
    assert h.fetch().fetched == 1
    assert h.inbox() == [raw]


def test_eight_bit_bytes_and_dot_stuffing_survive_exactly(fake_upstream) -> None:
    raw = (
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=latin-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + bytes(range(0x80, 0x100))
        + b"\r\n.\r\n..\r\n.leading dot\r\nbare\rcr and tab\t\r\n\r\n\r\nlast\r\n"
    )
    h = fake_upstream(messages=[raw])
    assert b"\r\n..\r\n...\r\n..leading dot\r\n" in dot_stuff(raw)
    assert h.fetch().fetched == 1
    assert h.inbox() == [raw]


def test_a_line_over_the_client_limit_is_recorded_and_the_rest_still_arrives(fake_upstream) -> None:
    long_raw = b"Subject: huge line\r\n\r\n" + b"q" * (MAX_LINE_LENGTH + 10) + b"\r\n"
    h = fake_upstream(messages=[("before", b"B\r\n"), ("long", long_raw), ("after", b"A\r\n")])
    error = h.fetch_error()
    assert error.kind == "line_too_long"
    ledger = h.ledger()
    assert ledger["long"].state == "skipped" and "line" in (ledger["long"].reason or "")
    result = h.fetch()
    assert result.fetched == 1
    assert h.inbox() == [b"B\r\n", b"A\r\n"]


def test_message_sink_rebuilds_crlf_lines_and_stops_keeping_data_past_the_limit() -> None:
    sink = MessageSink(limit=10)
    sink.line(b"abc")
    sink.line(b"")
    assert sink.getvalue() == b"abc\r\n\r\n" and not sink.oversized
    sink.line(b"defg")
    assert sink.oversized and sink.size == 13
    sink.close()


def test_message_sink_asks_to_drop_the_connection_far_past_the_limit(monkeypatch) -> None:
    monkeypatch.setattr(spool_module, "OVERSIZE_DRAIN_LIMIT", 100)
    dropped: list[bool] = []
    sink = MessageSink(limit=10, on_overflow=lambda: dropped.append(True))
    for _ in range(20):
        sink.line(b"x" * 20)
    assert sink.oversized and dropped == [True]
    sink.close()


# ---- the fake server itself, checked with the standard library's poplib -------------------


def test_fake_server_speaks_rfc1939_to_poplib(fake_upstream) -> None:
    raw = b"Subject: t\r\n\r\n.dot\r\nline2\r\nline3\r\n"
    h = fake_upstream(messages=[("a", raw), ("b", b"B\r\n")])
    port = h.port.getHost().port
    conn = poplib.POP3("127.0.0.1", port, timeout=10)
    conn.user(USER)
    conn.pass_(PASSWORD)
    assert conn.stat() == (2, len(raw) + 3)
    assert conn.list()[1] == [b"1 %d" % len(raw), b"2 3"]
    assert conn.uidl(2) == b"+OK 2 b"
    assert conn.retr(1)[1] == [b"Subject: t", b"", b".dot", b"line2", b"line3"]
    assert conn.top(1, 1)[1] == [b"Subject: t", b"", b".dot"]
    conn.dele(1)
    with pytest.raises(poplib.error_proto):
        conn.retr(1)
    conn.rset()
    conn.dele(2)
    second = poplib.POP3("127.0.0.1", port, timeout=10)
    second.user(USER)
    with pytest.raises(poplib.error_proto, match="IN-USE"):
        second.pass_(PASSWORD)  # RFC 1939 §4: the maildrop is locked by the first session
    second.quit()
    assert h.server.uidls() == ["a", "b"]  # nothing deleted before QUIT
    conn.quit()
    h.rt.call(h.server.when_idle)
    assert h.server.uidls() == ["a"]


# ---- TLS against the fake -------------------------------------------------------------------


def tls_options(ca: CA, directory: Path, names: tuple[str, ...]) -> Any:
    cert, key = ca.issue(directory, names)
    return ServerTLSContext(cert, key)


@pytest.fixture(scope="module")
def fake_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("fake-ca"))


def test_starttls_verifies_the_certificate_before_sending_credentials(
    fake_upstream, fake_ca, tmp_path
) -> None:
    context = tls_options(fake_ca, tmp_path / "good", ("localhost", "127.0.0.1"))
    h = fake_upstream(messages=sample(3), tls_context=context)
    result = h.fetch(tls="starttls", ca_file=str(fake_ca.cert_path))
    assert result.fetched == 3
    records = h.server.commands
    assert [c.verb for c in records[:2]] == ["CAPA", "STLS"]
    assert all(c.tls for c in records[2:])
    assert {c.verb for c in records if not c.tls} == {"CAPA", "STLS"}


def test_implicit_tls_by_host_name_verifies_and_fetches(fake_upstream, fake_ca, tmp_path) -> None:
    context = tls_options(fake_ca, tmp_path / "good", ("localhost", "127.0.0.1"))
    h = fake_upstream(messages=sample(3), tls_context=context, listen=False).listen(
        implicit_tls=True
    )
    result = h.fetch(tls="implicit", host="localhost", ca_file=str(fake_ca.cert_path))
    assert result.fetched == 3
    assert all(c.tls for c in h.server.commands)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_certificate_for_another_host_is_refused_before_login(
    fake_upstream, fake_ca, tmp_path, mode
) -> None:
    context = tls_options(fake_ca, tmp_path / "wrong", ("wrong.example",))
    h = fake_upstream(messages=sample(2), tls_context=context, listen=False)
    h.listen(implicit_tls=mode == "implicit")
    error = h.fetch_error(tls=mode, ca_file=str(fake_ca.cert_path))
    assert error.kind == "tls_verify"
    assert str(error).startswith("TLS certificate verification failed for 127.0.0.1:")
    assert not {"USER", "PASS", "APOP", "AUTH"} & set(h.verbs())
    assert h.inbox() == [] and h.ledger() == {}


def test_starttls_required_but_not_offered_refuses_to_log_in(fake_upstream) -> None:
    h = fake_upstream(messages=sample(1))
    error = h.fetch_error(tls="starttls")
    assert error.kind == "starttls_unavailable"
    assert h.verbs() == ["CAPA"]


# ---- the client protocol alone --------------------------------------------------------------


def test_inherited_login_is_disabled_so_apop_is_never_guessed() -> None:
    client = UpstreamClient(Clock(), "h", 1.0)
    with pytest.raises(NotImplementedError):
        client.login(b"u", b"p")


def greeted_client(clock: Clock, timeout: float = 5.0) -> tuple[UpstreamClient, Any]:
    client = UpstreamClient(clock, "pop.example.net", timeout)
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"+OK ready\r\n")
    return client, transport


def test_a_status_line_of_exactly_max_line_length_is_read() -> None:
    """Twisted's POP3 client drops lines over 16 KB; real servers send longer ones, so
    a line of MAX_LINE_LENGTH octets (split across reads) is an ordinary answer."""
    assert MAX_LINE_LENGTH > AdvancedPOP3Client.MAX_LENGTH
    client, transport = greeted_client(Clock())
    outcome: list[Any] = []
    client.noop().addBoth(outcome.append)
    line = b"+OK " + b"n" * (MAX_LINE_LENGTH - 4)
    client.dataReceived(line[: MAX_LINE_LENGTH // 2])
    client.dataReceived(line[MAX_LINE_LENGTH // 2 :] + b"\r\n")
    assert len(outcome) == 1 and outcome[0] == line[4:]
    assert not transport.disconnecting


@pytest.mark.parametrize("end", [b"\r\n", b""], ids=["whole", "unfinished"])
def test_a_status_line_one_octet_over_max_line_length_fails_and_drops_the_link(end) -> None:
    """One octet more fails the command with LineTooLong and drops the connection, as
    soon as the line is known to be too long (before its CRLF arrives)."""
    client, transport = greeted_client(Clock())
    outcome: list[Any] = []
    client.noop().addBoth(outcome.append)
    client.dataReceived(b"+OK " + b"n" * (MAX_LINE_LENGTH - 3) + end)
    assert len(outcome) == 1 and isinstance(outcome[0], Failure)
    assert outcome[0].check(LineTooLong)
    assert transport.disconnecting


def test_step_timeout_runs_on_the_injected_clock_and_fails_the_command() -> None:
    clock = Clock()
    client, transport = greeted_client(clock, timeout=5.0)
    d = client.noop()
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    assert transport.disconnecting  # StringTransport.abortConnection marks it
    client.connectionLost(Failure(ConnectionAborted()))
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(StepTimedOut)


def test_each_command_restarts_the_step_timer() -> None:
    clock = Clock()
    client, _ = greeted_client(clock, timeout=5.0)
    clock.advance(4.0)
    d = client.noop()
    clock.advance(4.0)
    assert not client._aborted
    client.dataReceived(b"+OK\r\n")
    assert d.called


def test_a_listing_longer_than_its_bound_is_a_protocol_error() -> None:
    client, transport = greeted_client(Clock())
    d = client.long_lines(b"UIDL", max_lines=2)
    client.dataReceived(b"+OK\r\n1 a\r\n2 b\r\n3 c\r\n4 d\r\n.\r\n")
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(UpstreamProtocolError)
    assert str(failures[0].value) == "pop.example.net sent more than 2 lines in a UIDL listing"
    assert client._aborted


def test_an_overlong_listing_line_is_kept_as_a_malformed_line() -> None:
    client, _ = greeted_client(Clock())
    d = client.long_lines(b"UIDL", max_line_length=10)
    client.dataReceived(b"+OK\r\n1 short\r\n2 " + b"x" * 50 + b"\r\n.\r\n")
    lines = []
    d.addCallback(lines.extend)
    assert lines == [b"1 short", b""]
