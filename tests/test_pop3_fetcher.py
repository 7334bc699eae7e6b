"""The POP3 fetcher (gateway.pop3.fetcher, .client) against FakePOP3Server over real loopback
sockets and a real SQLiteStore, and the poller's scheduling (gateway.pop3.poller) on a Clock.

The reactor runs in a background thread (gateway.testing.reactor_thread.ReactorThread); everything that
touches the reactor or the store goes through ``rt.call``.
"""

from __future__ import annotations

import poplib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.error import ConnectionAborted
from twisted.internet.error import TimeoutError as StepTimedOut
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.app.config import Upstream
from gateway.pop3 import fetcher as fetcher_module
from gateway.pop3 import spool as spool_module
from gateway.pop3.client import UpstreamClient
from gateway.pop3.errors import FetchError, UpstreamProtocolError
from gateway.pop3.fetcher import FetchResult, fetch_once
from gateway.pop3.framing import MAX_LINE_LENGTH
from gateway.pop3.poller import UpstreamPoller
from gateway.pop3.spool import MessageSink
from gateway.store.interfaces import LedgerEntry, MailboxNotFound
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.fakepop3 import FakePOP3Server, dot_stuff, normalize_message
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import CA, ServerTLSContext, make_ca

USER, PASSWORD = "carol@isp.example.net", "s3cret pass"
OWNER = "alice"


@pytest.fixture(scope="module")
def rt() -> ReactorThread:
    return ReactorThread.shared(global_reactor)


class Harness:
    """One FakePOP3Server on 127.0.0.1:0 and one SQLiteStore, driven from the test thread."""

    def __init__(
        self, rt: ReactorThread, directory: Path, *, store: Any = None, **server_kw: Any
    ) -> None:
        self.rt = rt
        self.server = FakePOP3Server(USER, PASSWORD, **server_kw)
        self.own_store = store is None
        self.store = store if store is not None else rt.call(SQLiteStore, directory / "store.db")
        self.port: Any = None

    def listen(self, *, implicit_tls: bool = False) -> Harness:
        self.port = self.rt.call(self.server.listen, global_reactor, implicit_tls=implicit_tls)
        return self

    def upstream(self, **overrides: Any) -> Upstream:
        settings: dict[str, Any] = dict(
            name="isp",
            owner=OWNER,
            host="127.0.0.1",
            port=self.port.getHost().port,
            tls="none",
            username=USER,
            password=PASSWORD,
            timeout=10.0,
        )
        settings.update(overrides)
        return Upstream(**settings)

    def fetch(self, progress: Any = None, **overrides: Any) -> FetchResult:
        try:
            return self.rt.call(
                fetch_once,
                self.upstream(**overrides),
                self.store,
                reactor=global_reactor,
                progress=progress,
            )
        finally:
            self.rt.call(self.server.when_idle)

    def fetch_error(self, **overrides: Any) -> FetchError:
        with pytest.raises(FetchError) as info:
            self.fetch(**overrides)
        return info.value

    def inbox(self) -> list[bytes]:
        def read() -> list[bytes]:
            try:
                box = self.store.get_mailbox(OWNER, "INBOX")
            except MailboxNotFound:
                return []
            return [
                self.store.message_bytes(box.id, r.uid) for r in self.store.message_rows(box.id)
            ]

        return self.rt.call(read)

    def ledger(self, name: str = "isp") -> dict[str, LedgerEntry]:
        return {e.uidl: e for e in self.rt.call(self.store.ledger_entries, name)}

    def verbs(self, session: int | None = None) -> list[str]:
        return [c.verb for c in self.server.commands if session is None or c.session == session]

    def close(self) -> None:
        if self.port is not None:
            self.rt.call(self.port.stopListening)
        if self.own_store:
            self.rt.call(self.store.close)


