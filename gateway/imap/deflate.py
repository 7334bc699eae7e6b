"""The COMPRESS=DEFLATE stream codec (RFC 4978 §4): raw deflate both ways, sans-I/O.

RFC 4978 §4 asks for a raw DEFLATE stream (RFC 1951: no zlib header or checksum, hence
``wbits=-15``) in each direction, and for each burst of output to end with a sync flush
so that the peer can decompress everything sent so far. :class:`DeflateCodec` does the
bookkeeping and no I/O: the server (:mod:`gateway.imap.server`) feeds it the socket's
bytes and takes back what goes to the parser or the transport.

Input is inflated in bounded steps: 1 KiB of deflate can expand to about 1 MiB, so a
client could otherwise make one read of 64 KiB become 64 MiB in memory (a "zip bomb").
:meth:`DeflateCodec.inflate` returns at most :data:`MAX_INFLATE_CHUNK` octets per call
and keeps the rest compressed until the server asks again, which it does only while
its parser is below its input cap; the transport stops reading meanwhile, so at most one
socket read of compressed input waits here.
"""

from __future__ import annotations

import zlib

MAX_INFLATE_CHUNK = 64 * 1024
"""Most inflated octets produced by one :meth:`DeflateCodec.inflate` call (the bound on
what one step of a zip bomb can add to memory)."""

DEFLATE_LEVEL = 6
"""zlib's default level: most of the gain of level 9 for a fraction of the CPU (mail text
compresses about 3:1 at either)."""

WBITS = -15
"""Raw deflate with a 32 KiB window (RFC 4978 §4: no zlib header)."""


class DeflateError(Exception):
    """The client's compressed stream is corrupt or ended (the connection cannot go on:
    nothing after it can be read)."""


class DeflateCodec:
    """One connection's two deflate streams (RFC 4978 §4)."""

    def __init__(self, level: int = DEFLATE_LEVEL, max_chunk: int = MAX_INFLATE_CHUNK) -> None:
        self._out = zlib.compressobj(level, zlib.DEFLATED, WBITS)
        self._in = zlib.decompressobj(WBITS)
        self._pending = b""  # compressed input not inflated yet
        self._more = False  # the last inflate filled its chunk: zlib may hold more output
        self._dirty = False  # output compressed since the last flush
        self.max_chunk = max_chunk
        self.octets_in = 0
        """Compressed octets received (what crossed the wire, TLS aside)."""
        self.octets_out = 0
        """Compressed octets sent."""

    # -- input --

    def feed(self, data: bytes) -> None:
        """Compressed bytes from the transport."""
        self.octets_in += len(data)
        self._pending = self._pending + data if self._pending else data

    @property
    def has_pending(self) -> bool:
        """True while fed input has not all been inflated (the server then keeps the
        transport paused until it asks for the rest)."""
        return bool(self._pending) or self._more

    def inflate(self) -> bytes:
        """At most :attr:`max_chunk` inflated octets; raises :class:`DeflateError` for a
        corrupt stream or data after its end."""
        if not self.has_pending:
            return b""
        if self._in.eof:
            raise DeflateError("data after the end of the compressed stream")
        data, self._pending = self._pending, b""
        try:
            out = self._in.decompress(data, self.max_chunk)
        except zlib.error as exc:
            raise DeflateError(str(exc)) from None
        self._pending = self._in.unconsumed_tail
        self._more = len(out) >= self.max_chunk
        if self._in.eof and self._in.unused_data:
            raise DeflateError("data after the end of the compressed stream")
        return out

    # -- output --

    def compress(self, data: bytes) -> bytes:
        """Compressed bytes for ``data`` (possibly none yet: zlib keeps a window)."""
        self._dirty = True
        out = self._out.compress(data)
        self.octets_out += len(out)
        return out

    def flush(self) -> bytes:
        """End a burst (RFC 4978 §4): everything compressed so far, sync-flushed so the
        client can read it all now. Empty when nothing was written since the last one."""
        if not self._dirty:
            return b""
        self._dirty = False
        out = self._out.flush(zlib.Z_SYNC_FLUSH)
        self.octets_out += len(out)
        return out
