"""What lies between the socket and the parser: wire octet counters and COMPRESS=DEFLATE.

Sans-I/O: :class:`ConnectionStream` turns the transport's bytes into the parser's and
the session's output into the transport's, and counts both sides, so the one Twisted
protocol (:mod:`gateway.imap.server`) only moves bytes. Before COMPRESS (RFC 4978) both
directions pass through unchanged; after it, input is inflated in bounded steps
(:data:`~gateway.imap.deflate.MAX_INFLATE_CHUNK`) when the server asks for more, and
output is deflated and sync-flushed at the end of each burst (:meth:`end_burst`).
"""

from __future__ import annotations

from gateway.imap.deflate import DeflateCodec


class ConnectionStream:
    """One connection's byte path (both directions) and its counters."""

    def __init__(self) -> None:
        self.codec: DeflateCodec | None = None
        self.wire_in = 0
        """Octets read from the transport (compressed once COMPRESS is on; TLS aside)."""
        self.wire_out = 0
        """Octets written to the transport."""
        self.plain_in = 0
        """Octets given to the parser (inflated)."""
        self.plain_out = 0
        """Octets of IMAP responses (before compression)."""

    @property
    def compressed(self) -> bool:
        return self.codec is not None

    # -- input --

    def received(self, data: bytes) -> bytes:
        """Bytes from the transport; returns what the parser may take now (all of it
        before COMPRESS; nothing after, see :meth:`inflate`)."""
        self.wire_in += len(data)
        if self.codec is None:
            self.plain_in += len(data)
            return data
        self.codec.feed(data)
        return b""

    @property
    def pending(self) -> bool:
        """Compressed input waits to be inflated (the transport should stay paused)."""
        return self.codec is not None and self.codec.has_pending

    def inflate(self) -> bytes:
        """The next bounded chunk of inflated input (raises DeflateError if corrupt)."""
        if self.codec is None:
            return b""
        data = self.codec.inflate()
        self.plain_in += len(data)
        return data

    # -- output --

    def outgoing(self, data: bytes) -> bytes:
        """What to write to the transport for ``data`` (maybe nothing until the flush)."""
        self.plain_out += len(data)
        if self.codec is not None:
            data = self.codec.compress(data)
        self.wire_out += len(data)
        return data

    def end_burst(self) -> bytes:
        """The end of a burst of output: the deflate sync flush (RFC 4978 §4), if any."""
        if self.codec is None:
            return b""
        data = self.codec.flush()
        self.wire_out += len(data)
        return data

    # -- switching --

    def start_compress(self, unparsed: bytes) -> None:
        """COMPRESS answered OK: from now on both directions are deflated. ``unparsed``
        is input the parser already holds beyond the COMPRESS command; a client must not
        send any (RFC 4978 §3), and if one did, it can only have been compressed."""
        self.codec = DeflateCodec()
        self.plain_in -= len(unparsed)
        if unparsed:
            self.codec.feed(unparsed)