@pytest.fixture
def make(rt: ReactorThread, tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def factory(*, listen: bool = True, **server_kw: Any) -> Harness:
        directory = tmp_path / f"h{len(made)}"
        directory.mkdir()
        harness = Harness(rt, directory, **server_kw)
        made.append(harness)
        return harness.listen() if listen else harness

    yield factory
    for harness in made:
        harness.close()


def sample(count: int, seed: int = 1) -> list[bytes]:
    return samplemail.generate(count, seed)


# ---- basic fetching -----------------------------------------------------------------------


def test_fetches_every_message_byte_identical_in_server_order(make) -> None:
    messages = sample(20)
    h = make(messages=messages)
    result = h.fetch()
    assert result.fetched == 20 and result.listed == 20 and result.errors == 0
    assert result.bytes == sum(len(m) for m in messages)
    assert result.complete_listing
    assert h.inbox() == [normalize_message(m) for m in messages]
    ledger = h.ledger()
    assert set(ledger) == set(h.server.uidls())
    assert all(e.state == "delivered" for e in ledger.values())
    assert len(h.server.messages) == 20  # keep_on_server defaults to true


def test_second_pass_fetches_nothing_new(make) -> None:
    h = make(messages=sample(5))
    h.fetch()
    again = h.fetch()
    assert again.fetched == 0 and again.listed == 5
    assert len(h.inbox()) == 5
    assert "RETR" not in h.verbs(session=2)


def test_only_newly_arrived_messages_are_fetched(make) -> None:
    h = make(messages=sample(4))
    h.fetch()
    extra = sample(3, seed=99)
    for raw in extra:
        h.server.add_message(raw)
    result = h.fetch()
    assert result.fetched == 3
    retrieved = [c.args for c in h.server.commands if c.session == 2 and c.verb == "RETR"]
    assert retrieved == [("5",), ("6",), ("7",)]
    assert h.inbox()[4:] == [normalize_message(m) for m in extra]


def test_auto_login_uses_user_pass_even_when_the_greeting_offers_apop(make) -> None:
    h = make(messages=sample(1), sasl=())
    h.server.faults.apop_challenge = True
    assert h.fetch().fetched == 1
    assert "APOP" not in h.verbs()
    assert h.verbs()[:3] == ["CAPA", "USER", "PASS"]


def test_auto_login_prefers_sasl_plain_when_capa_offers_it(make) -> None:
    h = make(messages=sample(1))
    h.server.faults.apop_challenge = True
    assert h.fetch(auth="auto").fetched == 1
    assert h.verbs()[:2] == ["CAPA", "AUTH"]
    assert not {"USER", "PASS", "APOP"} & set(h.verbs())


def test_user_mode_never_asks_capa_and_sends_user_pass(make) -> None:
    h = make(messages=sample(1))
    assert h.fetch(auth="user").fetched == 1
    assert h.verbs()[:2] == ["USER", "PASS"]


def test_plain_mode_is_refused_before_any_credential_when_not_offered(make) -> None:
    h = make(messages=sample(1), sasl=())
    error = h.fetch_error(auth="plain")
    assert error.kind == "auth" and "SASL PLAIN" in str(error)
    assert h.verbs() == ["CAPA", "QUIT"] or h.verbs() == ["CAPA"]


def test_starttls_with_auto_reads_capa_again_over_tls_before_auth(make, fake_ca, tmp_path) -> None:
    context = tls_options(fake_ca, tmp_path / "good", ("localhost", "127.0.0.1"))
    h = make(messages=sample(2), tls_context=context)
    assert h.fetch(tls="starttls", ca_file=str(fake_ca.cert_path)).fetched == 2
    records = h.server.commands
    assert [(c.verb, c.tls) for c in records[:4]] == [
        ("CAPA", False),
        ("STLS", False),
        ("CAPA", True),
        ("AUTH", True),
    ]


def test_apop_is_used_only_when_configured(make) -> None:
    h = make(messages=sample(1))
    h.server.faults.apop_challenge = True
    assert h.fetch(auth="apop").fetched == 1
    assert "APOP" in h.verbs() and "PASS" not in h.verbs()


def test_auth_plain_when_configured(make) -> None:
    h = make(messages=sample(1))
    assert h.fetch(auth="plain").fetched == 1
    assert h.verbs()[:2] == ["CAPA", "AUTH"]
    auth = next(c for c in h.server.commands if c.verb == "AUTH")
    assert auth.args == ("***",)  # the fake redacts; the credentials went as one SASL token


def test_wrong_password_fails_as_auth_error_and_fetches_nothing(make) -> None:
    h = make(messages=sample(2))
    error = h.fetch_error(password="wrong")
    assert error.kind == "auth"
    assert "refused the login" in str(error)
    assert "wrong" not in str(error)
    assert h.inbox() == []


def test_server_without_uidl_is_fetched_once_by_header_fingerprint(make) -> None:
    messages = sample(6, seed=11)
    h = make(messages=messages)
    h.server.faults.no_uidl = True
    first = h.fetch()
    assert first.fetched == 6 and first.complete_listing
    assert h.inbox() == [normalize_message(m) for m in messages]
    assert all(u.startswith("popgate-h-") for u in h.ledger())
    h.server.add_message(sample(1, seed=12)[0])
    second = h.fetch()
    assert second.fetched == 1 and len(h.inbox()) == 7
    assert "RETR" in h.verbs(session=2) and h.verbs(session=2).count("RETR") == 1


def test_server_without_uidl_keep_on_server_false_deletes_what_it_stored(make) -> None:
    h = make(messages=sample(4, seed=13))
    h.server.faults.no_uidl = True
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 4 and result.deleted == 4
    assert h.server.messages == [] and len(h.inbox()) == 4


def test_server_with_neither_uidl_nor_top_is_a_clear_error(make) -> None:
    h = make(messages=sample(2))
    h.server.faults.no_uidl = True
    h.server.faults.no_top = True
    error = h.fetch_error()
    assert error.kind == "uidl_unsupported"
    assert "UIDL" in str(error) and "TOP" in str(error)
    assert h.inbox() == []


def test_log_events_name_the_upstream_and_counts_and_never_the_password(make) -> None:
    h = make(messages=sample(2))
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


def test_keep_on_server_false_deletes_only_after_the_delivery_committed(make) -> None:
    messages = sample(6)
    h = make(messages=messages)
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


def test_too_large_message_is_skipped_recorded_and_never_deleted(make) -> None:
    small, big = b"Subject: small\r\n\r\nhi\r\n", b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
    h = make(messages=[("small", small), ("big", big)])
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


def test_size_limit_is_enforced_while_streaming_when_list_understates(make) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100
    h = make(messages=[("ok", b"Subject: ok\r\n\r\nfine\r\n"), ("big", big)])
    h.server.faults.understate_list_sizes = True
    result = h.fetch(max_message_size=2000)
    assert result.fetched == 1 and result.skipped == 1
    assert h.ledger()["big"].state == "skipped"
    assert len(h.inbox()) == 1


def test_failed_quit_leaves_messages_on_the_server_and_the_next_pass_deletes_them(make) -> None:
    h = make(messages=sample(3))
    h.server.faults.err_on_quit = True
    first = h.fetch(keep_on_server=False)
    assert first.fetched == 3 and first.deleted == 0 and first.errors == 1
    assert len(h.server.messages) == 3
    h.server.faults.err_on_quit = False
    second = h.fetch(keep_on_server=False)
    assert second.fetched == 0 and second.deleted == 3
    assert h.server.messages == [] and len(h.inbox()) == 3


def test_dele_refused_leaves_that_message_and_deletes_the_rest(make) -> None:
    h = make(messages=[("a", b"A\r\n"), ("b", b"B\r\n"), ("c", b"C\r\n")])
    h.server.faults.err_on_dele = {"b"}
    result = h.fetch(keep_on_server=False)
    assert result.deleted == 2 and result.errors == 1
    assert h.server.uidls() == ["b"]


def test_messages_gone_from_the_server_are_forgotten_by_the_ledger(make) -> None:
    h = make(messages=[("a", b"A\r\n"), ("b", b"B\r\n"), ("c", b"C\r\n")])
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


def test_messages_are_committed_in_batches_of_bounded_size(make, monkeypatch) -> None:
    monkeypatch.setattr(fetcher_module, "BATCH_MAX_MESSAGES", 20)
    monkeypatch.setattr(fetcher_module, "BATCH_MAX_SECONDS", 3600.0)
    messages = sample(45, seed=21)
    h = make(messages=messages)
    counting = CountingStore(h.store)
    result = h.rt.call(fetch_once, h.upstream(), counting, reactor=global_reactor)
    h.rt.call(h.server.when_idle)
    assert counting.batches == [20, 20, 5]
    assert result.fetched == 45
    assert h.inbox() == [normalize_message(m) for m in messages]


def test_a_batch_with_a_message_over_the_store_limit_is_retried_one_by_one(
    make, rt, tmp_path
) -> None:
    small_store = rt.call(SQLiteStore, tmp_path / "small.db", max_message_size=2000)
    try:
        big = b"Subject: big\r\n\r\n" + b"b" * 3000 + b"\r\n"
        h = make(messages=[("a", b"A\r\n"), ("big", big), ("c", b"C\r\n")], store=small_store)
        result = h.fetch()
        assert result.fetched == 2 and result.skipped == 1
        assert h.inbox() == [b"A\r\n", b"C\r\n"]
        assert h.ledger()["big"].state == "skipped"
    finally:
        rt.call(small_store.close)


def test_delete_after_deletes_only_messages_fetched_long_enough_ago(make, rt, tmp_path) -> None:
    import time as _time

    offset = {"days": 0.0}
    store = rt.call(
        SQLiteStore, tmp_path / "aged.db", clock=lambda: _time.time() - offset["days"] * 86400
    )
    try:
        h = make(messages=[("old1", b"1\r\n"), ("old2", b"2\r\n")], store=store)
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


def test_delete_when_over_removes_oldest_fetched_until_the_mailbox_is_small_enough(make) -> None:
    bodies = [(f"m{i}", b"x" * 98 + b"\r\n") for i in range(5)]  # 100 octets each
    h = make(messages=bodies)
    result = h.fetch(delete_when_over=300)
    assert result.fetched == 5 and result.deleted == 2
    assert h.server.uidls() == ["m2", "m3", "m4"]
    assert len(h.inbox()) == 5
    again = h.fetch(delete_when_over=300)
    assert again.deleted == 0


def test_deleted_in_imap_keep_is_the_default_and_delete_removes_expunged_mail(make) -> None:
    h = make(messages=[("a", b"A\r\n"), ("b", b"B\r\n"), ("c", b"C\r\n")])
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
    make, rt
) -> None:
    shared = normalize_message(sample(1, seed=31)[0])
    first = make(messages=[("one-a", shared), ("one-b", b"only in one\r\n")])
    second = make(messages=[("two-a", shared)], store=first.store)
    assert first.fetch().fetched == 2
    result = second.fetch(name="other")
    assert result.fetched == 0 and result.deduplicated == 1
    assert first.inbox() == [shared, b"only in one\r\n"]
    assert set(first.ledger("other")) == {"two-a"}
    third = make(messages=[("three-a", shared)], store=first.store)
    assert third.fetch(name="third", dedup=False).fetched == 1
    assert first.inbox().count(shared) == 2


