"""The relay client (gateway/submission/client.py) against a scripted SMTP server on a
loopback socket: what it refuses to do (credentials without TLS, a server without
STARTTLS), SIZE and 8BITMIME, per-recipient results, which failures are permanent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred

from gateway.submission.client import RelayOutcome, dot_stuff, relay_message
from gateway.submission.policy import SmtpUpstream
from gateway.testing.submission import on_reactor, reactor

Answer = Callable[[bytes], bytes | None]


class Scripted:
    """Accepts one connection; answers each command line via ``answer(line)``; records
    what it received (DATA bodies included, raw)."""

    def __init__(self, ehlo: list[str], answer: Answer) -> None:
        self.ehlo = ehlo
        self.answer = answer
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        reader = conn.makefile("rb")
        conn.sendall(b"220 scripted ESMTP\r\n")
        in_data = False
        try:
            while line := reader.readline():
                self.received.append(line)
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        conn.sendall(self.answer(b"<end of data>") or b"250 2.0.0 ok\r\n")
                    continue
                cmd = line.rstrip(b"\r\n")
                if cmd.upper().startswith(b"EHLO"):
                    lines = ["scripted", *self.ehlo]
                    conn.sendall(
                        b"".join(
                            f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n".encode()
                            for i, t in enumerate(lines)
                        )
                    )
                    continue
                reply = self.answer(cmd)
                if reply is None:
                    reply = b"250 2.0.0 ok\r\n"
                if cmd == b"DATA" and reply.startswith(b"354"):
                    in_data = True
                conn.sendall(reply)
                if cmd == b"QUIT":
                    break
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def default(cmd: bytes) -> bytes | None:
    if cmd == b"DATA":
        return b"354 go\r\n"
    if cmd == b"QUIT":
        return b"221 bye\r\n"
    return None


@pytest.fixture
def server() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(ehlo: list[str] | None = None, answer: Answer = default) -> Scripted:
        s = Scripted(ehlo if ehlo is not None else ["SIZE 1000", "8BITMIME"], answer)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def relay(port: int, content: bytes = b"Subject: x\r\n\r\n.dot\r\n", **kw: Any) -> RelayOutcome:
    upstream = SmtpUpstream(
        host=kw.pop("host", "127.0.0.1"),
        port=port,
        tls=kw.pop("tls", "none"),
        username=kw.pop("username", ""),
        password="pw",
        timeout=5,
    )
    recipients = kw.pop("recipients", ("a@x.example",))
    return on_reactor(
        lambda: ensureDeferred(
            relay_message(
                upstream,
                mail_from="alice@isp.example",
                recipients=recipients,
                content=content,
                reactor=reactor,
                helo_name="gw.test",
            )
        )
    )


def test_a_message_is_sent_with_size_and_dot_stuffing(server) -> None:  # type: ignore[no-untyped-def]
    s = server()
    out = relay(s.port)
    assert out.reply == "250 2.0.0 ok" and out.delivered == ("a@x.example",)
    s.thread.join(5)
    wire = b"".join(s.received)
    assert b"MAIL FROM:<alice@isp.example> SIZE=20\r\n" in wire
    assert b"\r\n..dot\r\n.\r\n" in wire


def test_per_recipient_results(server) -> None:  # type: ignore[no-untyped-def]
    def answer(cmd: bytes) -> bytes | None:
        if cmd == b"RCPT TO:<busy@x.example>":
            return b"450 4.2.1 busy\r\n"
        if cmd == b"RCPT TO:<gone@x.example>":
            return b"550 5.1.1 no such user\r\n"
        return default(cmd)

    s = server(answer=answer)
    out = relay(s.port, recipients=("a@x.example", "busy@x.example", "gone@x.example"))
    assert out.delivered == ("a@x.example",)
    assert out.deferred == (("busy@x.example", "450 4.2.1 busy"),)
    assert out.failed == (("gone@x.example", "5.1.1", "550 5.1.1 no such user"),)


def test_size_and_8bit_limits_are_permanent(server) -> None:  # type: ignore[no-untyped-def]
    out = relay(server().port, content=b"x" * 1001 + b"\r\n")
    assert out.permanent and "at most 1000 octets" in (out.error or "")
    out = relay(server(ehlo=["SIZE 0"]).port, content="é\r\n".encode())
    assert out.permanent and "8BITMIME" in (out.error or "")
    s = server()
    assert relay(s.port, content="é\r\n".encode()).reply is not None
    s.thread.join(5)
    assert b"BODY=8BITMIME" in b"".join(s.received)


def test_mail_and_data_refusals(server) -> None:  # type: ignore[no-untyped-def]
    def refuse_mail(cmd: bytes) -> bytes | None:
        return b"553 5.7.1 not your address\r\n" if cmd.startswith(b"MAIL") else default(cmd)

    out = relay(server(answer=refuse_mail).port)
    assert out.permanent and "553 5.7.1" in (out.error or "")

    def busy_mail(cmd: bytes) -> bytes | None:
        return b"451 4.3.0 later\r\n" if cmd.startswith(b"MAIL") else default(cmd)

    assert not relay(server(answer=busy_mail).port).permanent

    def data_refused(cmd: bytes) -> bytes | None:
        return b"554 5.7.0 spam\r\n" if cmd == b"<end of data>" else default(cmd)

    out = relay(server(answer=data_refused).port)
    assert out.reply is None and out.failed == (("a@x.example", "5.7.0", "554 5.7.0 spam"),)


def test_no_credentials_without_tls_and_no_starttls_no_go(server) -> None:  # type: ignore[no-untyped-def]
    out = relay(1, host="smtp.example.org", tls="none")
    assert "in clear" in (out.error or "")
    s = server(ehlo=["AUTH PLAIN"])
    out = relay(s.port, tls="starttls", username="u")
    assert "does not offer STARTTLS" in (out.error or "") and not out.permanent
    s.thread.join(5)
    assert not any(line.startswith(b"AUTH") for line in s.received)


def test_auth_refused_is_not_permanent(server) -> None:  # type: ignore[no-untyped-def]
    def refuse(cmd: bytes) -> bytes | None:
        return b"535 5.7.8 bad\r\n" if cmd.startswith(b"AUTH") else default(cmd)

    out = relay(server(ehlo=["AUTH LOGIN PLAIN"], answer=refuse).port, username="u")
    assert "535 5.7.8" in (out.error or "") and not out.permanent


def test_connection_refused_is_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = relay(port)
    assert "refused the connection" in (out.error or "") and not out.permanent


def test_dot_stuff_adds_the_final_crlf() -> None:
    assert dot_stuff(b".a\r\nb") == b"..a\r\nb\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"
