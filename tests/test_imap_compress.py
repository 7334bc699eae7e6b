"""COMPRESS=DEFLATE (RFC 4978): the codec alone, raw bytes over a socket, imaplib over a
deflate wrapper, and mbsync (isync), a real client that negotiates it on its own."""

from __future__ import annotations

import imaplib
import shutil
import ssl
import subprocess
import zlib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.imap.deflate import MAX_INFLATE_CHUNK, DeflateCodec, DeflateError
from gateway.testing.imapclient import (
    BACKENDS,
    HOST,
    PASSWORD,
    USER,
    DeflateSocket,
    RawClient,
    running_server,
)
from gateway.testing.tlsca import ServerTLSContext, make_ca

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))  # imaplib knows no COMPRESS
SYNC_MARKER = b"\x00\x00\xff\xff"  # what a Z_SYNC_FLUSH ends with (RFC 1951 empty stored block)


def compressed(client: RawClient) -> RawClient:
    reply = client.command("Z", "COMPRESS DEFLATE")
    assert reply == b"Z OK DEFLATE active\r\n"
    client.start_deflate()
    return client


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with COMPRESS: after the OK every read and write goes through zlib."""

    _deflate: DeflateSocket | None = None
    _inbuf = b""

    def compress(self) -> str:
        typ, _ = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            self._deflate = DeflateSocket(self.sock)
        return typ

    def _more(self) -> bool:
        assert self._deflate is not None
        data = self._deflate.recv(65536)
        self._inbuf += data
        return bool(data)

    def read(self, size: int) -> bytes:
        if self._deflate is None:
            return super().read(size)
        while len(self._inbuf) < size and self._more():
            pass
        data, self._inbuf = self._inbuf[:size], self._inbuf[size:]
        return data

    def readline(self) -> bytes:
        if self._deflate is None:
            return super().readline()
        while b"\n" not in self._inbuf and self._more():
            pass
        i = self._inbuf.find(b"\n") + 1 or len(self._inbuf)
        line, self._inbuf = self._inbuf[:i], self._inbuf[i:]
        return line

    def send(self, data: bytes) -> None:
        if self._deflate is None:
            return super().send(data)
        self._deflate.sendall(data)


def big_message(n: int) -> bytes:
    body = b"".join(
        b"line %d of message %d, some words to compress\r\n" % (i, n) for i in range(3000)
    )
    return b"From: a@example.org\r\nSubject: big %d\r\n\r\n" % n + body


# ---- the codec -----------------------------------------------------------------------


def test_codec_round_trip_is_raw_deflate_with_sync_flush() -> None:
    codec = DeflateCodec()
    wire = codec.compress(b"* OK hello\r\n") + codec.flush()
    assert wire.endswith(SYNC_MARKER)
    assert zlib.decompressobj(-15).decompress(wire) == b"* OK hello\r\n"
    assert codec.flush() == b""  # nothing new since: no empty flush blocks


def test_codec_inflates_a_zip_bomb_in_bounded_steps() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    wire = bomb.compress(b"a" * (20 * MAX_INFLATE_CHUNK)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(wire) < MAX_INFLATE_CHUNK // 10
    codec = DeflateCodec()
    codec.feed(wire)
    total = 0
    while codec.has_pending:
        chunk = codec.inflate()
        assert len(chunk) <= MAX_INFLATE_CHUNK
        total += len(chunk)
    assert total == 20 * MAX_INFLATE_CHUNK


def test_codec_refuses_a_corrupt_stream() -> None:
    codec = DeflateCodec()
    codec.feed(b"\xff\xff\xff\xff garbage")
    with pytest.raises(DeflateError):
        codec.inflate()


# ---- raw bytes over a socket ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_compress_round_trip_raw(tmp_path: Path, backend: str) -> None:
    """On both backends: with PostgreSQL, command steps run on store threads and their
    output must still go through the compressor (and the protocol trace)."""
    with running_server(tmp_path, backend=backend) as server:
        for n in range(3):
            server.append(raw=big_message(n))
        with server.connect() as client:
            greeting = client.greeting()
            assert b"COMPRESS=DEFLATE" not in greeting  # RFC 4978: a command-auth
            assert client.command("L", f'LOGIN {USER} "{PASSWORD}"').startswith(b"L OK")
            caps = client.command("C", "CAPABILITY")
            assert b" COMPRESS=DEFLATE" in caps
            compressed(client)
            caps = client.command("D", "CAPABILITY")
            assert b"COMPRESS" not in caps and caps.endswith(b"D OK CAPABILITY completed\r\n")
            again = client.command("E", "COMPRESS DEFLATE")
            assert again == b"E NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n"
            client.command("F", "SELECT INBOX")
            fetched = client.command("G", "FETCH 1:3 BODY.PEEK[]")
            for n in range(3):
                assert big_message(n) in fetched
            # A literal sent compressed is read as one (APPEND through the inflater).
            raw = big_message(7)
            client.send(b"H APPEND INBOX {%d+}\r\n" % len(raw) + raw + b"\r\n")
            assert b"H OK [APPENDUID" in client.read_until_tagged("H")
            assert client.command("I", "LOGOUT").endswith(b"I OK LOGOUT completed\r\n")


def test_compress_refused_before_login_and_for_unknown_mechanisms(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, server.connect() as client:
        client.greeting()
        assert client.command("A", "COMPRESS DEFLATE").startswith(b"A BAD")
        assert client.command("L", f'LOGIN {USER} "{PASSWORD}"').startswith(b"L OK")
        assert client.command("B", "COMPRESS LZW").startswith(b"B BAD")
        compressed(client)
        assert client.command("C", "NOOP") == b"C OK NOOP completed\r\n"


def test_starttls_then_compress_layers_deflate_inside_tls(tmp_path: Path) -> None:
    """RFC 4978 §4 with RFC 3501 §6.2.1: STARTTLS, LOGIN, then COMPRESS DEFLATE; from there
    every octet is deflated and then encrypted (the client's deflate stream runs inside its
    TLS socket). COMPRESS before login is BAD (a command of the authenticated state), a
    second COMPRESS is NO [COMPRESSIONACTIVE] (§3), and STARTTLS can no longer be run."""
    ca = make_ca(tmp_path / "ca")
    tls = ServerTLSContext(*ca.issue(tmp_path / "ca"))
    with running_server(tmp_path, tls_context_factory=tls, allow_plaintext_auth=False) as server:
        for n in range(2):
            server.append(raw=big_message(n))
        with server.connect() as client:
            client.greeting()
            assert client.command("A", "COMPRESS DEFLATE").startswith(b"A BAD")
            assert client.command("B", "STARTTLS") == b"B OK Begin TLS negotiation now\r\n"
            client.start_tls(ca.client_context())
            assert client.command("C", "COMPRESS DEFLATE").startswith(b"C BAD")
            assert client.command("L", f'LOGIN {USER} "{PASSWORD}"').startswith(b"L OK")
            assert b" COMPRESS=DEFLATE" in client.command("D", "CAPABILITY")
            compressed(client)
            assert isinstance(client.sock, DeflateSocket)
            assert isinstance(client.sock.sock, ssl.SSLSocket)  # deflate inside TLS
            caps = client.command("E", "CAPABILITY")
            assert b"COMPRESS" not in caps and b"STARTTLS" not in caps
            assert client.command("F", "COMPRESS DEFLATE") == (
                b"F NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n"
            )
            assert client.command("G", "STARTTLS") == (
                b"G BAD STARTTLS not allowed in this state\r\n"
            )
            client.command("H", "SELECT INBOX")
            fetched = client.command("I", "FETCH 1:2 BODY.PEEK[]")
            assert big_message(0) in fetched and big_message(1) in fetched
            raw = big_message(9)
            client.send(b"J APPEND INBOX {%d+}\r\n" % len(raw) + raw + b"\r\n")
            assert b"J OK [APPENDUID" in client.read_until_tagged("J")
            assert big_message(9) in client.command("K", "FETCH 3 BODY.PEEK[]")
            assert client.command("M", "LOGOUT").endswith(b"M OK LOGOUT completed\r\n")


def test_a_zip_bomb_ends_the_connection_not_the_server(tmp_path: Path) -> None:
    """64 MiB without a line end, sent as ~64 KiB of deflate: the parser's line cap ends
    the connection while the input is inflated chunk by chunk."""
    with running_server(tmp_path) as server:
        with server.login() as client:
            compressed(client)
            bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
            wire = bomb.compress(b"a" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
            try:
                client.sock.sock.sendall(wire)  # type: ignore[union-attr]
                tail = client.read_to_eof()
            except OSError:
                tail = b""
            assert b"BAD" in tail or b"BYE" in tail or tail == b""
        with server.login() as other:
            assert other.command("N", "NOOP") == b"N OK NOOP completed\r\n"


def test_compress_with_imaplib_over_a_deflate_wrapper(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        for n in range(5):
            server.append(raw=big_message(n))
        client = DeflateIMAP4(HOST, server.port, timeout=20)
        client.login(USER, PASSWORD)
        assert "COMPRESS=DEFLATE" in client.capability()[1][0].decode()
        assert client.compress() == "OK"
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"5"])
        typ, data = client.fetch("1:5", "(BODY.PEEK[])")
        assert typ == "OK"
        bodies = [part[1] for part in data if isinstance(part, tuple)]
        assert bodies == [big_message(n) for n in range(5)]
        assert client.logout()[0] == "BYE"


# ---- a real client ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) is not installed")
def test_mbsync_negotiates_compress_and_syncs(tmp_path: Path) -> None:
    """isync 1.4 sends COMPRESS DEFLATE by itself when the capability is offered."""
    near = tmp_path / "near"
    near.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount far\nHost {HOST}\nPort {{port}}\nUser {USER}\nPass {PASSWORD}\n"
        "SSLType None\nAuthMechs LOGIN\n\nIMAPStore far\nAccount far\n\n"
        f"MaildirStore near\nPath {near}/\nInbox {near}/INBOX\n\n"
        "Channel c\nFar :far:\nNear :near:\nPatterns INBOX\nCreate Both\nSyncState *\n"
    )
    (tmp_path / "server").mkdir()
    with running_server(tmp_path / "server") as server:
        for n in range(20):
            server.append(raw=big_message(n))
        rc.write_text(rc.read_text().replace("{port}", str(server.port)))
        with capture_logs() as logs:
            done = subprocess.run(
                ["mbsync", "-c", str(rc), "c"], capture_output=True, text=True, timeout=120
            )
            server.wait_until(lambda: not server.factory.protocols, "mbsync disconnected")
        assert done.returncode == 0, done.stderr
    files = list((near / "INBOX" / "new").iterdir()) + list((near / "INBOX" / "cur").iterdir())
    assert len(files) == 20
    ends = [e for e in logs if e["event"] == "imap.disconnect"]
    assert ends and all(e["compressed"] for e in ends)
    assert sum(e["wire_out"] for e in ends) * 3 < sum(e["plain_out"] for e in ends)
