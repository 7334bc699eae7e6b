"""Sieve actions that send (issue 16): ``redirect`` (RFC 5228 §4.2, ``:copy`` RFC 3894)
and ``vacation`` (RFC 5230) at ingest, queued for the submission relay in the delivery's
own transaction (gateway/access/outbound.py, gateway/access/filtering.py), and refused at
upload only for an owner without a sending upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.access.filtering import SieveDelivery, check_script
from gateway.access.outbound import SendingRoute, SieveOutbound, no_reply_reason
from gateway.sieve import (
    MAX_REDIRECTS,
    Envelope,
    Keep,
    Redirect,
    SieveSyntaxError,
    Vacation,
    compile_script,
    run,
)
from gateway.sieve.message import SieveMessage
from gateway.store.interfaces import INBOX, Delivery
from gateway.store.memory import MemoryStore
from gateway.store.memory_scripts import MemoryScriptStore
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_queue import SQLiteOutboundQueue
from gateway.submission.policy import RateLimiter

NOW = 1_700_000_000.0
ME = "me@isp.example"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Sending:
    """The app's :class:`gateway.app.sending.SieveSending`, reduced to what tests need."""

    def __init__(self, limit: int = 100, owners: tuple[str, ...] = ("alice",)) -> None:
        self.lifetime = 3600.0
        self.rate = RateLimiter(limit)
        self.owners = owners

    def route_for(self, owner: str, upstream: str) -> SendingRoute | None:
        return SendingRoute("isp", (ME,)) if owner in self.owners else None

    def own_addresses(self, owner: str) -> tuple[str, ...]:
        return (ME,)

    def allow(self, owner: str, now: float) -> bool:
        try:
            self.rate.check(owner, now)
        except Exception:
            return False
        self.rate.record(owner, now)
        return True


class Env:
    def __init__(self) -> None:
        self.records: set[tuple[str, str]] = set()

    def mailbox_exists(self, name: str) -> bool:
        return True

    def seen(self, id: str, handle: str, period: int) -> bool:
        return (handle, id) in self.records

    def now(self):
        import datetime as dt

        return dt.datetime.fromtimestamp(NOW, dt.UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path: Path, clock: Clock):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "store.db", clock=clock)
    else:
        s = MemoryStore(clock=clock)
        s.scripts = MemoryScriptStore()
    s.ensure_user("alice")
    yield s
    s.close()


def queue_of(store):
    if isinstance(store, SQLiteStore):
        return SQLiteOutboundQueue(store.db)
    return store.state.outbound


def mail(n: int, sender: str = "bob@b.example", extra: str = "", to: str = ME) -> Delivery:
    raw = (
        f"Return-Path: <{sender}>\r\nFrom: Bob <{sender}>\r\nTo: {to}\r\n"
        f"Subject: hello {n}\r\nMessage-ID: <{n}@b.example>\r\n{extra}\r\nbody {n}\r\n"
    ).encode()
    return Delivery(upstream="isp", uidl=f"u{n}", raw=raw)


def activate(store, text: str) -> None:
    scripts = getattr(store, "scripts", store)
    scripts.put_script("alice", "s", text)
    scripts.set_active("alice", "s")


def delivery(store, clock, sending: Sending | None = None, kicks: list | None = None):
    return SieveDelivery(
        store,
        store,
        getattr(store, "scripts", store),
        addresses={"isp": ME},
        clock=clock,
        outbound=SieveOutbound(sending or Sending(), "gw.example"),
        on_queued=(lambda: kicks.append(1)) if kicks is not None else None,
    )


def inbox(store) -> int:
    return len(store.message_rows(store.get_mailbox("alice", INBOX).id))


# ---- the language ---------------------------------------------------------------------


