"""Issue 16's sending actions end to end: a real ``popgate serve`` fetching from a real
Dovecot over POP3, the owner's script with ``vacation`` and ``redirect``, and Postfix's
smtp-sink (behind the STARTTLS + AUTH front) as the upstream's SMTP server.

What this proves: a message matching the vacation rule produces exactly one reply at the
sink, with ``MAIL FROM:<>`` and ``Auto-Submitted: auto-replied``; a second message from
the same sender within ``:days`` produces none; a redirect arrives with the owner's
address as envelope sender and the redirect address as recipient; an owner without
``[upstreams.smtp]`` cannot upload such a script (the CLI names why).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import control
from gateway.cli.main import main
from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.smtpsink import SmtpSink, SmtpSinkError
from gateway.testing.tlsca import CA
from tests.test_submission_e2e import IN_CI, delivered

pytestmark = pytest.mark.slow

USER, PASSWORD = "alice", "alice-password"
ME = "alice@isp.example"
RELAY_USER, RELAY_PASSWORD = "relay-user", "relay-password"

SCRIPT = """require ["vacation", "copy"];
if header :contains "subject" "forward me" {
  redirect "fwd@elsewhere.example";
  stop;
}
vacation :days 3 :subject "Away until Monday" "I am away; back on Monday.";
"""


def message(sender: str, subject: str, n: int) -> bytes:
    return (
        f"Return-Path: <{sender}>\r\nFrom: {sender}\r\nTo: {ME}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{n}@e2e.example>\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:0{n} +0000\r\n\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def sink(tmp_path: Path, tls_ca: CA) -> Iterator[SmtpSink]:
    try:
        made = SmtpSink(tmp_path / "sink", tls_ca, users={RELAY_USER: RELAY_PASSWORD})
    except SmtpSinkError as e:
        if IN_CI:
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))
    made.start()
    yield made
    made.stop()


def fetch(gw: GatewayProcess) -> None:
    answer = control.request(str(gw.state_dir), {"command": "fetch"}, timeout=60)
    assert answer["ok"], answer


def test_vacation_replies_once_and_redirect_arrives_with_its_envelope(
    dovecot: Dovecot, sink: SmtpSink, tls_ca: CA, tmp_path: Path
) -> None:
    secret = tmp_path / "relay.pass"
    secret.write_text(RELAY_PASSWORD + "\n")
    secret.chmod(0o600)
    upstream = {
        "name": "isp",
        "owner": USER,
        "host": "127.0.0.1",
        "port": dovecot.pop3_port,
        "tls": "none",
        "username": "alice",
        "password": "secret",
        "poll_interval": "1h",
        "timeout": "20s",
        "addresses": [ME],
        "smtp": {
            "host": "localhost",
            "port": sink.port,
            "tls": "starttls",
            "ca_file": str(tls_ca.cert_path),
            "username": RELAY_USER,
            "password_file": str(secret),
        },
    }
    script = tmp_path / "away.sieve"
    script.write_text(SCRIPT)
    with GatewayProcess(
        tmp_path / "gw",
        users={USER: PASSWORD, "bob": "bob-password"},
        upstreams=[upstream],
        tables={"submission": {"retry_intervals": ["1s"]}},
    ) as gw:
        gw.wait_for_event("pop3.fetched")  # the first (empty) pass at startup
        cfg = str(gw.config_path)
        # bob has no upstream that can send: his upload is refused, naming why
        assert main(["sieve", "put", "-c", cfg, "bob", "away", str(script)]) == 1
        assert main(["sieve", "put", "-c", cfg, USER, "away", str(script), "--activate"]) == 0

        dovecot.deliver("alice", message("carol@example.org", "hello", 1))
        dovecot.deliver("alice", message("dave@example.org", "please forward me", 2))
        fetch(gw)
        first = delivered(sink, 2)
        by_rcpt = {m.recipients: m for m in first}
        reply = by_rcpt[("carol@example.org",)]
        assert reply.mail_from == ""  # RFC 5230 §5: MAIL FROM:<>
        assert b"Auto-Submitted: auto-replied\r\n" in reply.raw
        assert b"In-Reply-To: <1@e2e.example>\r\n" in reply.raw
        assert b"Subject: Away until Monday\r\n" in reply.raw
        assert f"From: {ME}\r\n".encode() in reply.raw
        redirected = by_rcpt[("fwd@elsewhere.example",)]
        assert redirected.mail_from == ME
        assert b"Subject: please forward me\r\n" in redirected.raw
        assert b"X-Sieve-Redirected-From: <alice@isp.example>\r\n" in redirected.raw

        # the same sender again within :days: no second reply
        dovecot.deliver("alice", message("carol@example.org", "hello again", 3))
        fetch(gw)
        gw.wait_for_event("pop3.fetched")
        time.sleep(3)  # the relay is kicked at once; give it time to (wrongly) send
        assert len(sink.messages()) == 2
        events = [e for e in gw.events() if e.get("event") == "sieve.vacation_not_sent"]
        assert any(e.get("reason") == "already_replied" for e in events), events
