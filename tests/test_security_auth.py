"""Login penalties, failure budgets and connection limits: the bookkeeping on a fake
clock, then the same behaviour over a real socket (the delay runs on the injected
clock, never blocking the reactor)."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

from twisted.internet import task

from gateway.imap.policy import IMAPLimits
from gateway.security.penalty import AuthPenalty, PenaltySettings, source_key
from gateway.testing.imapclient import PASSWORD, USER, RawClient, ServerHandle, running_server

IP = "198.51.100.7"
FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def test_delay_doubles_per_failure_up_to_the_cap_and_resets_on_success() -> None:
    """Dovecot's auth_penalty: 2, 4, 8, 15, 15 s; a success starts over at 2 s."""
    penalty = AuthPenalty(task.Clock())
    assert [penalty.failed(IP, "alice") for _ in range(5)] == [2.0, 4.0, 8.0, 15.0, 15.0]
    penalty.succeeded(IP, "alice")
    assert penalty.failures(IP) == 0
    assert penalty.failed(IP, "alice") == 2.0


def test_penalty_is_per_source_and_forgotten_after_a_quiet_window() -> None:
    clock = task.Clock()
    penalty = AuthPenalty(clock, PenaltySettings(window=60.0))
    penalty.failed(IP, "alice")
    penalty.failed(IP, "alice")
    assert penalty.failed("203.0.113.1", "alice") == 2.0  # another source starts fresh
    clock.advance(61)
    assert penalty.failures(IP) == 0 and penalty.failed(IP, "alice") == 2.0


def test_ipv6_sources_are_grouped_by_64() -> None:
    """One host usually owns a whole /64: rotating addresses inside it gains nothing."""
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("") == "local"


def test_source_budget_refuses_then_expires() -> None:
    clock = task.Clock()
    penalty = AuthPenalty(clock, PenaltySettings(ip_budget=3, window=100.0))
    for _ in range(2):
        penalty.failed(IP, "alice")
    assert penalty.refusal(IP, "alice") is None
    penalty.failed(IP, "bob")
    assert penalty.refusal(IP, "carol") == "source"
    clock.advance(101)
    assert penalty.refusal(IP, "carol") is None


def test_user_budget_spares_sources_that_logged_in_before() -> None:
    """A password-spraying botnet locks the user name, but not its owner's known devices."""
    clock = task.Clock()
    penalty = AuthPenalty(clock, PenaltySettings(user_budget=3, ip_budget=0))
    home = "192.0.2.50"
    penalty.succeeded(home, "alice")
    for i in range(3):
        penalty.failed(f"203.0.113.{i}", "alice")
    assert penalty.refusal("203.0.113.99", "alice") == "user"
    assert penalty.refusal(home, "alice") is None
    assert penalty.refusal("203.0.113.99", "bob") is None


def test_tables_stay_bounded_under_a_flood_of_sources() -> None:
    penalty = AuthPenalty(task.Clock(), PenaltySettings(max_entries=100))
    for i in range(1000):
        penalty.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert len(penalty._sources) == 100 and len(penalty._users) == 100


# ---- over a real socket --------------------------------------------------------------


def _login_delay(server: ServerHandle) -> float:
    """The single pending login delay (the other pending call is the autologout timer,
    which is at least the pre-login timeout away)."""
    limit = server.factory.limits.prelogin_timeout
    delays = [d for d in server.pending_delays() if d < limit]
    assert len(delays) == 1, delays
    return delays[0]


def _no_reply_yet(client: RawClient) -> bool:
    client.sock.setblocking(False)
    try:
        client.sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        client.sock.setblocking(True)
        client.sock.settimeout(20.0)
    return False


def test_failed_logins_are_answered_after_a_doubling_delay(tmp_path: Path) -> None:
    """The NO comes only when the fake clock reaches 2, 4, 8, 15, 15 s; the reply and
    the delay are the same for an unknown user as for a wrong password; a success
    resets the delay."""
    with running_server(
        tmp_path, scrypt=True, fake_clock=True, penalty=PenaltySettings(ip_budget=0)
    ) as server:
        penalty = server.factory.penalty
        assert penalty is not None
        with server.connect() as client:
            client.greeting()
            seen = []
            for i in range(5):
                user = USER if i % 2 else "nobody"
                client.send(f"t{i} LOGIN {user} wrong\r\n".encode())
                server.wait_until(lambda n=i: penalty.failures("127.0.0.1") == n + 1, "failure")
                delay = _login_delay(server)
                seen.append(delay)
                assert _no_reply_yet(client)
                server.advance(delay - 0.5)
                assert _no_reply_yet(client)
                server.advance(0.5)
                assert client.read_line() == f"t{i} ".encode() + FAILED
            assert seen == [2.0, 4.0, 8.0, 15.0, 15.0]
            assert client.command("ok", f"LOGIN {USER} {PASSWORD}").startswith(b"ok OK")
        with server.connect() as client:
            client.greeting()
            client.send(b"x LOGIN alice wrong\r\n")
            server.wait_until(lambda: penalty.failures("127.0.0.1") == 1, "failure")
            assert _login_delay(server) == 2.0


