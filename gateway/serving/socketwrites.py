"""Output straight to a TCP socket with ``sendmsg``: a connection's bulk data without copies.

Twisted's transport buffers every ``write`` in a list, joins that list into one bytes
object before each ``send`` (a copy of everything written), and sends at most 128 KiB per
reactor turn. For a 33 MB ``UID FETCH 1:500 BODY.PEEK[]`` that was two copies of every
literal in Python (the handler's 64 KiB slices, then the join) and ~260 reactor turns,
about half of the server's CPU for the command (issue 19). :class:`SocketWrites` gathers a
burst's chunks in a list and hands them to the kernel with one scatter/gather ``sendmsg``:
the message bytes read from the store are the very buffers the kernel copies from.

The transport stays the owner of the connection. When the socket takes less than it was
offered (its send buffer is full), the rest stays here, unsent, as views of the chunks;
the transport gets one bounded piece of it (:data:`HANDOVER`, a copy) and its producer
(the protocol) is paused as the transport pauses it when its own buffer fills
(``producerPaused``, a documented attribute of Twisted's consumers, then
``pauseProducing``), so the transport resumes the protocol once it has sent that piece:
:meth:`SocketWrites.resumed` then sends the rest directly again. So order is kept, the
transport never holds more than one piece, and a slow client costs one bounded copy per
send-buffer refill. Plain TCP only: TLS and test transports are written through as before
(:func:`direct_socket`).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport

SEND_AT = 256 * 1024
"""Bytes gathered before a ``sendmsg`` in the middle of a burst: the syscall's fixed cost
is nothing at this size, and a client reading as fast as it can still gets each piece
while it is in the CPU's caches (a larger lead made the bench's client slower, issue 19)."""

MAX_PIECES = 512
"""Chunks per ``sendmsg`` (the kernel takes at most ``IOV_MAX``, 1024 on Linux)."""

HANDOVER = 64 * 1024
"""Bytes given to the transport when the socket is full (one copy, sent by the reactor
when the socket is writable again)."""


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP transport, whose output may bypass the transport's
    buffer; None for TLS (implicit or started), UNIX sockets and test transports."""
    if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
        return None
    if getattr(transport, "TLS", False):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


class SocketWrites:
    """One connection's direct output: :meth:`write` every chunk in order, :meth:`flush`
    at the end of a burst, :meth:`resumed` from the protocol's ``resumeProducing``,
    :meth:`stop` before STARTTLS or closing."""

    def __init__(self, transport: Any, sock: socket.socket) -> None:
        self.transport = transport
        self.sock = sock
        self.pieces: list[bytes | memoryview] = []
        self.size = 0
        self.handed = False
        """The transport holds data: the protocol must not produce more until it is resumed."""

    def write(self, data: bytes | memoryview) -> None:
        self.pieces.append(data)
        self.size += len(data)
        if self.size >= SEND_AT or len(self.pieces) >= MAX_PIECES:
            self.flush()

    def send_now(self, data: bytes) -> None:
        """One short write sent at once, outside any burst (an IDLE push to hundreds of
        connections in one reactor turn, issue 19): one ``send`` when nothing waits
        before it, else (and for what the socket did not take) in order behind what does."""
        rest: bytes | memoryview = data
        if not self.pieces and not self.handed:
            try:
                sent = self.sock.send(data)
            except OSError:  # full or broken: flush meets it again and does what it does
                sent = 0
            if sent == len(data):
                return
            rest = memoryview(data)[sent:]
        self.write(rest)
        self.flush()

    def flush(self) -> None:
        """Send what the socket takes now; if it takes less, hand the transport one piece."""
        pieces = self.pieces
        while pieces and not self.handed:
            try:
                sent = self.sock.sendmsg(pieces[:MAX_PIECES])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # A broken connection: the transport meets the error on its own write
                # and closes the connection the usual way (connectionLost).
                self._hand_all(pause=True)
                return
            self.size -= sent
            done = 0
            while done < len(pieces) and sent >= len(pieces[done]):
                sent -= len(pieces[done])
                done += 1
            del pieces[:done]
            if sent:
                pieces[0] = memoryview(pieces[0])[sent:]
                self._hand_over()
            elif pieces and done < MAX_PIECES:
                self._hand_over()

    def resumed(self) -> None:
        """The transport has sent all it held: direct sends may go on."""
        self.handed = False
        self.flush()

    def stop(self) -> None:
        """Back to plain transport writes: everything unsent goes to the transport, in order."""
        self._hand_all()

    def _hand_over(self) -> None:
        head = self.pieces[0]
        piece = bytes(head[:HANDOVER])
        if len(head) > HANDOVER:
            self.pieces[0] = memoryview(head)[HANDOVER:]
        else:
            del self.pieces[0]
        self.size -= len(piece)
        self.handed = True
        self.transport.write(piece)
        self._pause_producer()

    def _pause_producer(self) -> None:
        transport = self.transport
        producer = transport.producer
        if producer is not None and not transport.producerPaused:
            # As the transport itself does when its buffer fills: the producer is paused,
            # and its doWrite resumes it once the buffer is empty.
            transport.producerPaused = True
            producer.pauseProducing()

    def _hand_all(self, *, pause: bool = False) -> None:
        """Everything unsent to the transport: for good (STARTTLS, closing; no pause, as
        nothing here is resumed any more), or after a socket error (``pause``: the
        transport then fails the connection, or sends it all and resumes the protocol)."""
        pieces, self.pieces, self.size = self.pieces, [], 0
        self.handed = True
        if pieces:
            self.transport.writeSequence([bytes(p) for p in pieces])
            if pause:
                self._pause_producer()
