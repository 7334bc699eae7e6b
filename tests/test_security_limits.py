"""Hostile input over a real socket: every named cap answered with a clear BAD/NO/BYE,
pipelining answered in order, and memory bounded under a slow-loris client and under a
client that sends and sends but never reads (backpressure both ways)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.imap.policy import IMAPLimits
from gateway.imap.server import IMAPServerProtocol
from gateway.testing.imapclient import RawClient, ServerHandle, running_server
from gateway.testing.messages import message

CAPS = IMAPLimits(
    max_line_length=1024,
    max_literal_size=1000,
    max_literals=3,
    max_nesting=8,
    max_search_depth=10,
    max_sequence_ranges=20,
)


@pytest.fixture
def capped(tmp_path: Path):
    with running_server(tmp_path, scrypt=True, limits=CAPS) as server:
        server.append(raw=message())
        yield server


@pytest.fixture
def selected(capped: ServerHandle):
    with capped.connect() as client:
        client.login()
        assert b"s OK" in client.command("s", "SELECT INBOX")
        yield client


@pytest.mark.parametrize(
    "command,reply",
    [
        (
            "SEARCH " + "(" * 9 + "ALL" + ")" * 9,
            b"n BAD [LIMIT] SEARCH: parentheses nested deeper than 8\r\n",
        ),
        (
            "SEARCH " + "NOT " * 11 + "ALL",
            b"n BAD [LIMIT] SEARCH: search keys nested deeper than 10\r\n",
        ),
        (
            "FETCH " + ",".join(str(i) for i in range(1, 22)) + " FLAGS",
            b"n BAD [LIMIT] FETCH: sequence set has more than 20 elements\r\n",
        ),
        ("APPEND INBOX {5000}", b"n NO [TOOBIG] literal larger than 1000 octets\r\n"),
    ],
    ids=["nesting", "search-depth", "sequence-set", "literal-size"],
)
def test_each_cap_gets_a_tagged_refusal_and_the_session_goes_on(
    selected: RawClient, command: str, reply: bytes
) -> None:
    assert selected.command("n", command) == reply
    assert selected.command("ok", "NOOP") == b"ok OK NOOP completed\r\n"


def test_too_many_literals_in_one_command(selected: RawClient) -> None:
    selected.send(b"m APPEND INBOX {1+}\r\nx {1+}\r\nx {1+}\r\nx {1+}\r\nx\r\n")
    assert (
        selected.read_until_tagged("m") == b"m NO [LIMIT] more than 3 literals in one command\r\n"
    )


def test_search_program_too_large_for_the_store(tmp_path: Path) -> None:
    """The store's bound on a search program (500 keys) is NO [LIMIT], not a server bug."""
    with running_server(tmp_path, scrypt=True) as server:
        server.append(raw=message())
        with server.connect() as client:
            client.login()
            client.command("s", "SELECT INBOX")
            assert client.command("q", "SEARCH" + " SEEN" * 600) == (
                b"q NO [LIMIT] Search program too complex\r\n"
            )
            assert client.command("r", "SEARCH SEEN") == b"* SEARCH\r\nr OK SEARCH completed\r\n"


def test_overlong_line_is_bye_without_waiting_for_its_end(capped: ServerHandle) -> None:
    """The partial-line cap: 2 KB with no CRLF in sight ends the connection."""
    with capped.connect() as client:
        client.greeting()
        client.send(b"a NOOP " + b"x" * 2000)
        assert client.read_to_eof() == b"* BYE [TOOBIG] line longer than 1024 octets\r\n"


def test_oversized_nonsynchronizing_literal_is_bye(capped: ServerHandle) -> None:
    """A ``{n+}`` literal over the cap is already on its way: the stream cannot be
    resynchronised, so BYE (RFC 7888 §4)."""
    with capped.connect() as client:
        client.login()
        client.send(b"a APPEND INBOX {5000+}\r\n")
        assert client.read_to_eof() == b"* BYE [TOOBIG] literal larger than 1000 octets\r\n"