def test_upload_refuses_sending_actions_only_without_a_sending_upstream() -> None:
    for script in ('redirect "x@y.example";', 'require "vacation"; vacation "away";'):
        with pytest.raises(SieveSyntaxError, match=r"\[upstreams.smtp\]"):
            check_script(script)
        check_script(script, sending=True)
    for script in ('require "reject"; reject "no";', 'require "ereject"; ereject "no";'):
        with pytest.raises(SieveSyntaxError, match="backscatter"):
            check_script(script, sending=True)


def test_redirect_cancels_the_implicit_keep_unless_copy() -> None:
    env = Env()
    raw = mail(1).raw
    result = run(
        compile_script('redirect "x@y.example";', sending=True), raw, Envelope("", ""), env
    )
    assert result.actions == [Redirect("x@y.example", False)]
    script = compile_script('require "copy"; redirect :copy "x@y.example";', sending=True)
    result = run(script, raw, Envelope("", ""), env)
    assert result.actions == [Redirect("x@y.example", True), Keep()]


def test_redirects_are_limited_per_run_and_repeats_count_once() -> None:
    many = "".join(f'redirect "r{i}@y.example";' for i in range(MAX_REDIRECTS + 1))
    result = run(compile_script(many, sending=True), mail(1).raw, Envelope("", ""), Env())
    assert result.error and "redirects" in result.error and result.actions == [Keep()]
    same = 'redirect "x@y.example"; redirect "X@y.example";'
    result = run(compile_script(same, sending=True), mail(1).raw, Envelope("", ""), Env())
    assert result.actions == [Redirect("x@y.example")]


def test_vacation_days_default_minimum_and_handle() -> None:
    def vacation(args: str) -> Vacation:
        script = compile_script(f'require "vacation"; vacation {args} "away";', sending=True)
        result = run(script, mail(1).raw, Envelope("", ""), Env())
        found = [a for a in result.actions if isinstance(a, Vacation)]
        assert Keep() in result.actions  # vacation keeps the message (RFC 5230 §4.7)
        return found[0]

    assert vacation("").period == 7 * 86400
    assert vacation(":days 0").period == 86400
    assert vacation(':days 3 :handle "h"').handle == "h"
    assert vacation(':subject "a"').handle != vacation(':subject "b"').handle


# ---- RFC 5230 §4.5/§4.6: when never to reply -------------------------------------------


@pytest.mark.parametrize(
    ("sender", "extra", "to", "reason"),
    [
        ("", "", ME, "no_envelope_sender"),
        (ME, "", ME, "own_address"),
        ("MAILER-DAEMON@b.example", "", ME, "mail_robot"),
        ("news-request@b.example", "", ME, "mail_robot"),
        ("bob@b.example", "Auto-Submitted: auto-replied\r\n", ME, "auto_submitted"),
        ("bob@b.example", "List-Id: <l.b.example>\r\n", ME, "mailing_list"),
        ("bob@b.example", "Precedence: bulk\r\n", ME, "precedence"),
        ("bob@b.example", "Precedence: junk\r\n", ME, "precedence"),
        ("bob@b.example", "", "other@isp.example", "not_addressed_to_user"),
        ("bob@b.example", "Auto-Submitted: no\r\n", ME, None),
        ("bob@b.example", "", f"Me <{ME.upper()}>", None),
    ],
)
def test_no_reply_rules(sender: str, extra: str, to: str, reason: str | None) -> None:
    raw = mail(1, sender or "x@b.example", extra, to).raw
    assert no_reply_reason(SieveMessage(raw), sender, [ME]) == reason


# ---- at ingest: queued with the delivery ------------------------------------------------


VACATION = 'require "vacation"; vacation :days 2 :subject "Away" "I am away.";'


