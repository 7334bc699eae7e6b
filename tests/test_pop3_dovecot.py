"""The POP3 fetcher against a real Dovecot upstream: plain, STLS (RFC 2595) and POP3S, with
certificate and host-name verification (RFC 6125), compared byte for byte with poplib."""

from __future__ import annotations

import poplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor

from gateway.app.config import Upstream
from gateway.pop3.errors import FetchError
from gateway.pop3.fetcher import FetchResult, fetch_once
from gateway.store.interfaces import MailboxNotFound
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.reactor_thread import ReactorThread

USER, PASSWORD = "alice", "secret"
MESSAGES = 50


@pytest.fixture
def store(rt: ReactorThread, tmp_path: Path) -> Iterator[Any]:
    s = rt.call(SQLiteStore, tmp_path / "store.db")
    yield s
    rt.call(s.close)


def upstream_for(server: Dovecot, tls: str, **overrides: Any) -> Upstream:
    settings: dict[str, Any] = dict(
        name="dovecot",
        owner="owner",
        host="127.0.0.1",
        port=server.pop3s_port if tls == "implicit" else server.pop3_port,
        tls=tls,
        username=USER,
        password=PASSWORD,
        ca_file=str(server.ca.cert_path),
        timeout=20.0,
    )
    settings.update(overrides)
    return Upstream(**settings)


def fetch(rt: ReactorThread, upstream: Upstream, store: Any) -> FetchResult:
    return rt.call(fetch_once, upstream, store, reactor=global_reactor)


def inbox(rt: ReactorThread, store: Any) -> list[bytes]:
    def read() -> list[bytes]:
        try:
            box = store.get_mailbox("owner", "INBOX")
        except MailboxNotFound:
            return []
        return [store.message_bytes(box.id, r.uid) for r in store.message_rows(box.id)]

    return rt.call(read)


def poplib_view(server: Dovecot) -> tuple[list[str], list[bytes]]:
    """UIDLs and RETR bytes (dot-unstuffed lines + CRLF) as the standard library sees them."""
    conn = poplib.POP3(server.host, server.pop3_port, timeout=20)
    try:
        conn.user(USER)
        conn.pass_(PASSWORD)
        uidls = [line.split()[1].decode("ascii") for line in conn.uidl()[1]]
        bodies = []
        for number in range(1, len(uidls) + 1):
            _, lines, _ = conn.retr(number)
            bodies.append(b"".join(line + b"\r\n" for line in lines))
    finally:
        conn.quit()
    return uidls, bodies


@pytest.fixture
def seeded(dovecot: Dovecot) -> Dovecot:
    dovecot.deliver_many(USER, samplemail.generate(MESSAGES, seed=42))
    return dovecot


@pytest.mark.parametrize(
    ("tls", "host"),
    [("none", "127.0.0.1"), ("starttls", "127.0.0.1"), ("implicit", "localhost")],
)
def test_fifty_messages_arrive_byte_identical_to_poplib_retr(rt, store, seeded, tls, host) -> None:
    result = fetch(rt, upstream_for(seeded, tls, host=host), store)
    assert result.fetched == MESSAGES and result.errors == 0 and result.complete_listing
    uidls, bodies = poplib_view(seeded)
    assert inbox(rt, store) == bodies
    ledger = rt.call(store.ledger_entries, "dovecot")
    assert sorted(e.uidl for e in ledger) == sorted(uidls)
    assert fetch(rt, upstream_for(seeded, tls, host=host), store).fetched == 0


def test_keep_on_server_false_empties_the_dovecot_maildrop_after_storing(
    rt, store, dovecot
) -> None:
    messages = samplemail.generate(5, seed=7)
    dovecot.deliver_many(USER, messages)
    result = fetch(rt, upstream_for(dovecot, "starttls", keep_on_server=False), store)
    assert result.fetched == 5 and result.deleted == 5
    assert dovecot.maildir_count(USER) == 0
    assert inbox(rt, store) == messages


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_certificate_for_the_wrong_host_is_refused_and_nothing_fetched(
    rt, store, dovecot_factory, tls
) -> None:
    server = dovecot_factory(users={USER: PASSWORD}, cert_names=["wrong.example"])
    server.deliver_many(USER, samplemail.generate(3, seed=3))
    with pytest.raises(FetchError) as info:
        fetch(rt, upstream_for(server, tls), store)
    assert info.value.kind == "tls_verify"
    assert str(info.value).startswith("TLS certificate verification failed for 127.0.0.1:")
    assert inbox(rt, store) == [] and rt.call(store.known_uidls, "dovecot") == set()
    assert f"user=<{USER}>" not in server.log_tail(1000)
    assert server.maildir_count(USER) == 3


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_system_trust_refuses_the_private_ca(rt, store, seeded, tls) -> None:
    with pytest.raises(FetchError) as info:
        fetch(rt, upstream_for(seeded, tls, ca_file=None), store)
    assert info.value.kind == "tls_verify"
    assert "TLS certificate verification failed for 127.0.0.1" in str(info.value)
    assert inbox(rt, store) == []
    assert f"user=<{USER}>" not in seeded.log_tail(1000)


@pytest.mark.parametrize(("tls", "auth"), [("starttls", "plain"), ("implicit", "auto")])
def test_sasl_plain_login_fetches_from_dovecot(rt, store, dovecot, tls, auth, monkeypatch) -> None:
    """Dovecot offers SASL PLAIN in CAPA (RFC 5034 §6); "plain" and "auto" use AUTH PLAIN."""
    from gateway.pop3.client import UpstreamClient

    sent: list[bytes] = []
    original = UpstreamClient.sendShort

    def recording(self, cmd, args):
        sent.append(cmd)
        return original(self, cmd, args)

    monkeypatch.setattr(UpstreamClient, "sendShort", recording)
    dovecot.deliver_many(USER, samplemail.generate(3, seed=8))
    host = "localhost" if tls == "implicit" else "127.0.0.1"
    result = fetch(rt, upstream_for(dovecot, tls, host=host, auth=auth), store)
    assert result.fetched == 3
    assert b"AUTH" in sent and b"USER" not in sent and b"PASS" not in sent
    assert f"user=<{USER}>, method=PLAIN" in dovecot.log_tail(200)


def test_wrong_password_over_sasl_plain_is_an_auth_error(rt, store, dovecot) -> None:
    with pytest.raises(FetchError) as info:
        fetch(rt, upstream_for(dovecot, "starttls", auth="plain", password="nope"), store)
    assert info.value.kind == "auth"
