"""The IMAP server's output path (issue 19): ``sendmsg`` straight to a plain TCP socket
(:mod:`gateway.serving.socketwrites`) with a bounded handover to the transport when the
socket is full, TCP_NODELAY, whole literals on such connections, and a reactor turn for
the others after every :data:`gateway.imap.server.TURN_OUTPUT` bytes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from gateway.imap import messages, server
from gateway.serving.socketwrites import HANDOVER, SocketWrites, direct_socket
from gateway.store.sqlite import SQLiteStore
from gateway.testing.imapclient import USER, RawClient, running_server
from gateway.testing.imapsession import SessionDriver, WiredServer


class FakeSocket:
    """Takes ``room`` bytes (None: everything), then raises ``then`` or takes nothing."""

    def __init__(self, room: int | None = None, then: BaseException | None = None) -> None:
        self.room = room
        self.then = then
        self.sent = bytearray()
        self.calls = 0

    def sendmsg(self, buffers: list[Any]) -> int:
        self.calls += 1
        data = b"".join(bytes(b) for b in buffers)
        if self.room is not None and self.room <= 0 and self.then is not None:
            raise self.then
        take = len(data) if self.room is None else min(self.room, len(data))
        if self.room is not None:
            self.room -= take
        self.sent += data[:take]
        return take

    def send(self, data: bytes) -> int:
        return self.sendmsg([data])


class FakeTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.producerPaused = False


class Producer:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True


def writes(sock: FakeSocket) -> tuple[SocketWrites, FakeTransport]:
    transport = FakeTransport()
    transport.registerProducer(Producer(), True)
    return SocketWrites(transport, sock), transport  # type: ignore[arg-type]


def test_a_burst_goes_out_in_one_sendmsg_in_order() -> None:
    sock = FakeSocket()
    out, transport = writes(sock)
    for piece in (b"* 1 FETCH (BODY[] {3}\r\n", b"abc", b")\r\n"):
        out.write(piece)
    assert sock.calls == 0  # gathered until the end of the burst
    out.flush()
    assert sock.calls == 1
    assert bytes(sock.sent) == b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n"
    assert transport.value() == b"" and not out.handed


def test_a_full_socket_hands_the_transport_one_bounded_piece_then_resumes() -> None:
    """Order is kept across the socket and the transport; the transport never holds
    more than HANDOVER bytes, and it is told to resume the protocol once it sent them."""
    payload = bytes(range(256)) * 2048  # 512 KiB
    sock = FakeSocket(room=100_000)
    out, transport = writes(sock)
    out.write(b"head ")
    out.write(payload)
    out.flush()
    assert len(sock.sent) == 100_000
    assert out.handed and transport.producerPaused and transport.producer.paused
    assert len(transport.value()) == HANDOVER
    out.write(b" tail")  # a write while the transport holds data waits behind it
    out.flush()
    assert len(transport.value()) == HANDOVER and len(sock.sent) == 100_000
    sent_by_transport = transport.value()
    transport.clear()
    sock.room = None
    out.resumed()  # what the transport's doWrite does once its buffer is empty
    assert not out.handed
    assert bytes(sock.sent[:100_000]) + sent_by_transport + bytes(sock.sent[100_000:]) == (
        b"head " + payload + b" tail"
    )


@pytest.mark.parametrize("error", [BlockingIOError(), ConnectionResetError()])
def test_a_socket_that_takes_nothing_leaves_the_bytes_to_the_transport(
    error: BaseException,
) -> None:
    sock = FakeSocket(room=0, then=error)
    out, transport = writes(sock)
    out.write(b"x" * 10)
    out.flush()
    assert transport.value() == b"x" * 10 and out.handed


def test_stop_gives_the_transport_everything_unsent() -> None:
    sock = FakeSocket(room=3)
    out, transport = writes(sock)
    out.write(b"abcdef")
    out.flush()
    out.write(b"ghi")
    out.stop()
    assert bytes(sock.sent) + transport.value() == b"abcdefghi"


def test_send_now_is_one_send_when_nothing_waits() -> None:
    """An IDLE push's write (issue 19): one ``send``, nothing gathered, nothing handed."""
    sock = FakeSocket()
    out, transport = writes(sock)
    out.send_now(b"* 3 EXISTS\r\n")
    assert sock.calls == 1 and bytes(sock.sent) == b"* 3 EXISTS\r\n"
    assert out.pieces == [] and out.size == 0 and transport.value() == b""