def test_vacation_reply_is_queued_with_the_delivery_once_per_sender(store, clock) -> None:
    activate(store, VACATION)
    kicks: list[int] = []
    ledger = delivery(store, clock, kicks=kicks)
    ledger.deliver_many("alice", INBOX, [mail(1), mail(2)])  # same sender, same batch
    ledger.deliver_many("alice", INBOX, [mail(3)])  # same sender, later pass
    queue = queue_of(store)
    items = queue.pending()
    assert len(items) == 1 and kicks == [1] and inbox(store) == 3
    item = items[0]
    assert (item.mail_from, item.recipients, item.route) == ("", ("bob@b.example",), "isp")
    reply = queue.content(item.id)
    assert b"Auto-Submitted: auto-replied\r\n" in reply
    assert b"In-Reply-To: <1@b.example>\r\n" in reply
    assert b"Subject: Away\r\n" in reply and b"From: me@isp.example\r\n" in reply
    assert reply.endswith(b"\r\n\r\nI am away.\r\n")
    clock.now += 2 * 86400 + 1  # the period is over: one more reply
    ledger.deliver_many("alice", INBOX, [mail(4)])
    assert len(queue.pending()) == 2


def test_vacation_is_not_sent_to_lists_or_when_not_addressed(store, clock) -> None:
    activate(store, VACATION)
    ledger = delivery(store, clock)
    ledger.deliver_many(
        "alice",
        INBOX,
        [mail(1, extra="List-Id: <x.b.example>\r\n"), mail(2, to="someone@else.example")],
    )
    assert queue_of(store).pending() == [] and inbox(store) == 2


def test_redirect_is_queued_with_the_owner_as_envelope_sender(store, clock) -> None:
    activate(store, 'redirect "fwd@elsewhere.example";')
    ledger = delivery(store, clock)
    ledger.deliver_many("alice", INBOX, [mail(1)])
    ledger.deliver_many("alice", INBOX, [mail(1)])  # a UIDL already known sends nothing
    queue = queue_of(store)
    (item,) = queue.pending()
    assert (item.mail_from, item.recipients) == (ME, ("fwd@elsewhere.example",))
    content = queue.content(item.id)
    assert content.startswith(b"X-Sieve-Redirected-From: <me@isp.example>\r\nReturn-Path:")
    assert item.message_id == "<1@b.example>"
    assert inbox(store) == 0  # redirect without :copy: not kept


def test_a_redirect_that_cannot_be_sent_keeps_the_message(store, clock) -> None:
    activate(store, 'redirect "fwd@elsewhere.example";')
    ledger = delivery(store, clock, Sending(limit=1))
    ledger.deliver_many("alice", INBOX, [mail(1), mail(2)])  # the second is over the cap
    assert len(queue_of(store).pending()) == 1 and inbox(store) == 1
    ledger = delivery(store, clock, Sending(owners=()))  # no sending upstream any more
    ledger.deliver_many("alice", INBOX, [mail(3)])
    assert len(queue_of(store).pending()) == 1 and inbox(store) == 2
    looped = mail(4, extra="X-Sieve-Redirected-From: <me@isp.example>\r\n")
    delivery(store, clock).deliver_many("alice", INBOX, [looped])
    assert len(queue_of(store).pending()) == 1 and inbox(store) == 3


def test_queue_row_and_delivery_commit_together(tmp_path: Path, clock) -> None:
    """A failure inside the delivery's transaction leaves neither the message nor the
    redirect: the fetcher fetches again and both happen once."""
    store = SQLiteStore(tmp_path / "s.db", clock=clock)
    store.ensure_user("alice")
    activate(store, 'require "copy"; redirect :copy "fwd@elsewhere.example";')
    ledger = delivery(store, clock)
    original = store._add_rows

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    store._add_rows = boom
    with pytest.raises(RuntimeError):
        ledger.deliver_many("alice", INBOX, [mail(1)])
    assert queue_of(store).pending() == [] and store.known_uidls("isp") == set()
    store._add_rows = original
    ledger.deliver_many("alice", INBOX, [mail(1)])
    assert len(queue_of(store).pending()) == 1 and inbox(store) == 1
    store.close()