def test_progress_reports_every_message_and_logs_every_n(make, monkeypatch) -> None:
    monkeypatch.setattr(fetcher_module, "PROGRESS_LOG_EVERY", 4)
    h = make(messages=sample(9, seed=41))
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


def test_connection_drop_mid_retr_keeps_earlier_messages_and_refetches_without_duplicates(
    make,
) -> None:
    messages = sample(8)
    h = make(messages=messages)
    victim = h.server.uidls()[4]
    h.server.faults.drop_mid_retr = {victim}
    error = h.fetch_error(keep_on_server=False)
    assert error.kind == "connection_lost"
    assert error.result.fetched == 4
    assert h.inbox() == [normalize_message(m) for m in messages[:4]]
    assert victim not in h.ledger()
    assert len(h.server.messages) == 8  # no QUIT: no deletion took effect
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 4 and result.deleted == 8
    assert h.inbox() == [normalize_message(m) for m in messages]
    assert h.server.messages == []


def test_err_on_retr_skips_the_message_for_this_pass_only(make) -> None:
    messages = sample(4)
    h = make(messages=messages)
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


def test_stalled_server_times_out_with_a_clear_error_and_the_next_pass_recovers(make) -> None:
    messages = sample(2)
    h = make(messages=messages)
    h.server.faults.stall_on = {"RETR"}
    error = h.fetch_error(timeout=0.5)
    assert error.kind == "timeout"
    assert h.inbox() == []
    h.server.faults.stall_on = set()
    assert h.fetch(keep_on_server=False).fetched == 2
    assert h.inbox() == [normalize_message(m) for m in messages] and h.server.messages == []


