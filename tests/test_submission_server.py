"""The submission server over real loopback sockets with Python's smtplib as the client
(no external binary: fast). The upstream here is unreachable, so nothing leaves: these
tests are about what the server accepts and refuses, and what it commits."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.submission.policy import SubmissionLimits
from gateway.testing.ports import free_port
from gateway.testing.submission import (
    HOST,
    USERS,
    SubmissionGateway,
    message,
    running_gateway,
    upstream_for,
)
from gateway.testing.tlsca import CA


@pytest.fixture
def gateway(tmp_path: Path, tls_ca: CA) -> Iterator[SubmissionGateway]:
    limits = SubmissionLimits(max_message_size=4000, max_recipients=3, max_messages_per_hour=3)
    dead = upstream_for(free_port(), tls_ca)  # nothing listens: the relay only defers
    with running_gateway(tmp_path, tls_ca, dead, limits=limits, relay_running=False) as gw:
        yield gw


def client(gw: SubmissionGateway, ca: CA, *, login: str | None = "alice") -> smtplib.SMTP:
    smtp = smtplib.SMTP(HOST, gw.port, timeout=20)
    smtp.ehlo("client.test")
    smtp.starttls(context=_context(ca))
    smtp.ehlo("client.test")
    if login:
        smtp.login(login, USERS[login])
    return smtp


def _context(ca: CA) -> ssl.SSLContext:
    context = ca.client_context()
    context.check_hostname = False  # reached as 127.0.0.1; the name check is the relay's job
    return context


def refusal(call: object) -> tuple[int, bytes]:
    with pytest.raises(smtplib.SMTPException) as info:
        call()  # type: ignore[operator]
    error = info.value
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        ((code, text),) = error.recipients.values()
        return code, text
    return error.smtp_code, error.smtp_error  # type: ignore[attr-defined]


def test_a_message_is_committed_before_250_with_bcc_only_in_the_sent_copy(
    gateway: SubmissionGateway, tls_ca: CA
) -> None:
    with client(gateway, tls_ca) as smtp:
        refused = smtp.sendmail(
            "alice@isp.example", ["bob@example.org", "hidden@example.net"], message()
        )
        assert refused == {}
    (item,) = gateway.items()
    assert item.state == "queued" and item.route == "alice-isp"
    assert item.recipients == ("bob@example.org", "hidden@example.net")
    relayed = gateway.call(gateway.queue.content, item.id)
    assert b"Bcc" not in relayed and b"Subject: Hello" in relayed
    ((user, copy),) = gateway.sent
    assert user == "alice" and copy.flags == ("\\Seen",)
    assert b"Bcc: hidden@example.net" in copy.raw


def test_ehlo_offers_auth_only_after_tls_on_a_listener_that_is_not_local(
    gateway: SubmissionGateway, tls_ca: CA
) -> None:
    with smtplib.SMTP(HOST, gateway.strict_port, timeout=20) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("auth") and smtp.has_extn("starttls")
        for name in ("size", "8bitmime", "pipelining", "enhancedstatuscodes"):
            assert smtp.has_extn(name)
        assert not smtp.has_extn("smtputf8")
        code, text = smtp.docmd("AUTH", "PLAIN AGFsaWNlAGFsaWNlLXBhc3N3b3Jk")
        assert (code, text[:6]) == (538, b"5.7.11")
        smtp.starttls(context=_context(tls_ca))
        smtp.ehlo("client.test")
        assert smtp.has_extn("auth")
        smtp.login("alice", USERS["alice"])


def test_implicit_tls_listener(gateway: SubmissionGateway, tls_ca: CA) -> None:
    with smtplib.SMTP_SSL(HOST, gateway.implicit_port, timeout=20, context=_context(tls_ca)) as s:
        s.ehlo("client.test")
        assert s.has_extn("auth") and not s.has_extn("starttls")
        s.login("bob", USERS["bob"])
        s.sendmail("bob@isp.example", ["x@example.org"], message(sender="bob@isp.example"))
    assert [i.route for i in gateway.items()] == ["bob-isp"]


def test_refusals(gateway: SubmissionGateway, tls_ca: CA) -> None:
    with client(gateway, tls_ca, login=None) as smtp:
        assert smtp.mail("alice@isp.example") == (530, b"5.7.0 Authentication required")
        smtp.rset()
        assert refusal(lambda: smtp.login("alice", "wrong"))[0] == 535
        penalty = gateway.factory.penalty
        assert penalty is not None
        # the login penalty IMAP shares; smtplib tried PLAIN, then LOGIN
        assert gateway.call(penalty.failures, HOST) == 2
        smtp.login("alice", USERS["alice"])
        assert gateway.call(penalty.failures, HOST) == 0
        code, text = refusal(lambda: smtp.sendmail("bob@isp.example", ["x@example.org"], b""))
        assert code == 550 and text.startswith(b"5.7.1 You may not send as bob@isp.example")
        assert b"allowed: alice@isp.example, family@home.example" in text
        code, text = refusal(lambda: smtp.sendmail("me@nowhere.example", ["x@example.org"], b""))
        assert (code, text[:5]) == (550, b"5.7.1")
        forged = message(sender="bob@isp.example")
        code, text = refusal(lambda: smtp.sendmail("alice@isp.example", ["x@example.org"], forged))
        assert (code, text[:5]) == (550, b"5.7.1") and b"From/Sender bob@isp.example" in text
        big = message() + b"x" * 5000 + b"\r\n"
        code, text = refusal(lambda: smtp.sendmail("alice@isp.example", ["x@example.org"], big))
        assert (code, text[:5]) == (552, b"5.3.4")  # smtplib declares SIZE=: refused at MAIL
        smtp.rset()
        assert smtp.docmd("MAIL", "FROM:<alice@isp.example>")[0] == 250
        for n in range(3):
            assert smtp.docmd("RCPT", f"TO:<r{n}@example.org>")[0] == 250
        code, text = smtp.docmd("RCPT", "TO:<r3@example.org>")
        assert (code, text[:5]) == (452, b"4.5.3")
        smtp.rset()
        # the body itself over the limit, without a SIZE= declaration
        smtp.docmd("MAIL", "FROM:<alice@isp.example>")
        smtp.docmd("RCPT", "TO:<x@example.org>")
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(message() + b"y" * 5000 + b"\r\n.\r\n")
        code, text = smtp.getreply()
        assert (code, text[:5]) == (552, b"5.3.4")
    assert gateway.items() == [] and gateway.sent == []


def test_rate_limit(gateway: SubmissionGateway, tls_ca: CA) -> None:
    with client(gateway, tls_ca) as smtp:
        for n in range(3):
            smtp.sendmail("alice@isp.example", ["x@example.org"], message(message_id=f"<{n}@i>"))
        code, text = refusal(lambda: smtp.sendmail("alice@isp.example", ["x@example.org"], b""))
        assert (code, text[:5]) == (450, b"4.7.0")
    with client(gateway, tls_ca, login="bob") as smtp:  # bob has his own budget
        smtp.sendmail("bob@isp.example", ["x@example.org"], message(sender="bob@isp.example"))
    assert len(gateway.items()) == 4


def test_pipelined_transaction_and_starttls_injection(
    gateway: SubmissionGateway, tls_ca: CA
) -> None:
    """PIPELINING (RFC 2920): one write, replies in order, though AUTH waits on a thread.
    STARTTLS with plaintext behind it in the same packet: that plaintext never runs."""
    with socket.create_connection((HOST, gateway.port), timeout=20) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAGFsaWNlLXBhc3N3b3Jk\r\n"
            b"MAIL FROM:<alice@isp.example>\r\nRCPT TO:<a@example.org>\r\n"
            b"RCPT TO:<b@example.org>\r\nDATA\r\n"
        )
        codes = []
        while len(codes) < 6:
            line = reader.readline()
            if line[3:4] == b" ":
                codes.append(int(line[:3]))
        assert codes == [250, 235, 250, 250, 250, 354]
        sock.sendall(message() + b".\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert reader.readline().startswith(b"221 ")
    with socket.create_connection((HOST, gateway.port), timeout=20) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO c\r\n")
        while reader.readline()[3:4] != b" ":
            pass
        sock.sendall(b"STARTTLS\r\nAUTH PLAIN AGFsaWNlAGFsaWNlLXBhc3N3b3Jk\r\n")
        assert reader.readline().startswith(b"220 2.0.0")
        with _context(tls_ca).wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"MAIL FROM:<alice@isp.example>\r\n")
            # the AUTH that came in clear behind STARTTLS was thrown away, not run
            assert tls.makefile("rb").readline() == b"530 5.7.0 Authentication required\r\n"
    assert len(gateway.items()) == 1