def test_pipelined_commands_beyond_the_fairness_cap_each_get_one_reply(tmp_path: Path) -> None:
    """500 pipelined commands with a cap of 5 per reactor turn: all answered, in order,
    exactly once."""
    with running_server(tmp_path, scrypt=True, limits=IMAPLimits(max_pipelined_commands=5)) as s:
        with s.connect() as client:
            client.login()
            client.send(b"".join(b"p%d NOOP\r\n" % i for i in range(500)))
            replies = [client.read_line() for _ in range(500)]
            assert replies == [b"p%d OK NOOP completed\r\n" % i for i in range(500)]


def _protocol(server: ServerHandle) -> IMAPServerProtocol:
    (protocol,) = server.factory.protocols
    return protocol


def _transport_buffered(protocol: IMAPServerProtocol) -> int:
    """Bytes Twisted holds for the socket (written by us, not yet taken by the kernel)."""
    transport: Any = protocol.transport
    return len(transport.dataBuffer) + transport._tempDataLen


def _read_until(client: RawClient, marker: bytes) -> bytes:
    """Raw bytes up to and including ``marker`` (linear time, for multi-MB replies)."""
    data = bytearray(client.buffer)
    client.buffer = b""
    while (end := data.find(marker)) < 0:
        chunk = client.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed before " + marker.decode())
        data += chunk
    client.buffer = bytes(data[end + len(marker) :])
    return bytes(data[: end + len(marker)])


def test_slowloris_is_cut_off_by_the_prelogin_timeout(tmp_path: Path) -> None:
    """Bytes that never make a command do not keep a connection alive: the pre-login
    timer counts from the last complete command."""
    with running_server(
        tmp_path, scrypt=True, fake_clock=True, limits=IMAPLimits(prelogin_timeout=60.0)
    ) as server:
        with server.connect() as client:
            client.greeting()
            client.send(b"a NOO")
            server.wait_until(lambda: _protocol(server).parser.buffered_size == 5, "bytes")
            server.advance(59)
            client.send(b"P")
            server.wait_until(lambda: _protocol(server).parser.buffered_size == 6, "bytes")
            server.advance(1)
            assert client.read_to_eof() == b"* BYE Autologout; idle for too long\r\n"


def test_client_that_never_reads_keeps_server_buffers_bounded(tmp_path: Path) -> None:
    """FETCH 1:* BODY[] of 16 MB to a client that stops reading: the server stops
    pulling from the command (it is the transport's producer), so Twisted's buffer stays
    near one chunk; pipelined input behind it is held to ``max_buffered_input`` by no
    longer reading the socket. Reading afterwards still yields every byte."""
    limits = IMAPLimits(max_buffered_input=64 * 1024)
    body = b"y" * (1024 * 1024 - 2) + b"\r\n"
    count = 16
    with running_server(tmp_path, scrypt=True, limits=limits) as server:
        for i in range(count):
            server.append(raw=message(subject=f"big{i}", body=body.decode()))
        client = RawClient(server.port)
        try:
            client.login()
            client.command("s", "SELECT INBOX")
            client.send(b"f FETCH 1:* BODY.PEEK[]\r\n")
            server.wait_until(lambda: _protocol(server)._output_paused, "the producer to pause")
            flood = b"".join(b"n%d NOOP\r\n" % i for i in range(40_000))
            client.sock.setblocking(False)
            sent = 0
            try:
                while sent < len(flood):
                    sent += client.sock.send(flood[sent : sent + 65536])
            except BlockingIOError:
                pass
            client.sock.setblocking(True)
            client.sock.settimeout(20.0)
            assert sent > limits.max_buffered_input * 2
            server.wait_until(
                lambda: _protocol(server)._reading_paused
                or _protocol(server).parser.buffered_size >= sent,
                "input to stop or to be all read",
            )
            peak_out = server.call(lambda: _transport_buffered(_protocol(server)))
            held_in = server.call(lambda: _protocol(server).parser.buffered_size)
            assert peak_out < 512 * 1024, peak_out  # vs 16 MB of response
            assert held_in < limits.max_buffered_input + 256 * 1024, held_in

            got = _read_until(client, b"f OK FETCH completed\r\n")
            assert got.count(body) == count
            if sent == len(flood):
                rest = _read_until(client, b"n39999 OK NOOP completed\r\n")
                assert rest.count(b" OK NOOP completed\r\n") == 40_000
        finally:
            client.close()