def test_err_on_dele_then_recovery_deletes_it_later_and_stores_it_once(make) -> None:
    h = make(messages=[("a", b"A\r\n"), ("b", b"B\r\n")])
    h.server.faults.err_on_dele = {"a"}
    assert h.fetch(keep_on_server=False).deleted == 1
    h.server.faults.err_on_dele = set()
    again = h.fetch(keep_on_server=False)
    assert again.fetched == 0 and again.deleted == 1
    assert h.inbox() == [b"A\r\n", b"B\r\n"] and h.server.messages == []


def test_garbage_in_listings_still_fetches_but_neither_deletes_nor_forgets(make) -> None:
    h = make(messages=[("a", b"A\r\n"), ("b", b"B\r\n")])
    h.fetch()
    h.server.add_message(b"C\r\n", uidl="c")
    h.server.remove_message("a")
    h.server.faults.garbage_in_listings = True
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 1 and not result.complete_listing
    assert result.deleted == 0 and result.forgotten == 0
    assert set(h.ledger()) == {"a", "b", "c"}
    assert h.server.uidls() == ["b", "c"]


def test_a_stray_line_instead_of_a_status_stops_the_session_before_the_password(make) -> None:
    h = make(messages=sample(1))
    h.server.faults.garbage_after_greeting = True
    error = h.fetch_error()
    assert error.kind == "protocol"
    assert "+OK or -ERR" in str(error)
    assert "PASS" not in h.verbs()
    assert h.inbox() == []


