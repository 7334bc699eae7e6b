"""Issue 20 item 2: before login only small literals, and a listener-wide cap on the input
held for unauthenticated connections. Real sockets; what is measured is the server's own
accounting (the parsers' ``buffered_size`` and :class:`~gateway.imap.budgets.ByteBudgets`),
not RSS."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.imap.framing import PRELOGIN_MAX_LITERAL_SIZE
from gateway.imap.policy import IMAPLimits
from gateway.testing.imapclient import RawClient, ServerHandle, running_server

CAP = PRELOGIN_MAX_LITERAL_SIZE


@pytest.fixture
def server(tmp_path: Path):
    with running_server(tmp_path) as handle:
        yield handle


def held_by_parsers(server: ServerHandle) -> int:
    """Bytes all connections' parsers hold right now (exists with or without the fix).
    Runs on the reactor thread (as a ``wait_until`` predicate or through ``call``)."""
    return sum(p.parser.buffered_size for p in server.factory.protocols)


def prelogin_buffered(server: ServerHandle) -> int:
    return server.factory.budgets.prelogin_buffered


def test_the_prelogin_literal_cap_is_dovecots_few_kilobytes() -> None:
    assert CAP == 8192
    assert IMAPLimits().max_prelogin_literal_size == CAP < IMAPLimits().max_literal_size


def test_synchronizing_literal_at_the_cap_gets_a_continuation(server: ServerHandle) -> None:
    with server.connect() as client:
        client.greeting()
        client.send(b"a LOGIN {%d}\r\n" % CAP)
        assert client.read_line() == b"+ Ready for literal data\r\n"
        client.send(b"u" * CAP + b" wrong\r\n")
        assert client.read_line().startswith(b"a NO [AUTHENTICATIONFAILED]")


def test_synchronizing_literal_over_the_cap_is_refused_without_continuation(
    server: ServerHandle,
) -> None:
    """``{n}`` one over the cap: tagged NO [TOOBIG], no ``+``, so the client never sends
    the bytes and the session goes on (RFC 3501 §7.5)."""
    with server.connect() as client:
        client.greeting()
        client.send(b"a LOGIN {%d}\r\n" % (CAP + 1))
        assert client.read_line() == b"a NO [TOOBIG] literal larger than 8192 octets\r\n"
        assert client.command("b", "NOOP") == b"b OK NOOP completed\r\n"


def test_nonsynchronizing_literal_at_the_cap_is_read(server: ServerHandle) -> None:
    with server.connect() as client:
        client.greeting()
        client.send(b"a LOGIN {%d+}\r\n" % CAP + b"u" * CAP + b" wrong\r\n")
        assert client.read_line().startswith(b"a NO [AUTHENTICATIONFAILED]")


def test_nonsynchronizing_literal_over_the_cap_is_bye(server: ServerHandle) -> None:
    """``{n+}`` one over the cap: the bytes are already on their way, so the stream
    cannot be resynchronised: BYE and close (RFC 7888 §4)."""
    with server.connect() as client:
        client.greeting()
        client.send(b"a LOGIN {%d+}\r\n" % (CAP + 1))
        assert client.read_to_eof() == b"* BYE [TOOBIG] literal larger than 8192 octets\r\n"


def test_a_whole_prelogin_command_is_bounded_too(server: ServerHandle) -> None:
    """Many small literals cannot add up to what one large literal may not: the command
    cap before login is one line plus two literals at their largest."""
    limits = server.factory.limits
    literals = limits.max_prelogin_command_size // CAP + 1
    with server.connect() as client:
        client.greeting()
        marker = b"{%d+}\r\n" % CAP
        client.send(b"a ID (" + marker + (b"x" * CAP + b" " + marker) * literals)
        client.send(b"x" * CAP + b")\r\n")
        reply = client.read_line()
        assert reply.startswith(b"a NO [TOOBIG] command longer than"), reply
        assert limits.max_prelogin_command_size < 100 * 1024


def test_red_team_sixteen_huge_literal_announcements_hold_almost_nothing(
    server: ServerHandle,
) -> None:
    """The attack from the issue: 16 connections send ``X LOGIN {60000000+}`` and start
    on the bytes. Each is refused at the announcement; the server holds no literal."""
    clients = [server.connect() for _ in range(16)]
    try:
        for client in clients:
            client.greeting()
            client.send(b"X LOGIN {60000000+}\r\n")
        for client in clients:
            try:
                client.send(b"A" * 256 * 1024)
            except OSError:
                pass  # already closed by the server: the point
            assert client.read_to_eof().startswith(b"* BYE [TOOBIG]")
        server.wait_until(lambda: not server.factory.protocols, "all connections to close")
        budgets = server.call(lambda: server.factory.budgets)
        assert budgets.prelogin_peak < 16 * 1024, budgets.prelogin_peak
        assert budgets.prelogin_buffered == 0
    finally:
        for client in clients:
            client.close()


def test_input_held_before_login_is_counted_and_released(server: ServerHandle) -> None:
    with server.connect() as client:
        client.greeting()
        client.send(b"a NOOP " + b"x" * 5000)
        server.wait_until(lambda: held_by_parsers(server) == 5007, "the partial line")
        assert server.call(prelogin_buffered, server) == 5007
        client.send(b"\r\n")
        assert client.read_line().startswith(b"a BAD")
        server.wait_until(lambda: prelogin_buffered(server) == 0, "the line to be consumed")
    server.wait_until(lambda: not server.factory.protocols, "the connection to close")
    assert server.call(prelogin_buffered, server) == 0


def test_logged_in_input_does_not_count_and_full_literals_are_allowed(
    server: ServerHandle,
) -> None:
    """Once authenticated the full literal size applies (a pipelined APPEND after LOGIN
    is parsed with the new caps) and nothing counts against the pre-login budget."""
    with server.connect() as client:
        client.login()
        client.send(b"a APPEND INBOX {%d}\r\n" % (CAP * 4))
        assert client.read_line() == b"+ Ready for literal data\r\n"
        client.send(b"x" * 1000)
        server.wait_until(lambda: held_by_parsers(server) >= 1000, "the partial literal")
        assert server.call(prelogin_buffered, server) == 0
        client.send(b"y" * (CAP * 4 - 1000) + b"\r\n")
        assert client.read_line().startswith(b"a OK [APPENDUID")


def test_prelogin_budget_across_connections_closes_the_one_that_would_pass_it(
    tmp_path: Path,
) -> None:
    """Four connections hold 50,000 bytes each of an unfinished line (the cap is
    200,000); the fifth connection's bytes would pass it: ``* BYE [LIMIT]``. The sum
    never exceeds the cap, and the others are untouched."""
    limits = IMAPLimits(max_prelogin_buffered=200_000)
    with running_server(tmp_path, limits=limits) as server:
        clients = [server.connect() for _ in range(5)]
        try:
            for index, client in enumerate(clients[:4]):
                client.greeting()
                client.send(b"a NOOP " + b"x" * (50_000 - 7))
                server.wait_until(
                    lambda n=index: prelogin_buffered(server) == 50_000 * (n + 1),
                    "the partial line",
                )
            late = clients[4]
            late.greeting()
            late.send(b"b NOOP x")
            assert late.read_to_eof() == b"* BYE [LIMIT] Too much input before login\r\n"
            budgets = server.call(lambda: server.factory.budgets)
            assert budgets.prelogin_peak == 200_000
            assert budgets.prelogin_refusals == 1
            clients[0].send(b"\r\n")
            assert clients[0].read_line().startswith(b"a BAD")
            server.wait_until(lambda: prelogin_buffered(server) == 150_000, "release")
        finally:
            for client in clients:
                client.close()
        server.wait_until(lambda: not server.factory.protocols, "connections to close")
        assert server.call(prelogin_buffered, server) == 0


def test_prelogin_caps_apply_again_after_logout_on_a_new_connection(
    server: ServerHandle,
) -> None:
    with RawClient(server.port) as client:
        client.login()
        client.command("o", "LOGOUT")
    with server.connect() as client:
        client.greeting()
        client.send(b"a LOGIN {%d}\r\n" % (CAP + 1))
        assert client.read_line().startswith(b"a NO [TOOBIG]")
