"""IDLE push (RFC 2177) as a real client sees it, issue 4: imapclient idles on INBOX while
the POP3 side delivers (``store.deliver`` on the reactor thread, from another thread of
the test, as the fetcher does) and another session flags, moves and expunges; every
change reaches the idler without it asking, keep-alives come at least every two minutes,
and only DONE ends the IDLE."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from imapclient import IMAPClient

from gateway.imap.policy import IMAPLimits
from gateway.store.interfaces import Delivery
from gateway.testing.imapclient import (
    BACKENDS,
    HOST,
    PASSWORD,
    SOCKET_TIMEOUT,
    USER,
    ServerHandle,
    running_server,
)
from gateway.testing.messages import message

IDLE_WAIT_ROUNDS = 30
"""idle_check() calls (each up to a second) before giving up on a push that should come
at once; only a safety net against a hang, never a timing assertion."""

KEEPALIVE_MAX = 120.0
"""RFC 2177 §3 / issue 4: a keep-alive at least every 2 minutes (NAT boxes drop quiet flows)."""

REIDLE_INTERVAL = 29 * 60.0
"""RFC 2177 §3: clients end and re-issue IDLE at least this often, so an IDLE that long
must not be logged out."""


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path):
    with running_server(tmp_path, backend=request.param) as handle:
        yield handle


@pytest.fixture
def idler(server: ServerHandle):
    client = server.imapclient()
    yield client
    try:
        client.logout()
    except Exception:
        client.shutdown()


def wait_for(client: IMAPClient, wanted: tuple) -> list:
    """idle_check() until ``wanted`` is among the pushed responses; returns them all."""
    seen: list = []
    for _ in range(IDLE_WAIT_ROUNDS):
        seen.extend(client.idle_check(timeout=1))
        if wanted in seen:
            return seen
    raise AssertionError(f"{wanted!r} was never pushed; got {seen!r}")


def deliver_from_another_thread(server: ServerHandle, uidl: str, subject: str) -> None:
    """What the POP3 fetcher does, from a thread that is not the test's own."""
    done: list[int | None] = []

    def run() -> None:
        delivery = Delivery("isp", uidl, message(subject))
        done.append(server.store_call(server.store.deliver, USER, "INBOX", delivery))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(SOCKET_TIMEOUT)
    assert done and done[0] is not None


def test_idler_hears_pop3_deliveries_and_other_sessions(
    server: ServerHandle, idler: IMAPClient
) -> None:
    """RFC 2177 §3 with RFC 3501 §7.3.1, §7.4.1: deliveries by the POP3 side (EXISTS),
    a flag change (FETCH FLAGS), a MOVE and an EXPUNGE (EXPUNGE) by another session all
    reach the idling client, and after DONE its view (sequence numbers) agrees with the
    store."""
    server.append(raw=message("already there"))
    idler.select_folder("INBOX")
    idler.idle()

    deliver_from_another_thread(server, "u1", "fetched one")
    wait_for(idler, (2, b"EXISTS"))
    deliver_from_another_thread(server, "u2", "fetched two")
    wait_for(idler, (3, b"EXISTS"))

    other = server.imapclient()
    try:
        other.select_folder("INBOX")
        other.add_flags([2], [b"\\Flagged"], silent=True)
        seen = wait_for(idler, (2, b"FETCH", (b"FLAGS", (b"\\Flagged", b"\\Recent"))))
        assert all(r[1] != b"EXPUNGE" for r in seen)

        # imapclient speaks UIDs: UID 1 is the idler's message 1; then UID 3 is its 2.
        other.move([1], "Archive")
        wait_for(idler, (1, b"EXPUNGE"))
        other.add_flags([3], [b"\\Deleted"])
        other.expunge()
        wait_for(idler, (2, b"EXPUNGE"))
    finally:
        other.logout()

    text, _rest = idler.idle_done()
    assert text == b"IDLE terminated"
    fetched = idler.fetch("1:*", ["FLAGS"])  # UID FETCH: keyed by UID
    assert list(fetched) == [2] and fetched[2][b"SEQ"] == 1
    rows = server.store_call(server.store.message_rows, server.mailbox_id())
    assert [row.uid for row in rows] == [2]
    assert "\\Flagged" in rows[0].flags