@pytest.mark.parametrize("error", [None, BlockingIOError(), ConnectionResetError()])
def test_send_now_keeps_order_behind_what_the_socket_did_not_take(
    error: BaseException | None,
) -> None:
    """What a full (or broken) socket leaves goes to the transport in order; a later
    push waits behind it."""
    sock = FakeSocket(room=4, then=error)
    out, transport = writes(sock)
    out.send_now(b"* 3 EXISTS\r\n")
    assert out.handed
    out.send_now(b"* 4 EXISTS\r\n")
    assert bytes(sock.sent) + transport.value() + b"".join(bytes(p) for p in out.pieces) == (
        b"* 3 EXISTS\r\n* 4 EXISTS\r\n"
    )


def test_only_plain_tcp_is_written_directly() -> None:
    assert direct_socket(StringTransport()) is None


def test_a_whole_literal_comes_as_one_chunk_when_the_connection_takes_it(
    harness: SessionDriver,
) -> None:
    """With ``session.whole_literals`` (a direct socket) a long literal is not sliced
    into LITERAL_PIECE copies; the bytes are the same as without it."""
    raw = b"Subject: big\r\n\r\n" + b"".join(b"line %06d\r\n" % i for i in range(30_000))
    assert len(raw) > 4 * messages.LITERAL_PIECE
    harness.add(raw)
    harness.select()
    sliced, _ = harness.chunks(b"a UID FETCH 1 BODY.PEEK[]")
    harness.session.whole_literals = True
    whole, _ = harness.chunks(b"b UID FETCH 1 BODY.PEEK[]")
    assert raw in whole
    assert b"".join(whole) == b"".join(sliced)


def test_a_long_fetch_gives_the_reactor_a_turn_every_turn_output_bytes(tmp_path: Path) -> None:
    """A client that never pauses the transport still cannot hold the reactor: after
    TURN_OUTPUT bytes the command waits for the next reactor turn (issue 20)."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.ensure_user(USER)
    inbox = store.get_mailbox(USER, "INBOX").id
    raw = b"Subject: big\r\n\r\n" + b"y" * 598 + b"\r\n" + b"z" * (600 * 1024)
    for _ in range(4):
        store.append(inbox, raw)
    clock = task.Clock()
    conn = WiredServer(store, clock=clock, passwords={USER: "pw"})
    try:
        conn.feed(b"a LOGIN alice pw\r\nb SELECT INBOX\r\n")
        conn.take()
        conn.feed(b"c FETCH 1:4 BODY.PEEK[]\r\n")
        first = conn.take()
        assert server.TURN_OUTPUT <= len(first) < 4 * len(raw)
        assert b"c OK" not in first
        rest = b""
        for _ in range(10):
            clock.advance(0)
            rest += conn.take()
        whole = first + rest
        assert whole.endswith(b"c OK FETCH completed\r\n")
        assert whole.count(raw) == 4
    finally:
        conn.close()


def test_connections_have_nagle_off(tmp_path: Path) -> None:
    """TCP_NODELAY: a command's last partial segment must not wait for the client's
    delayed ACK (~40 ms on Linux)."""
    with running_server(tmp_path) as handle:
        client = RawClient(handle.port)
        try:
            handle.wait_until(lambda: bool(handle.factory.protocols), "the connection")

            def nodelay() -> int:
                (protocol,) = handle.factory.protocols
                sock = protocol.transport.getHandle()
                return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

            assert handle.call(nodelay)
        finally:
            client.close()