def test_duplicate_uidls_fetch_the_first_and_delete_neither(make) -> None:
    h = make(
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


def test_reordered_listing_pairs_each_number_with_its_own_uidl(make) -> None:
    messages = sample(10, seed=5)
    h = make(messages=messages)
    h.server.faults.reverse_listings = True
    result = h.fetch(keep_on_server=False)
    assert result.fetched == 10 and result.complete_listing and result.deleted == 10
    assert h.inbox() == [normalize_message(m) for m in messages]
    assert h.server.messages == []
    expected_sizes = {f"fake-{n:08d}": len(normalize_message(m)) for n, m in enumerate(messages, 1)}
    assert {u: e.size for u, e in h.ledger().items()} == expected_sizes


# ---- message bytes --------------------------------------------------------------------------


def test_a_100_kb_line_arrives_intact(make) -> None:
    raw = b"Subject: long\r\n\r\n" + b"z" * 100_000 + b"\r\nend\r\n"
    h = make(messages=[raw])
    assert h.fetch().fetched == 1
    assert h.inbox() == [raw]


def test_eight_bit_bytes_and_dot_stuffing_survive_exactly(make) -> None:
    raw = (
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=latin-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + bytes(range(0x80, 0x100))
        + b"\r\n.\r\n..\r\n.leading dot\r\nbare\rcr and tab\t\r\n\r\n\r\nlast\r\n"
    )
    h = make(messages=[raw])
    assert b"\r\n..\r\n...\r\n..leading dot\r\n" in dot_stuff(raw)
    assert h.fetch().fetched == 1
    assert h.inbox() == [raw]


def test_a_line_over_the_client_limit_is_recorded_and_the_rest_still_arrives(make) -> None:
    long_raw = b"Subject: huge line\r\n\r\n" + b"q" * (MAX_LINE_LENGTH + 10) + b"\r\n"
    h = make(messages=[("before", b"B\r\n"), ("long", long_raw), ("after", b"A\r\n")])
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


def test_fake_server_speaks_rfc1939_to_poplib(make) -> None:
    raw = b"Subject: t\r\n\r\n.dot\r\nline2\r\nline3\r\n"
    h = make(messages=[("a", raw), ("b", b"B\r\n")])
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
    make, fake_ca, tmp_path
) -> None:
    context = tls_options(fake_ca, tmp_path / "good", ("localhost", "127.0.0.1"))
    h = make(messages=sample(3), tls_context=context)
    result = h.fetch(tls="starttls", ca_file=str(fake_ca.cert_path))
    assert result.fetched == 3
    records = h.server.commands
    assert [c.verb for c in records[:2]] == ["CAPA", "STLS"]
    assert all(c.tls for c in records[2:])
    assert {c.verb for c in records if not c.tls} == {"CAPA", "STLS"}


