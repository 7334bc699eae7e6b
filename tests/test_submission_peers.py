"""The submission relay end to end with real peers: swaks, msmtp and Python's smtplib
submit to popgate's server (in process, on the reactor thread); popgate relays to
Postfix's smtp-sink behind a STARTTLS + AUTH front from the test CA
(gateway/testing/smtpsink.py). In CI (CI=true) a missing binary fails; elsewhere it skips.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.store.queue import FAILED, QUEUED, SENT
from gateway.store.sqlite_queue import SQLiteOutboundQueue
from gateway.submission.relay import RelayService
from gateway.testing.smtpsink import SmtpSink, SmtpSinkError
from gateway.testing.submission import (
    HOST,
    RETRY,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    USERS,
    SubmissionGateway,
    message,
    on_reactor,
    reactor,
    running_gateway,
    upstream_for,
)
from gateway.testing.tlsca import CA

pytestmark = [pytest.mark.slow]

IN_CI = os.environ.get("CI", "").lower() == "true"


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if IN_CI:
            pytest.fail(f"{binary} is not installed (Makefile DEB_PACKAGES)", pytrace=False)
        pytest.skip(f"{binary} is not installed")
    return path


@pytest.fixture
def sink_factory(tmp_path: Path, tls_ca: CA) -> Iterator[Callable[..., SmtpSink]]:
    started: list[SmtpSink] = []

    def start(**kwargs: object) -> SmtpSink:
        try:
            sink = SmtpSink(
                tmp_path / f"sink{len(started)}",
                tls_ca,
                users={UPSTREAM_USER: UPSTREAM_PASSWORD},
                **kwargs,  # type: ignore[arg-type]
            )
        except SmtpSinkError as e:
            if IN_CI:
                pytest.fail(str(e), pytrace=False)
            pytest.skip(str(e))
        started.append(sink)
        return sink.start()

    yield start
    for sink in started:
        sink.stop()


def _context(ca: CA) -> ssl.SSLContext:
    context = ca.client_context()
    context.check_hostname = False
    return context


def swaks(gw: SubmissionGateway, ca: CA, *args: str, port: int | None = None) -> str:
    binary = _need("swaks")
    result = subprocess.run(
        [
            binary,
            "--server",
            f"{HOST}:{port or gw.port}",
            "--tls",
            "--tls-ca-path",
            str(ca.cert_path),
            "--ehlo",
            "client.test",
            "--timeout",
            "20",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


def test_swaks_message_reaches_the_sink_with_its_envelope_and_without_bcc(
    tmp_path: Path, tls_ca: CA, sink_factory: Callable[..., SmtpSink]
) -> None:
    sink = sink_factory()
    with running_gateway(tmp_path, tls_ca, upstream_for(sink.port, tls_ca)) as gw:
        out = swaks(
            gw,
            tls_ca,
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            USERS["alice"],
            "--from",
            "alice@isp.example",
            "--to",
            "bob@example.org,hidden@example.net",
            "--header",
            "From: Alice <alice@isp.example>",
            "--header",
            "To: bob@example.org",
            "--header",
            "Bcc: hidden@example.net",
            "--header",
            "Message-Id: <swaks-1@isp.example>",
        )
        assert "<~  250 2.0.0 Ok: queued as 1" in out, out
        item = gw.wait_state(1, SENT)
        assert item.last_reply is not None and item.last_reply.startswith("250 2.0.0")
        (got,) = sink.wait_for_messages(1)
        assert got.mail_from == "alice@isp.example"
        assert "SIZE=" in got.mail_args
        assert got.recipients == ("bob@example.org", "hidden@example.net")
        assert b"\r\nBcc:" not in got.raw and not got.raw.startswith(b"Bcc:")
        assert b"Message-Id: <swaks-1@isp.example>" in got.raw
        # the relay used STARTTLS and logged in as the upstream account, once
        assert sink.front.log.logins == [(UPSTREAM_USER, True)] and sink.front.log.tls == [True]
        ((user, copy),) = gw.sent
        assert user == "alice" and copy.flags == ("\\Seen",)
        assert b"Bcc: hidden@example.net" in copy.raw
        # a second pass sends nothing again
        on_reactor(gw.relay.kick)
        assert len(sink.messages()) == 1


def test_msmtp_over_implicit_tls_and_smtplib_with_starttls(
    tmp_path: Path, tls_ca: CA, sink_factory: Callable[..., SmtpSink]
) -> None:
    binary = _need("msmtp")
    sink = sink_factory(mode="implicit")
    with running_gateway(tmp_path, tls_ca, upstream_for(sink.port, tls_ca, "implicit")) as gw:
        config = tmp_path / "msmtprc"
        config.write_text(
            "account default\n"
            f"host {HOST}\nport {gw.implicit_port}\n"
            "tls on\ntls_starttls off\n"
            f"tls_trust_file {tls_ca.cert_path}\n"
            "tls_host_override localhost\n"
            "auth plain\nuser bob\n"
            f"password {USERS['bob']}\n"
            "from bob@isp.example\n"
        )
        config.chmod(0o600)
        result = subprocess.run(
            [binary, "-C", str(config), "carol@example.org"],
            input=message(sender="bob@isp.example", to="carol@example.org", bcc=None),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        with smtplib.SMTP(HOST, gw.port, timeout=20) as smtp:
            smtp.starttls(context=_context(tls_ca))
            smtp.login("alice", USERS["alice"])
            smtp.sendmail(
                "family@home.example",
                ["dave@example.org"],
                message(sender="family@home.example", to="dave@example.org", bcc=None),
            )
        gw.wait_state(1, SENT)
        gw.wait_state(2, SENT)
        got = sorted(sink.wait_for_messages(2), key=lambda m: m.mail_from)
        assert [(m.mail_from, m.recipients) for m in got] == [
            ("bob@isp.example", ("carol@example.org",)),
            ("family@home.example", ("dave@example.org",)),
        ]


def test_the_queue_waits_while_the_sink_is_down_and_delivers_once(
    tmp_path: Path, tls_ca: CA, sink_factory: Callable[..., SmtpSink]
) -> None:
    sink = sink_factory()
    sink.stop()
    with running_gateway(tmp_path, tls_ca, upstream_for(sink.port, tls_ca)) as gw:
        with smtplib.SMTP(HOST, gw.port, timeout=20) as smtp:
            smtp.login("alice", USERS["alice"])
            smtp.sendmail("alice@isp.example", ["bob@example.org"], message(bcc=None))
        gw.wait(lambda: gw.call(gw.queue.get, 1).attempts >= 2)
        item = gw.call(gw.queue.get, 1)
        assert item.state == QUEUED and "refused the connection" in (item.last_error or "")
        (status,) = gw.call(gw.queue.status)
        assert status.route == "alice-isp" and status.queued == 1 and status.last_error
        sink.start()
        gw.wait_state(1, SENT)
        on_reactor(gw.relay.kick)
        assert len(sink.wait_for_messages(1)) == 1
        assert gw.call(gw.queue.status) == []


def test_a_550_from_the_sink_produces_a_bounce(
    tmp_path: Path, tls_ca: CA, sink_factory: Callable[..., SmtpSink]
) -> None:
    sink = sink_factory(hard_reject=("RCPT",))
    with running_gateway(tmp_path, tls_ca, upstream_for(sink.port, tls_ca)) as gw:
        with smtplib.SMTP(HOST, gw.port, timeout=20) as smtp:
            smtp.login("alice", USERS["alice"])
            smtp.sendmail("alice@isp.example", ["nobody@example.org"], message(bcc=None))
        item = gw.wait_state(1, FAILED)
        gw.wait(lambda: bool(gw.bounces))
        assert gw.call(gw.queue.get, 1).bounced and item.last_error
        ((user, report),) = gw.bounces
        assert user == "alice"
        parsed = email.message_from_bytes(report, policy=email.policy.compat32)
        assert parsed.get_content_type() == "multipart/report"
        status = parsed.get_payload()[1].get_payload()[1]
        assert status["Final-Recipient"] == "rfc822; nobody@example.org"
        assert status["Status"].startswith("5.") and status["Diagnostic-Code"].startswith("smtp; 5")
        assert b"Subject: Hello" in report
        assert sink.messages() == []


def test_restart_after_commit_relays_exactly_once(
    tmp_path: Path, tls_ca: CA, sink_factory: Callable[..., SmtpSink]
) -> None:
    """The 250 goes out after the commit; a gateway that dies before relaying loses
    nothing: a new process (here a new queue connection and relay service on the same
    file) relays it once. The SIGKILL version runs at integration, with popgate itself."""
    sink = sink_factory()
    upstream = upstream_for(sink.port, tls_ca)
    with running_gateway(tmp_path, tls_ca, upstream, relay_running=False) as gw:
        with smtplib.SMTP(HOST, gw.port, timeout=20) as smtp:
            smtp.login("alice", USERS["alice"])
            smtp.sendmail("alice@isp.example", ["bob@example.org"], message(bcc=None))
    assert sink.messages() == []

    def restart() -> RelayService:
        queue = SQLiteOutboundQueue(tmp_path / "queue.sqlite")
        relay = RelayService(
            queue,
            lambda name: upstream,
            reactor=reactor,
            file_bounce=lambda user, raw: None,
            hostname="gw.test",
            schedule=RETRY,
        )
        return relay

    relay = on_reactor(restart)
    on_reactor(relay.kick)
    on_reactor(relay.kick)
    assert on_reactor(lambda: relay.queue.get(1)).state == SENT
    assert len(sink.wait_for_messages(1)) == 1
    on_reactor(lambda: relay.queue.close())  # type: ignore[attr-defined]
