"""User story: real POP3 mail in, IMAP out (issue 2's acceptance), end to end.

A real Dovecot POP3 server upstream, the real `popgate serve` process, Python's imaplib
as the mail client.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import time

import pytest

from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

POLL = "10s"
WAIT = 60.0


def upstream_entry(server: Dovecot, tls: str, **extra) -> dict:
    port = {"none": server.pop3_port, "starttls": server.pop3_port, "implicit": server.pop3s_port}
    entry = {
        "name": "alice-isp",
        "owner": "alice",
        "host": "localhost" if tls != "none" else "127.0.0.1",
        "port": port[tls],
        "tls": tls,
        "username": "alice",
        "password": "secret",
        "poll_interval": POLL,
    }
    if tls != "none":
        entry["ca_file"] = str(server.ca.cert_path)
    entry.update(extra)
    return entry


def upstream_retr(server: Dovecot) -> list[bytes]:
    """Every message as the upstream's RETR gives it (CRLF lines, dot-unstuffed)."""
    pop = poplib.POP3(server.host, server.pop3_port)
    try:
        pop.user("alice")
        pop.pass_("secret")
        count, _ = pop.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = pop.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
        return out
    finally:
        pop.quit()


def imap_messages(port: int) -> dict[int, bytes]:
    """UID → BODY[] of every INBOX message, via imaplib."""
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.login("alice", "alice-password")
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        if int(data[0]) == 0:
            return {}
        typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert typ == "OK"
        out = {}
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                out[uid] = item[1]
        return out
    finally:
        imap.logout()


def wait_for_count(port: int, count: int, timeout: float = WAIT) -> dict[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        got = imap_messages(port)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


@pytest.fixture
def dovecot_server():
    with Dovecot() as server:
        server.add_user("alice", "secret")
        yield server


def test_fetch_serve_poll_restart(dovecot_server, tmp_path):
    """50 upstream messages arrive byte-identical over IMAP; 5 more come with the next
    poll and nothing is duplicated; after a restart the same 55 keep their UIDs."""
    from gateway.testing import samplemail

    server = dovecot_server
    mails = samplemail.generate(55, seed=7)
    for raw in mails[:50]:
        server.deliver("alice", raw)
    gw = GatewayProcess(
        tmp_path / "gw",
        users={"alice": "alice-password"},
        upstreams=[upstream_entry(server, "none")],
    )
    with gw:
        got = wait_for_count(gw.port, 50)
        assert len(got) == 50
        assert sorted(got.values()) == sorted(upstream_retr(server))
        for raw in mails[50:]:
            server.deliver("alice", raw)
        got = wait_for_count(gw.port, 55)
        assert len(got) == 55
        assert sorted(got.values()) == sorted(upstream_retr(server))  # each exactly once
        time.sleep(11)  # one more poll must not duplicate anything
        assert len(imap_messages(gw.port)) == 55
    fetches_before = len([e for e in gw.events() if e.get("event") == "pop3.fetched"])
    with gw:  # restart on the same state dir and port
        gw.wait_for_event("pop3.fetched", after=fetches_before, timeout=WAIT)
        assert imap_messages(gw.port) == got
    assert "secret" not in gw.log_text() and "alice-password" not in gw.log_text()


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_fetch_over_tls_with_private_ca(dovecot_server, tmp_path, tls):
    """STLS and POP3S with the test CA in ca_file: the mail arrives."""
    from gateway.testing import samplemail

    for raw in samplemail.generate(10, seed=3):
        dovecot_server.deliver("alice", raw)
    gw = GatewayProcess(
        tmp_path / "gw",
        users={"alice": "alice-password"},
        upstreams=[upstream_entry(dovecot_server, tls)],
    )
    with gw:
        got = wait_for_count(gw.port, 10)
        assert sorted(got.values()) == sorted(upstream_retr(dovecot_server))


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_wrong_host_certificate_is_refused(tmp_path, tls):
    """A certificate for another host name: a clear log line, nothing fetched, and the one
    failure notice (issue 14: an untrusted certificate will not fix itself) in INBOX."""
    from gateway.testing import samplemail

    with Dovecot(cert_names=["wrong.example"]) as server:
        server.add_user("alice", "secret")
        for raw in samplemail.generate(3, seed=1):
            server.deliver("alice", raw)
        gw = GatewayProcess(
            tmp_path / "gw",
            users={"alice": "alice-password"},
            upstreams=[upstream_entry(server, tls)],
        )
        with gw:
            event = gw.wait_for_event("pop3.fetch_failed", timeout=WAIT)
            assert "certificate" in str(event).lower()
            gw.wait_for_event("pop3.notice_filed", timeout=WAIT)
            got = imap_messages(gw.port)
            assert len(got) == 1  # the notice, none of the three upstream messages
            (notice,) = got.values()
            assert notice.startswith(b"From: popgate <postmaster@localhost>\r\n")
            assert b"Auto-Submitted: auto-generated" in notice and b"tls_verify" in notice
        assert "secret" not in gw.log_text()
