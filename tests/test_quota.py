"""Quotas (RFC 9208): GETQUOTAROOT/GETQUOTA over IMAP, NO [OVERQUOTA] for APPEND/COPY/MOVE,
and fetched mail over quota held on the POP3 server, never dropped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import reactor as global_reactor

from gateway.access import quota
from gateway.app.config import Upstream
from gateway.pop3.errors import FetchError
from gateway.pop3.fetcher import fetch_once
from gateway.store.interfaces import INBOX, Delivery, OverQuota
from gateway.store.sqlite import SQLiteStore
from gateway.testing.fakepop3 import FakePOP3Server
from gateway.testing.imapclient import RawClient, ServerHandle, running_server, tagged_line
from gateway.testing.messages import message
from gateway.testing.reactor_thread import ReactorThread

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
MESSAGE = message(subject="quota")
SIZE = len(MESSAGE)
ALICE_LIMIT = 3 * SIZE  # room for three messages
FAMILY_LIMIT = 2 * 1024 * 1024


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(
        tmp_path,
        users=PASSWORDS,
        shared={"family": ["alice", "bob"]},
        quotas={"alice": ALICE_LIMIT, "shared:family": FAMILY_LIMIT},
    ) as handle:
        handle.call(lambda: handle.store.ensure_user("shared:family"))
        yield handle


def append(client: RawClient, tag: str, mailbox: str) -> bytes:
    client.send(b'%s APPEND "%s" {%d+}\r\n%s\r\n' % (tag.encode(), mailbox.encode(), SIZE, MESSAGE))
    return client.read_until_tagged(tag)


def test_capability_announces_quota(server: ServerHandle) -> None:
    with server.connect() as client:
        assert b" QUOTA QUOTA=RES-STORAGE" in client.greeting()


def test_getquotaroot_reports_personal_and_shared_roots(server: ServerHandle) -> None:
    with server.login("alice") as alice:
        assert tagged_line(append(alice, "a", "INBOX")).startswith(b"a OK")
        reply = alice.command("q", "GETQUOTAROOT INBOX")
        used = (SIZE + 1023) // 1024
        assert (
            f'* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE {used} {ALICE_LIMIT // 1024})'.encode()
            in reply
        )
        reply = alice.command("q", 'GETQUOTAROOT "Shared/family"')
        assert b'* QUOTAROOT "Shared/family" "Shared/family"\r\n' in reply
        assert b'* QUOTA "Shared/family" (STORAGE 0 2048)\r\n' in reply
        assert b'* QUOTA "" (STORAGE' in alice.command("g", 'GETQUOTA ""')


def test_no_quota_means_no_root_and_unknown_roots_do_not_exist(server: ServerHandle) -> None:
    with server.login("bob") as bob, server.login("carol") as carol:
        assert b'* QUOTAROOT "INBOX"\r\n' in bob.command("q", "GETQUOTAROOT INBOX")
        assert tagged_line(bob.command("g", 'GETQUOTA ""')).startswith(b"g NO [NONEXISTENT]")
        assert tagged_line(carol.command("g", 'GETQUOTA "Shared/family"')).startswith(b"g NO")
        assert tagged_line(carol.command("r", 'GETQUOTAROOT "Shared/family"')).startswith(b"r NO")
        assert tagged_line(bob.command("g", 'GETQUOTA "alice"')).startswith(b"g NO")


def test_append_copy_over_quota_get_overquota_and_store_nothing(server: ServerHandle) -> None:
    with server.login("alice") as alice:
        for i in range(3):
            assert tagged_line(append(alice, f"a{i}", "INBOX")).startswith(b"a")
        assert tagged_line(append(alice, "x", "INBOX")) == b"x NO [OVERQUOTA] Quota exceeded"
        alice.command("s", "SELECT INBOX")
        assert (
            tagged_line(alice.command("c", "COPY 1 Archive")) == b"c NO [OVERQUOTA] Quota exceeded"
        )
        # A move inside the same quota root does not add anything: allowed at the limit.
        assert tagged_line(alice.command("m", "MOVE 1 Archive")).startswith(b"m OK")
        # Into the shared tree (its own, larger quota) a copy is fine.
        assert tagged_line(alice.command("k", 'COPY 1 "Shared/family"')).startswith(b"k OK")
        reply = alice.command("q", "STATUS INBOX (MESSAGES)")
        assert re.search(rb"MESSAGES 2\)", reply)


def test_delivery_guard_refuses_over_quota_and_writes_nothing(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db") as store:
        guard = quota.DeliveryQuotaGuard(store, quota.Quotas({"alice": SIZE}))
        assert guard.deliver("alice", INBOX, Delivery("isp", "1", MESSAGE)) == 1
        with pytest.raises(OverQuota):
            guard.deliver_many("alice", INBOX, [Delivery("isp", "2", MESSAGE)])
        assert store.known_uidls("isp") == {"1"}
        # An already known UIDL adds nothing, so it is not refused.
        assert guard.deliver("alice", INBOX, Delivery("isp", "1", MESSAGE)) is None
        # Other owners are not limited.
        assert guard.deliver("bob", INBOX, Delivery("isp", "3", MESSAGE)) == 1


def test_fetched_mail_over_quota_is_held_on_the_server_and_fetched_later(
    rt: ReactorThread, tmp_path: Path
) -> None:
    """The pass fails visibly (OverQuota); nothing is deleted upstream even with
    keep_on_server = false; with room again the same messages arrive."""
    messages = [message(subject=f"held {i}") for i in range(3)]
    pop = FakePOP3Server("fam", "pw", messages=messages)
    port = rt.call(pop.listen, global_reactor)
    store = rt.call(SQLiteStore, tmp_path / "s.db")
    quotas = quota.Quotas({"shared:family": 10})
    guard = quota.DeliveryQuotaGuard(store, quotas)
    upstream = Upstream(
        name="family-isp",
        owner="shared:family",
        host="127.0.0.1",
        port=port.getHost().port,
        tls="none",
        username="fam",
        password="pw",
        keep_on_server=False,
        timeout=10.0,
    )
    try:
        with pytest.raises(FetchError, match="OverQuota"):
            rt.call(fetch_once, upstream, guard, reactor=global_reactor)
        rt.call(pop.when_idle)
        assert len(pop.messages) == 3 and rt.call(store.known_uidls, "family-isp") == set()
        quotas.update({"shared:family": 10 * 1024 * 1024})
        result = rt.call(fetch_once, upstream, guard, reactor=global_reactor)
        rt.call(pop.when_idle)
        assert result.fetched == 3
        box = rt.call(store.get_mailbox, "shared:family", INBOX)
        assert rt.call(store.counts, box.id).messages == 3
    finally:
        rt.call(port.stopListening)
        rt.call(store.close)
