"""Sieve at ingest (gateway/access/filtering.py): the owner's active script routes each
fetched message, committed with the ledger row; runtime errors keep the message; the
envelope of POP3 mail; refiling on request (gateway/access/refile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.access.filtering import (
    ScriptCache,
    SieveDelivery,
    check_script,
    envelope_for,
    upstream_address,
)
from gateway.access.quota import DeliveryQuotaGuard, Quotas
from gateway.access.refile import NoActiveScript, describe, refile
from gateway.sieve import Envelope, SieveSyntaxError, compile_script, run
from gateway.store.interfaces import INBOX, Delivery, OverQuota
from gateway.store.sqlite import SQLiteStore

NOW = 1_700_000_000.0

SCRIPT = """require ["fileinto", "imap4flags", "mailbox", "copy", "envelope"];
if header :contains "subject" "invoice" { fileinto :create "Bills"; stop; }
if address :domain "from" "work.example" {
  fileinto :create :flags "\\\\Flagged" "Work";
  stop;
}
if header :is "subject" "spam" { discard; stop; }
if header :is "subject" "copy" { fileinto :copy :create "Archive/2024"; }
if envelope :is "to" "me@isp.example" { addflag "$ToMe"; }
"""


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "store.db", clock=clock)
    s.ensure_user("alice")
    yield s
    s.close()


def filtering(store: SQLiteStore, clock: Clock, **kw) -> SieveDelivery:
    return SieveDelivery(
        store, store, store, addresses={"isp": "me@isp.example"}, clock=clock, **kw
    )


def mail(n: int, subject: str, sender: str = "a@b.example", extra: str = "") -> Delivery:
    raw = (
        f"Return-Path: <bounce@b.example>\r\nFrom: {sender}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{n}@b.example>\r\n{extra}\r\nbody {n}\r\n"
    ).encode()
    return Delivery(upstream="isp", uidl=f"u{n}", raw=raw)


def box(store: SQLiteStore, name: str, owner: str = "alice") -> list[tuple[str, frozenset[str]]]:
    mailbox = store.get_mailbox(owner, name)
    out = []
    for row in store.message_rows(mailbox.id):
        raw = store.message_bytes(mailbox.id, row.uid)
        subject = raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        out.append((subject, row.flags - {"\\Recent"}))
    return out


def activate(store: SQLiteStore, owner: str = "alice", text: str = SCRIPT) -> None:
    check_script(text)
    store.put_script(owner, "main", text)
    store.set_active(owner, "main")


def test_without_an_active_script_delivery_is_unchanged(store, clock) -> None:
    uids = filtering(store, clock).deliver_many("alice", INBOX, [mail(1, "invoice")])
    assert uids == [1]
    assert box(store, INBOX) == [("invoice", frozenset())]


def test_the_script_files_flags_creates_discards_and_keeps(store, clock) -> None:
    activate(store)
    uids = filtering(store, clock).deliver_many(
        "alice",
        INBOX,
        [
            mail(1, "invoice"),
            mail(2, "hello", sender="boss@work.example"),
            mail(3, "spam"),
            mail(4, "copy"),
            mail(5, "plain"),
        ],
    )
    assert uids == [1, 1, None, 1, 2]
    assert box(store, "Bills") == [("invoice", frozenset())]
    assert box(store, "Work") == [("hello", frozenset({"\\Flagged"}))]
    assert box(store, "Archive/2024") == [("copy", frozenset())]
    assert box(store, INBOX) == [("copy", frozenset({"$ToMe"})), ("plain", frozenset({"$ToMe"}))]
    entries = {e.uidl: e for e in store.ledger_entries("isp")}
    assert set(entries) == {"u1", "u2", "u3", "u4", "u5"}
    assert entries["u3"].stored is False  # discarded: a ledger row, no message


def test_implicit_keep_goes_to_the_upstreams_folder(store, clock) -> None:
    activate(store)
    filtering(store, clock).deliver_many("alice", "Pop/isp", [mail(1, "plain"), mail(2, "invoice")])
    assert box(store, "Pop/isp") == [("plain", frozenset({"$ToMe"}))]
    assert box(store, "Bills") == [("invoice", frozenset())]


def test_a_runtime_error_keeps_the_message_and_logs_without_the_body(store, clock) -> None:
    """fileinto a missing mailbox without :create is a runtime error (RFC 5228 §2.10.6)."""
    activate(store, text='require "fileinto";\nfileinto "Nowhere";\n')
    with capture_logs() as logs:
        uids = filtering(store, clock).deliver_many("alice", INBOX, [mail(1, "secret words")])
    assert uids == [1]
    assert box(store, INBOX) == [("secret words", frozenset())]
    (event,) = [e for e in logs if e["event"] == "sieve.runtime_error"]
    assert event["owner"] == "alice" and event["uidl"] == "u1" and event["script"] == "main"
    assert "secret" not in repr(event) and "body 1" not in repr(event)


def test_a_stored_script_that_no_longer_compiles_keeps_everything(store, clock) -> None:
    store.put_script("alice", "old", "frobnicate;")  # stored without the checker
    store.set_active("alice", "old")
    with capture_logs() as logs:
        uids = filtering(store, clock).deliver_many("alice", INBOX, [mail(1, "a"), mail(2, "b")])
    assert uids == [1, 2]
    assert len([e for e in logs if e["event"] == "sieve.runtime_error"]) == 2


def test_duplicates_are_tracked_across_and_within_batches(store, clock) -> None:
    """RFC 7352: the second copy of a Message-ID is discarded, also inside one batch."""
    activate(store, text='require "duplicate";\nif duplicate { discard; }\n')
    sieve = filtering(store, clock)
    first = mail(1, "one")
    again = Delivery("isp", "u1b", first.raw)
    third = Delivery("isp", "u1c", first.raw)
    assert sieve.deliver_many("alice", INBOX, [first, again]) == [1, None]
    assert sieve.deliver_many("alice", INBOX, [third]) == [None]
    assert box(store, INBOX) == [("one", frozenset())]
    assert store.known_uidls("isp") == {"u1", "u1b", "u1c"}
    clock.now += 8 * 24 * 3600  # past the default period
    assert sieve.deliver_many("alice", INBOX, [Delivery("isp", "u1d", first.raw)]) == [2]


def test_mailboxexists_sees_a_folder_created_earlier_in_the_batch(store, clock) -> None:
    activate(
        store,
        text='require ["fileinto", "mailbox"];\n'
        'if mailboxexists "New" { fileinto "New"; } else { fileinto :create "New"; }\n',
    )
    assert filtering(store, clock).deliver_many("alice", INBOX, [mail(1, "a"), mail(2, "b")]) == [
        1,
        2,
    ]
    assert [s for s, _f in box(store, "New")] == ["a", "b"]


def test_a_households_upstream_runs_the_households_script(store, clock) -> None:
    store.ensure_user("shared:family")
    activate(
        store,
        owner="shared:family",
        text='require ["fileinto", "mailbox"];\nfileinto :create "Bills";',
    )
    activate(store, owner="alice", text="discard;")
    filtering(store, clock).deliver_many("shared:family", INBOX, [mail(1, "gas")])
    assert box(store, "Bills", owner="shared:family") == [("gas", frozenset())]


def test_repeated_uidls_in_one_batch_run_once(store, clock) -> None:
    activate(store)
    uids = filtering(store, clock).deliver_many("alice", INBOX, [mail(1, "a"), mail(1, "a")])
    assert uids == [1, None]


def test_quota_counts_each_mailbox_a_message_is_filed_into(store, clock) -> None:
    activate(store, text='require ["fileinto", "copy", "mailbox"];\nfileinto :copy :create "A";\n')
    one = mail(1, "x")
    guard = DeliveryQuotaGuard(store, Quotas({"alice": len(one.raw) * 2 - 1}))
    sieve = SieveDelivery(guard, store, store, clock=clock)
    with pytest.raises(OverQuota):
        sieve.deliver_many("alice", INBOX, [one])
    assert store.known_uidls("isp") == set()


def test_the_script_cache_compiles_each_text_once(monkeypatch) -> None:
    calls = []
    import gateway.sieve  # the cache imports the compiler from there when it compiles

    def counting(text, **kwargs):
        calls.append(text)
        return compile_script(text, **kwargs)

    monkeypatch.setattr(gateway.sieve, "compile_script", counting)
    cache = ScriptCache(size=2)
    for text in ["keep;", "keep;", "discard;", "keep;", "stop;", "discard;"]:
        cache.get(text)
    assert calls == ["keep;", "discard;", "stop;", "discard;"]
    with pytest.raises(SieveSyntaxError):
        cache.get("nope;")


def test_envelope_of_pop3_mail() -> None:
    raw = b"Return-Path: <Bounce@Lists.example>\r\nDelivered-To: me@isp.example\r\n\r\nx\r\n"
    assert envelope_for(raw, "acct@isp.example") == Envelope(
        "Bounce@Lists.example", "acct@isp.example"
    )
    assert envelope_for(raw, None) == Envelope("Bounce@Lists.example", "me@isp.example")
    assert envelope_for(b"Return-Path: <>\r\n\r\nx", None) == Envelope("", "")
    folded = b"Subject: x\r\nreturn-path:\r\n <a@b.example>\r\nDelivered-To: <c@d.example>\r\n\r\n"
    assert envelope_for(folded, None) == Envelope("a@b.example", "c@d.example")
    body_only = b"Subject: x\r\n\r\nReturn-Path: <not@header.example>\r\n"
    assert envelope_for(body_only, None) == Envelope("", "")
    assert upstream_address("me@isp.example") == "me@isp.example"
    assert upstream_address("me") is None


def test_the_checker_refuses_with_line_and_column_and_sending_actions() -> None:
    with pytest.raises(SieveSyntaxError) as bad:
        check_script('require "fileinto";\nif true {\n  frob;\n}\n')
    assert (bad.value.line, bad.value.column) == (3, 3)
    with pytest.raises(SieveSyntaxError, match="submission relay"):
        check_script('redirect "x@y.example";')
    check_script(SCRIPT)


def test_describe_prints_one_line_per_action_like_sieve_test(store, clock) -> None:
    script = compile_script(SCRIPT)

    class Env:
        def mailbox_exists(self, name):
            return True

        def seen(self, id, handle, period):
            return False

        def now(self):
            import datetime

            return datetime.datetime.now(datetime.UTC)

    def outcome(raw: bytes) -> list[str]:
        return describe(run(script, raw, Envelope("", "me@isp.example"), Env()))

    assert outcome(mail(1, "hello", sender="x@work.example").raw) == [
        'fileinto :create "Work" flags (\\Flagged)'
    ]
    assert outcome(mail(2, "spam").raw) == ["discard"]
    assert outcome(mail(3, "copy").raw) == [
        'fileinto :create "Archive/2024"',
        "keep flags ($ToMe)",
    ]


def test_refile_moves_existing_mail_with_normal_store_moves(store, clock) -> None:
    inbox = store.get_mailbox("alice", INBOX)
    for n, subject in enumerate(["invoice", "plain", "spam", "copy"]):
        store.append(inbox.id, mail(n, subject).raw)
    with pytest.raises(NoActiveScript):
        next(refile(store, store, store, "alice", INBOX))
    activate(store)
    heard: list[int] = []
    store.add_listener(heard.append)
    reports = list(refile(store, store, store, "alice", INBOX, clock=clock))
    report = reports[-1]
    assert (report.messages, report.moved, report.copied, report.kept) == (4, 1, 1, 3)
    assert box(store, "Bills") == [("invoice", frozenset())]
    assert [s for s, _f in box(store, INBOX)] == ["plain", "spam", "copy"]  # discard never deletes
    assert box(store, "Archive/2024") == [("copy", frozenset())]
    assert inbox.id in heard