def test_implicit_tls_by_host_name_verifies_and_fetches(make, fake_ca, tmp_path) -> None:
    context = tls_options(fake_ca, tmp_path / "good", ("localhost", "127.0.0.1"))
    h = make(messages=sample(3), tls_context=context, listen=False).listen(implicit_tls=True)
    result = h.fetch(tls="implicit", host="localhost", ca_file=str(fake_ca.cert_path))
    assert result.fetched == 3
    assert all(c.tls for c in h.server.commands)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_certificate_for_another_host_is_refused_before_login(
    make, fake_ca, tmp_path, mode
) -> None:
    context = tls_options(fake_ca, tmp_path / "wrong", ("wrong.example",))
    h = make(messages=sample(2), tls_context=context, listen=False)
    h.listen(implicit_tls=mode == "implicit")
    error = h.fetch_error(tls=mode, ca_file=str(fake_ca.cert_path))
    assert error.kind == "tls_verify"
    assert str(error).startswith("TLS certificate verification failed for 127.0.0.1:")
    assert not {"USER", "PASS", "APOP", "AUTH"} & set(h.verbs())
    assert h.inbox() == [] and h.ledger() == {}


def test_starttls_required_but_not_offered_refuses_to_log_in(make) -> None:
    h = make(messages=sample(1))
    error = h.fetch_error(tls="starttls")
    assert error.kind == "starttls_unavailable"
    assert h.verbs() == ["CAPA"]


# ---- the client protocol alone --------------------------------------------------------------


def test_inherited_login_is_disabled_so_apop_is_never_guessed() -> None:
    client = UpstreamClient(Clock(), "h", 1.0)
    with pytest.raises(NotImplementedError):
        client.login(b"u", b"p")


def test_client_line_limit_is_far_above_twisteds_default() -> None:
    assert UpstreamClient.MAX_LENGTH == MAX_LINE_LENGTH >= 1024 * 1024


def greeted_client(clock: Clock, timeout: float = 5.0) -> tuple[UpstreamClient, Any]:
    client = UpstreamClient(clock, "pop.example.net", timeout)
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"+OK ready\r\n")
    return client, transport


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
    assert client._aborted


def test_an_overlong_listing_line_is_kept_as_a_malformed_line() -> None:
    client, _ = greeted_client(Clock())
    d = client.long_lines(b"UIDL", max_line_length=10)
    client.dataReceived(b"+OK\r\n1 short\r\n2 " + b"x" * 50 + b"\r\n.\r\n")
    lines = []
    d.addCallback(lines.extend)
    assert lines == [b"1 short", b""]


# ---- the poller, on a Clock -----------------------------------------------------------------


class ScriptedFetch:
    """A fetch function whose passes the test finishes by hand."""

    def __init__(self) -> None:
        self.calls: list[defer.Deferred[FetchResult]] = []
        self.reporters: list[Any] = []

    def __call__(self, upstream, store, *, reactor, progress=None) -> defer.Deferred[FetchResult]:
        d: defer.Deferred[FetchResult] = defer.Deferred()
        self.calls.append(d)
        self.reporters.append(progress)
        return d

    def progress(self, info: dict[str, Any]) -> None:
        """Report progress from the latest pass, as fetch_once would."""
        self.reporters[-1](info)

    def succeed(self, fetched: int = 0, size: int = 0) -> None:
        self.calls[-1].callback(FetchResult("isp", fetched=fetched, bytes=size))

    def fail(self, fetched: int = 0) -> None:
        error = FetchError("boom")
        error.result = FetchResult("isp", fetched=fetched)
        self.calls[-1].errback(error)


def poller(clock: Clock, fetch: ScriptedFetch, **kw: Any) -> UpstreamPoller:
    upstream = Upstream(
        name="isp",
        owner=OWNER,
        host="127.0.0.1",
        port=110,
        tls="none",
        username="u",
        password="p",
        poll_interval=300.0,
    )
    kw.setdefault("jitter", 0.0)
    p = UpstreamPoller(upstream, None, reactor=clock, fetch=fetch, **kw)
    p.startService()
    return p


def test_poller_fetches_shortly_after_start_then_every_poll_interval() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=1.0)
    clock.advance(0.9)
    assert fetch.calls == []
    clock.advance(0.1)
    assert len(fetch.calls) == 1
    fetch.succeed(fetched=2, size=100)
    assert p.health.next_poll_at == clock.seconds() + 300.0
    clock.advance(299.9)
    assert len(fetch.calls) == 1
    clock.advance(0.1)
    assert len(fetch.calls) == 2
    assert p.health.fetched_total == 2 and p.health.bytes_total == 100
    assert p.health.last_success == 1.0