def test_authenticate_plain_failures_are_delayed_too(tmp_path: Path) -> None:
    with running_server(
        tmp_path, scrypt=True, fake_clock=True, penalty=PenaltySettings()
    ) as server:
        penalty = server.factory.penalty
        assert penalty is not None
        with server.connect() as client:
            client.greeting()
            ir = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
            client.send(f"a AUTHENTICATE PLAIN {ir}\r\n".encode())
            server.wait_until(lambda: penalty.failures("127.0.0.1") == 1, "failure")
            assert _login_delay(server) == 2.0
            server.advance(2.0)
            assert client.read_line() == b"a " + FAILED


def test_spent_budget_refuses_even_the_right_password_until_the_window_passes(
    tmp_path: Path,
) -> None:
    """RFC 5530 UNAVAILABLE: after the source's budget of failures, logins are refused
    unchecked (after the current delay); a quiet window later they work again."""
    settings = PenaltySettings(ip_budget=2, window=300.0)
    with running_server(tmp_path, scrypt=True, fake_clock=True, penalty=settings) as server:
        penalty = server.factory.penalty
        assert penalty is not None
        with server.connect() as client:
            client.greeting()
            for i in range(2):
                client.send(f"f{i} LOGIN {USER} wrong\r\n".encode())
                server.wait_until(lambda n=i: penalty.failures("127.0.0.1") == n + 1, "fail")
                server.advance(_login_delay(server))
                assert client.read_line() == f"f{i} ".encode() + FAILED
            client.send(f"r LOGIN {USER} {PASSWORD}\r\n".encode())
            clock = server.clock
            assert clock is not None
            server.wait_until(lambda: len(clock.getDelayedCalls()) == 2, "refusal delay")
            server.advance(_login_delay(server))
            assert client.read_line() == (
                b"r NO [UNAVAILABLE] Too many failed logins; try again later\r\n"
            )
        server.advance(301)
        with server.connect() as client:
            assert client.login().startswith(b"L1 OK")


def test_connection_limit_per_user_and_address(tmp_path: Path) -> None:
    """The (user, address) limit answers the extra login NO [LIMIT]; closing one
    connection frees its slot."""
    limits = IMAPLimits(max_connections_per_user_ip=2)
    with running_server(tmp_path, scrypt=True, limits=limits) as server:
        first, second, third = server.connect(), server.connect(), server.connect()
        try:
            first.login()
            second.login()
            third.greeting()
            assert third.command("x", f"LOGIN {USER} {PASSWORD}") == (
                b"x NO [LIMIT] Too many connections for this user from your address\r\n"
            )
            assert third.command("s", "SELECT INBOX") == (  # still not logged in
                b"s BAD SELECT not allowed in this state\r\n"
            )
            first.command("bye", "LOGOUT")
            first.read_to_eof()
            server.wait_until(lambda: len(server.factory.protocols) == 2, "first to go")
            assert third.command("y", f"LOGIN {USER} {PASSWORD}").startswith(b"y OK")
        finally:
            for client in (first, second, third):
                client.close()


def test_connection_limit_per_address_says_bye(tmp_path: Path) -> None:
    limits = IMAPLimits(max_connections_per_ip=2)
    with running_server(tmp_path, scrypt=True, limits=limits) as server:
        kept = [server.connect(), server.connect()]
        try:
            for client in kept:
                client.greeting()
            with server.connect() as extra:
                assert extra.read_to_eof() == b"* BYE Too many connections from your address\r\n"
            kept[0].close()
            server.wait_until(lambda: len(server.factory.protocols) == 1, "a slot to free")
            with server.connect() as again:
                assert again.greeting().startswith(b"* OK")
        finally:
            for client in kept:
                client.close()


def test_prelogin_and_postlogin_timeouts(tmp_path: Path) -> None:
    """RFC 3501 §5.4: the pre-login timer is short, the logged-in one at least 30 min."""
    limits = IMAPLimits(prelogin_timeout=60.0, idle_timeout=1800.0)
    with running_server(tmp_path, scrypt=True, fake_clock=True, limits=limits) as server:
        with server.connect() as idle:
            idle.greeting()
            server.advance(60)
            assert idle.read_to_eof() == b"* BYE Autologout; idle for too long\r\n"
        with server.connect() as user:
            user.login()
            server.advance(1799)
            assert user.command("n", "NOOP") == b"n OK NOOP completed\r\n"
            server.advance(1800)
            assert user.read_to_eof() == b"* BYE Autologout; idle for too long\r\n"
