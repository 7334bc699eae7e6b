"""Issue 15 end to end: a real ``popgate serve`` with submission listeners, Postfix's
smtp-sink behind a STARTTLS + AUTH front (test CA) as each upstream's SMTP server, and
real clients (swaks, msmtp, smtplib) and IMAP (imaplib) on the other side.

What these prove: the relayed copy has the right envelope and no Bcc; one Sent copy (with
Bcc, ``\\Seen``) is visible over IMAP and the client's own APPEND of it makes no second
copy; the queue waits while the upstream is down and delivers once when it is back; a
550 files a bounce in the sender's INBOX; a SIGKILL between the 250 and the relay loses
nothing and sends nothing twice; the refusals the issue lists; status and /metrics show
the queue. In CI (CI=true) a missing binary fails; elsewhere it skips.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.ports import free_port
from gateway.testing.smtpsink import SmtpSink, SmtpSinkError
from gateway.testing.tlsca import CA

pytestmark = [pytest.mark.slow]

IN_CI = os.environ.get("CI", "").lower() == "true"
HOST = "127.0.0.1"
USERS = {"alice": "alice-password", "bob": "bob-password"}
RELAY_USER, RELAY_PASSWORD = "relay-user", "relay-password"
MAX_RECIPIENTS = 3


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if IN_CI:
            pytest.fail(f"{binary} is not installed (Makefile DEB_PACKAGES)", pytrace=False)
        pytest.skip(f"{binary} is not installed")
    return path


def message(
    sender: str = "alice@isp.example",
    to: str = "bob@example.org",
    bcc: str | None = "hidden@example.net",
    message_id: str = "<e2e-1@isp.example>",
    subject: str = "Hello",
    body: str = "Hi there.",
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}"]
    if bcc:
        lines.append(f"Bcc: {bcc}")
    lines += [
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


class Setup:
    """One popgate with submission listeners and a sink per upstream."""

    def __init__(self, tmp_path: Path, ca: CA, sinks: dict[str, SmtpSink]) -> None:
        self.ca = ca
        self.sinks = sinks
        self.submission_port = free_port()  # loopback: AUTH before TLS allowed
        self.strict_port = free_port()  # all interfaces: AUTH only after STARTTLS
        self.implicit_port = free_port()  # submissions, RFC 8314
        self.metrics_port = free_port()
        cert, key = ca.issue(tmp_path / "server-tls", ("localhost", HOST))
        secret = tmp_path / "relay.pass"
        secret.write_text(RELAY_PASSWORD + "\n")
        secret.chmod(0o600)
        closed_pop3 = free_port()
        upstreams = []
        for user, sink in sinks.items():
            upstreams.append(
                {
                    "name": f"{user}-isp",
                    "owner": user,
                    "host": HOST,
                    "port": closed_pop3,
                    "tls": "none",
                    "username": f"{user}@isp.example",
                    "password": "pop3-password",
                    "poll_interval": "1h",
                    "notify": False,
                    "smtp": {
                        "host": "localhost",
                        "port": sink.port,
                        "tls": "starttls",
                        "ca_file": str(ca.cert_path),
                        "username": RELAY_USER,
                        "password_file": str(secret),
                    },
                }
            )
        self.gateway = GatewayProcess(
            tmp_path / "gw",
            users=USERS,
            upstreams=upstreams,
            extra_server={
                "submission": [
                    f"tcp:{self.submission_port}:interface={HOST}",
                    f"tcp:{self.strict_port}:interface=0.0.0.0",
                ],
                "submissions": [f"tcp:{self.implicit_port}:interface={HOST}"],
            },
            tables={
                "tls": {"cert_file": str(cert), "key_file": str(key)},
                "submission": {
                    "max_recipients": MAX_RECIPIENTS,
                    "max_message_size": "100k",
                    "retry_intervals": ["1s"],
                },
                "metrics": {
                    "enabled": True,
                    "listen": f"tcp:{self.metrics_port}:interface={HOST}",
                },
            },
        )

    def start(self) -> Setup:
        self.gateway.start()
        deadline = time.monotonic() + 20
        while True:  # the submission listeners start right after IMAP's
            try:
                smtplib.SMTP(HOST, self.submission_port, timeout=5).quit()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def context(self) -> ssl.SSLContext:
        context = self.ca.client_context()
        context.check_hostname = False
        return context

    def smtp(self, user: str | None = "alice", port: int | None = None) -> smtplib.SMTP:
        client = smtplib.SMTP(HOST, port or self.submission_port, timeout=20)
        client.starttls(context=self.context())
        if user is not None:
            client.login(user, USERS[user])
        return client

    def send(self, user: str, sender: str, recipients: list[str], raw: bytes) -> None:
        with self.smtp(user) as client:
            client.sendmail(sender, recipients, raw)

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4(HOST, self.gateway.port)
        client.login(user, USERS[user])
        return client

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--json"]
            + ["--config", str(self.gateway.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        return json.loads(result.stdout)

    def metrics(self) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.read().decode()


def mailbox(client: imaplib.IMAP4, name: str) -> list[tuple[bytes, bytes]]:
    """(FLAGS, BODY[]) of every message in ``name``."""
    typ, _ = client.select(name)
    assert typ == "OK"
    typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
    out = []
    for item in data:
        if isinstance(item, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
            out.append((flags.group(1) if flags else b"", item[1]))
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def delivered(sink: SmtpSink, count: int, timeout: float = 30.0) -> list[Any]:
    """The sink's first ``count`` messages once all are completely dumped (smtp-sink
    writes a dump file while it receives, so a fresh one may lack its envelope)."""
    return wait_for(
        lambda: (got := sink.messages())
        and len(got) >= count
        and all(m.recipients for m in got)
        and got,
        timeout,
        f"{count} messages at the sink",
    )


@pytest.fixture
def make_sink(tmp_path: Path, tls_ca: CA) -> Iterator[Callable[..., SmtpSink]]:
    made: list[SmtpSink] = []

    def make(**kwargs: Any) -> SmtpSink:
        try:
            sink = SmtpSink(
                tmp_path / f"sink{len(made)}",
                tls_ca,
                users={RELAY_USER: RELAY_PASSWORD},
                **kwargs,
            )
        except SmtpSinkError as e:
            if IN_CI:
                pytest.fail(str(e), pytrace=False)
            pytest.skip(str(e))
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.stop()


@pytest.fixture
def setups() -> Iterator[list[Setup]]:
    running: list[Setup] = []
    yield running
    for setup in running:
        setup.gateway.stop()
        setup.gateway.kill()


def test_sent_once_with_one_sent_copy_and_the_refusals(
    tmp_path: Path, tls_ca: CA, make_sink: Callable[..., SmtpSink], setups: list[Setup]
) -> None:
    sink = make_sink().start()
    setup = Setup(tmp_path, tls_ca, {"alice": sink, "bob": sink}).start()
    setups.append(setup)
    raw = message()
    setup.send("alice", "alice@isp.example", ["bob@example.org", "hidden@example.net"], raw)

    (got,) = delivered(sink, 1)
    assert got.mail_from == "alice@isp.example"
    assert got.recipients == ("bob@example.org", "hidden@example.net")
    assert b"Bcc:" not in got.raw and b"hidden@example.net" not in got.raw
    assert b"Message-ID: <e2e-1@isp.example>" in got.raw

    # one Sent copy, with Bcc and \Seen, visible over IMAP
    imap = setup.imap("alice")
    (copy,) = wait_for(lambda: mailbox(imap, "Sent"), what="the Sent copy")
    flags, body = copy
    assert b"\\Seen" in flags
    assert b"Bcc: hidden@example.net" in body
    # the client's own APPEND of the same message (Thunderbird, iOS) keeps the one copy
    typ, data = imap.append("Sent", "(\\Seen)", None, raw)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    assert len(mailbox(imap, "Sent")) == 1
    typ, data = imap.uid("SEARCH", "ALL")
    assert data[0].split() == [str(uid).encode()]
    # another message APPENDed to Sent is filed as usual
    typ, _ = imap.append("Sent", "(\\Seen)", None, message(message_id="<other@isp.example>"))
    assert typ == "OK" and len(mailbox(imap, "Sent")) == 2
    imap.logout()

    # swaks (STARTTLS) and msmtp (implicit TLS, RFC 8314) as bob
    swaks = subprocess.run(
        [_need("swaks"), "--server", f"{HOST}:{setup.submission_port}", "--tls"]
        + ["--tls-ca-path", str(tls_ca.cert_path), "--auth", "PLAIN"]
        + ["--auth-user", "bob", "--auth-password", USERS["bob"]]
        + ["--from", "bob@isp.example", "--to", "carol@example.org"]
        + ["--header", "From: bob@isp.example", "--header", "Message-Id: <swaks@isp.example>"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "250 2.0.0" in swaks.stdout, swaks.stdout + swaks.stderr
    rc = tmp_path / "msmtprc"
    rc.write_text(
        f"account default\nhost {HOST}\nport {setup.implicit_port}\n"
        f"tls on\ntls_starttls off\ntls_trust_file {tls_ca.cert_path}\n"
        "tls_host_override localhost\nauth plain\nuser bob\n"
        f"password {USERS['bob']}\nfrom bob@isp.example\n"
    )
    rc.chmod(0o600)
    msmtp = subprocess.run(
        [_need("msmtp"), "-C", str(rc), "dave@example.org"],
        input=message(
            sender="bob@isp.example", to="dave@example.org", bcc=None, message_id="<m@b>"
        ),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert msmtp.returncode == 0, msmtp.stderr
    got = delivered(sink, 3)
    assert sorted(m.recipients for m in got[1:]) == [("carol@example.org",), ("dave@example.org",)]

    # refused: no AUTH
    with setup.smtp(None) as client:
        code, text = client.mail("alice@isp.example")
        assert code == 530 and text.startswith(b"5.7.0"), (code, text)
    # refused: AUTH before STARTTLS on a listener reachable from the network
    with smtplib.SMTP(HOST, setup.strict_port, timeout=20) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        token = base64.b64encode(b"\0alice\0" + USERS["alice"].encode()).decode()
        code, text = client.docmd("AUTH", "PLAIN " + token)
        assert code == 538 and text.startswith(b"5.7.11"), (code, text)  # RFC 4954 §6
    with setup.smtp("alice", port=setup.strict_port) as client:  # after STARTTLS: fine
        assert client.noop()[0] == 250
    with setup.smtp("alice") as client:
        # another user's address, and an address of no upstream
        for sender in ("bob@isp.example", "stranger@nowhere.example"):
            code, text = client.mail(sender)
            assert code == 550 and text.startswith(b"5.7.1"), (sender, code, text)
        # a From header that is not hers
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(
                "alice@isp.example", ["x@example.org"], message(sender="bob@isp.example")
            )
        assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
        # too large (declared SIZE), and too large in fact
        code, text = client.mail("alice@isp.example", ["SIZE=200000"])
        assert code == 552 and text.startswith(b"5.3.4"), (code, text)
        client.rset()
        with pytest.raises(smtplib.SMTPException):
            client.sendmail("alice@isp.example", ["x@example.org"], message(body="x" * 150_000))
    with setup.smtp("alice") as client:
        # too many recipients
        assert client.mail("alice@isp.example")[0] == 250
        for i in range(MAX_RECIPIENTS):
            assert client.rcpt(f"r{i}@example.org")[0] == 250
        code, text = client.rcpt("one-too-many@example.org")
        assert code == 452 and text.startswith(b"4.5.3"), (code, text)
        client.rset()
    time.sleep(1)
    assert len(sink.messages()) == 3  # nothing refused went out

    status = setup.status()
    assert set(status["listeners"]["submission"]) >= {
        f"tcp:{setup.submission_port}:interface={HOST}"
    }
    assert status["submission"]["enabled"] is True
    assert all(q["queued"] == 0 for q in status["submission"]["queue"])


def test_the_queue_waits_bounces_and_survives_sigkill(
    tmp_path: Path, tls_ca: CA, make_sink: Callable[..., SmtpSink], setups: list[Setup]
) -> None:
    alice_sink = make_sink()  # not started: alice's provider is down
    bob_sink = make_sink(hard_reject=("RCPT",)).start()  # bob's answers 550
    setup = Setup(tmp_path, tls_ca, {"alice": alice_sink, "bob": bob_sink}).start()
    setups.append(setup)

    setup.send("alice", "alice@isp.example", ["bob@example.org"], message(bcc=None))
    # waits in the queue; status and metrics show it with the last error
    queue = wait_for(
        lambda: [
            q
            for q in setup.status()["submission"]["queue"]
            if q["route"] == "alice-isp" and q["last_error"]
        ],
        what="a failed attempt in the queue",
    )
    assert queue[0]["queued"] == 1 and queue[0]["oldest_age"] >= 0
    metrics = setup.metrics()
    assert 'popgate_outbound_queued_messages{upstream="alice-isp"} 1.0' in metrics
    assert 'popgate_outbound_failing{upstream="alice-isp"} 1.0' in metrics
    text = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--config", str(setup.gateway.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "OUTBOUND VIA" in text and "alice-isp" in text

    # bob's provider refuses the recipient for good: a bounce in bob's INBOX
    setup.send(
        "bob",
        "bob@isp.example",
        ["nobody@example.org"],
        message(sender="bob@isp.example", to="nobody@example.org", bcc=None, message_id="<b@b>"),
    )
    imap = setup.imap("bob")
    (bounce,) = wait_for(lambda: mailbox(imap, "INBOX"), what="the bounce")
    assert b"multipart/report" in bounce[1] and b"nobody@example.org" in bounce[1]
    assert b"\\Seen" not in bounce[0]
    imap.logout()
    assert bob_sink.messages() == []

    # alice's provider is back: delivered once
    alice_sink.start()
    (got,) = delivered(alice_sink, 1)
    assert got.recipients == ("bob@example.org",)
    time.sleep(3)
    assert len(alice_sink.messages()) == 1

    # SIGKILL after the 250 and before any relay: after the restart, relayed exactly once
    alice_sink.stop()
    setup.send("alice", "alice@isp.example", ["carol@example.org"], message(message_id="<k@isp>"))
    setup.gateway.kill()
    alice_sink.start()
    setup.start()
    got = delivered(alice_sink, 2)
    assert [m.recipients for m in got] == [("bob@example.org",), ("carol@example.org",)]
    time.sleep(3)
    assert len(alice_sink.messages()) == 2
    imap = setup.imap("alice")
    assert len(mailbox(imap, "Sent")) == 2  # one Sent copy each
    imap.logout()
    assert all(q["queued"] == 0 for q in setup.status()["submission"]["queue"])