def test_poll_delays_are_jittered_within_bounds() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, jitter=0.1, rng=random.Random(3), first_delay=0)
    delays = []
    for _ in range(30):
        clock.advance(p.health.next_poll_at - clock.seconds())
        fetch.succeed()
        delays.append(p.health.next_poll_at - clock.seconds())
    assert all(270.0 <= d <= 330.0 for d in delays)
    assert len(set(delays)) > 1


def test_failures_back_off_exponentially_up_to_the_cap_and_success_resets() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, backoff_base=10.0, backoff_cap=50.0)
    clock.advance(0)
    waits = []
    for _ in range(5):
        fetch.fail()
        waits.append(p.health.next_poll_at - clock.seconds())
        clock.advance(waits[-1])
    assert waits == [10.0, 20.0, 40.0, 50.0, 50.0]
    assert p.health.consecutive_failures == 5
    assert p.health.last_error == "boom" and p.health.last_error_kind == "error"
    fetch.succeed()
    assert p.health.consecutive_failures == 0
    assert p.health.next_poll_at - clock.seconds() == 300.0


def test_failed_pass_still_counts_what_it_delivered() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0)
    clock.advance(0)
    fetch.fail(fetched=3)
    assert p.health.fetched_total == 3


def test_trigger_runs_a_pass_now_when_idle_and_spacing_allows() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=1.0, min_spacing=5.0)
    clock.advance(1.0)
    fetch.succeed()
    clock.advance(10.0)
    p.trigger()
    clock.advance(0)
    assert len(fetch.calls) == 2


def test_trigger_respects_the_minimum_spacing_between_passes() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, min_spacing=5.0)
    clock.advance(0)
    fetch.succeed()
    clock.advance(1.0)
    p.trigger()
    p.trigger()
    clock.advance(3.9)
    assert len(fetch.calls) == 1
    clock.advance(0.1)
    assert len(fetch.calls) == 2


def test_triggers_during_a_pass_schedule_exactly_one_more_after_it() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, min_spacing=5.0)
    clock.advance(0)
    p.trigger()
    p.trigger()
    p.trigger()
    clock.advance(10.0)
    assert len(fetch.calls) == 1  # never two in flight
    fetch.succeed()
    clock.advance(0)
    assert len(fetch.calls) == 2
    fetch.succeed()
    clock.advance(299.0)
    assert len(fetch.calls) == 2


def test_stop_cancels_timers_and_waits_for_the_pass_in_flight() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, stop_grace=10.0)
    clock.advance(0)
    stopped = p.stopService()
    assert stopped is not None and not stopped.called
    fetch.succeed()
    assert stopped.called
    clock.advance(10_000)
    assert len(fetch.calls) == 1
    assert clock.getDelayedCalls() == []
    p.trigger()
    clock.advance(10)
    assert len(fetch.calls) == 1


def test_stop_cancels_a_pass_that_outlives_the_grace_period() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, stop_grace=10.0)
    clock.advance(0)
    stopped = p.stopService()
    clock.advance(10.0)
    assert stopped.called
    assert fetch.calls[0].called  # cancelled
    assert p.health.consecutive_failures == 0


def test_poller_drives_real_fetches_into_the_store(make, rt) -> None:
    h = make(messages=sample(3))
    up = h.upstream(poll_interval=300.0)

    def start() -> UpstreamPoller:
        p = UpstreamPoller(up, h.store, reactor=global_reactor, first_delay=0)
        p.startService()
        return p

    p = rt.call(start)
    done = rt.call(lambda: _wait_for(lambda: p.health.passes >= 1))
    assert done
    assert p.health.fetched_total == 3 and p.health.last_error is None
    rt.call(p.stopService)
    rt.call(h.server.when_idle)
    assert len(h.inbox()) == 3