def test_idle_is_ended_only_by_done(server: ServerHandle) -> None:
    """RFC 2177 §3: pushes and keep-alives do not end IDLE; DONE does (case-insensitive),
    with the tagged OK, and the session goes on."""
    with server.connect() as raw:
        raw.login()
        raw.command("s", "SELECT INBOX")
        raw.send(b"i IDLE\r\n")
        assert raw.read_line() == b"+ idling\r\n"
        server.append()
        assert raw.read_line() == b"* 1 EXISTS\r\n"
        assert raw.read_line() == b"* 1 RECENT\r\n"
        server.append()
        assert raw.read_line() == b"* 2 EXISTS\r\n"
        assert raw.read_line() == b"* 2 RECENT\r\n"
        raw.send(b"done\r\n")
        assert raw.read_until_tagged("i") == b"i OK IDLE terminated\r\n"
        assert raw.command("n", "NOOP") == b"n OK NOOP completed\r\n"


def test_keepalive_comes_at_least_every_two_minutes_by_default(tmp_path: Path) -> None:
    """RFC 2177 §3: the default keep-alive interval is at most two minutes, and on a fake
    clock one ``* OK Still here`` arrives per interval while IDLE goes on; an IDLE of 29
    minutes (clients re-IDLE that often) is not logged out."""
    limits = IMAPLimits()
    assert limits.idle_keepalive <= KEEPALIVE_MAX
    with running_server(tmp_path, fake_clock=True) as server:
        with server.connect() as raw:
            raw.login()
            raw.command("s", "SELECT INBOX")
            raw.send(b"i IDLE\r\n")
            assert raw.read_line() == b"+ idling\r\n"
            for _ in range(3):
                server.advance(limits.idle_keepalive)
                assert raw.read_line() == b"* OK Still here\r\n"
            server.append()  # a push between keep-alives
            assert raw.read_line() == b"* 1 EXISTS\r\n"
            assert raw.read_line() == b"* 1 RECENT\r\n"
            idled = 3 * limits.idle_keepalive
            while idled + limits.idle_keepalive <= REIDLE_INTERVAL:
                server.advance(limits.idle_keepalive)
                idled += limits.idle_keepalive
                assert raw.read_line() == b"* OK Still here\r\n"
            server.advance(REIDLE_INTERVAL - idled)
            raw.send(b"DONE\r\n")
            assert raw.read_until_tagged("i") == b"i OK IDLE terminated\r\n"


@pytest.mark.slow
@pytest.mark.dovecot
def test_real_gateway_pushes_pop3_mail_to_an_idling_client(tmp_path: Path) -> None:
    """End to end (RFC 2177 with the POP3 side): the real ``popgate serve`` process polls a
    real Dovecot; a message delivered upstream while imapclient idles is pushed to it as
    EXISTS, and fetching it gives the upstream bytes."""
    from gateway.testing.dovecot import Dovecot
    from gateway.testing.gateway_proc import GatewayProcess

    with Dovecot() as upstream:
        upstream.add_user("alice", "secret")
        upstream.deliver("alice", message("before"))
        gateway = GatewayProcess(
            tmp_path / "gw",
            users={USER: PASSWORD},
            upstreams=[
                {
                    "name": "isp",
                    "owner": USER,
                    "host": "127.0.0.1",
                    "port": upstream.pop3_port,
                    "tls": "none",
                    "username": "alice",
                    "password": "secret",
                    "poll_interval": "10s",
                }
            ],
        )
        with gateway:
            gateway.wait_for_event("pop3.fetched")
            client = IMAPClient(HOST, port=gateway.port, ssl=False, timeout=SOCKET_TIMEOUT)
            try:
                client.login(USER, PASSWORD)
                assert client.select_folder("INBOX")[b"EXISTS"] == 1
                client.idle()
                raw = message("while idling", body="Pushed, not polled for.\r\n")
                upstream.deliver("alice", raw)
                seen: list = []
                for _ in range(IDLE_WAIT_ROUNDS * 3):  # the gateway polls every 10 s
                    seen.extend(client.idle_check(timeout=1))
                    if (2, b"EXISTS") in seen:
                        break
                assert (2, b"EXISTS") in seen, seen
                client.idle_done()
                fetched = client.fetch("2:*", ["BODY.PEEK[]"])
                assert [data[b"BODY[]"] for data in fetched.values()] == [raw]
            finally:
                client.logout()