def test_stopping_the_poller_abandons_a_stalled_pass_without_deleting_anything(make, rt) -> None:
    h = make(messages=sample(3))
    h.server.faults.stall_on = {"RETR"}
    up = h.upstream(keep_on_server=False, timeout=60.0)

    def start() -> UpstreamPoller:
        p = UpstreamPoller(up, h.store, reactor=global_reactor, first_delay=0, stop_grace=0.2)
        p.startService()
        return p

    p = rt.call(start)
    assert rt.call(lambda: _wait_for(lambda: "RETR" in h.verbs()))
    assert p.health.in_flight
    rt.call(p.stopService)
    rt.call(h.server.when_idle)
    assert not p.health.in_flight
    assert p.health.consecutive_failures == 0 and p.health.last_error is None
    assert len(h.server.messages) == 3 and "QUIT" not in h.verbs()
    assert h.inbox() == []


def _wait_for(predicate, interval: float = 0.01, attempts: int = 2000) -> defer.Deferred[bool]:
    from twisted.internet.task import deferLater

    async def loop() -> bool:
        for _ in range(attempts):
            if predicate():
                return True
            await deferLater(global_reactor, interval, lambda: None)
        return False

    return defer.Deferred.fromCoroutine(loop())


# ---- fetch_now (popgate fetch) and health ---------------------------------------------------


def test_fetch_now_starts_a_pass_at_once_ignoring_spacing_and_returns_its_result() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, min_spacing=60.0)
    clock.advance(0)
    fetch.succeed()
    clock.advance(1.0)
    results: list[FetchResult] = []
    p.fetch_now().addCallback(results.append)
    assert len(fetch.calls) == 2  # no waiting for the 60 s spacing: an operator asked
    fetch.succeed(fetched=4)
    assert [r.fetched for r in results] == [4]


def test_fetch_now_during_a_pass_waits_for_the_next_one_and_hears_its_progress() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0)
    clock.advance(0)
    progress: list[dict[str, Any]] = []
    results: list[FetchResult] = []
    p.fetch_now(progress=progress.append).addCallback(results.append)
    fetch.progress({"upstream": "isp", "received": 1, "backlog": 5})  # the old pass
    fetch.succeed(fetched=1)
    assert results == [] and progress == []
    clock.advance(0)
    assert len(fetch.calls) == 2
    fetch.progress({"upstream": "isp", "received": 2, "backlog": 3})
    assert progress == [{"upstream": "isp", "received": 2, "backlog": 3}]
    assert p.health.backlog == 3 and p.health_dict()["progress"]["received"] == 2
    fetch.succeed(fetched=7)
    assert [r.fetched for r in results] == [7]


def test_fetch_now_failure_reaches_the_caller() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=100)
    failures: list[Any] = []
    p.fetch_now().addErrback(failures.append)
    fetch.fail(fetched=2)
    assert failures and failures[0].check(FetchError)
    assert failures[0].value.result.fetched == 2


def test_waiters_are_cancelled_when_the_poller_stops() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, stop_grace=1.0)
    clock.advance(0)
    failures: list[Any] = []
    p.fetch_now().addErrback(failures.append)
    p.stopService()
    assert failures and failures[0].check(defer.CancelledError)
    clock.advance(1.0)


def test_health_dict_reports_state_counts_errors_and_skipped_messages(make, rt) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
    h = make(messages=[("a", b"A\r\n"), ("big", big)])
    up = h.upstream(max_message_size=1000)
    p = UpstreamPoller(up, h.store, reactor=global_reactor, first_delay=3600)
    rt.call(p.startService)
    try:
        assert rt.call(p.health_dict)["state"] == "waiting"
        result = rt.call(p.fetch_now)
        assert result.fetched == 1 and result.skipped == 1
        health = rt.call(p.health_dict)
        assert health["state"] == "ok" and health["consecutive_failures"] == 0
        assert health["messages_fetched"] == 1 and health["bytes_fetched"] == 3
        assert health["backlog"] == 0 and health["last_result"]["skipped"] == 1
        assert health["skipped_count"] == 1
        assert health["skipped"][0]["uidl"] == "big"
        assert "too large" in health["skipped"][0]["reason"]
        h.server.faults.no_uidl = h.server.faults.no_top = True
        with pytest.raises(FetchError):
            rt.call(p.fetch_now)
        health = rt.call(p.health_dict)
        assert health["state"] == "failing" and health["consecutive_failures"] == 1
        assert health["last_error_kind"] == "uidl_unsupported"
        assert health["last_success"] is not None and health["last_error_at"] is not None
        import json

        json.dumps(health)  # JSON-ready for the control socket
    finally:
        rt.call(p.stopService)
        rt.call(h.server.when_idle)
