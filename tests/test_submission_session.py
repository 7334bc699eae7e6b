"""The submission session (gateway/submission/session.py) driven without a reactor: a
recording driver performs each action at once. Every refusal has its enhanced code."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.store.interfaces import StoreError
from gateway.submission.parser import MessageTooLarge
from gateway.submission.policy import (
    RateLimiter,
    SenderPolicy,
    SmtpUpstream,
    SubmissionLimits,
    SubmissionRoute,
)
from gateway.submission.session import (
    Call,
    Close,
    ReadData,
    ReadLine,
    RunBlocking,
    StartTLS,
    Submission,
    SubmissionSession,
)

ROUTES = [
    SubmissionRoute(
        "alice-isp", ("alice@isp.example",), frozenset({"alice"}), SmtpUpstream("smtp")
    ),
    SubmissionRoute("bob-isp", ("bob@isp.example",), frozenset({"bob"}), SmtpUpstream("smtp")),
]
PASSWORDS = {"alice": b"secret", "bob": b"hunter2"}
REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


class Auth:
    def authenticate(self, user: str, password: bytes) -> str | None:
        return user if PASSWORDS.get(user) == password else None


class Driver:
    """Runs commands through a session, performing actions synchronously."""

    def __init__(self, *, tls: bool = False, plaintext: bool = True, **limits: Any) -> None:
        self.accepted: list[Submission] = []
        self.accept_error: Exception | None = None
        self.clock = 1000.0
        self.limits = SubmissionLimits(**limits)
        self.session = SubmissionSession(
            hostname="gw.example",
            policy=SenderPolicy(ROUTES),
            limits=self.limits,
            authenticator=Auth(),
            rate=RateLimiter(self.limits.max_messages_per_hour),
            accept=self._accept,
            now=lambda: self.clock,
            tls_active=tls,
            tls_available=True,
            plaintext_auth_allowed=plaintext,
        )
        self.actions: list[object] = []

    def _accept(self, submission: Submission) -> int:
        if self.accept_error is not None:
            raise self.accept_error
        self.accepted.append(submission)
        return len(self.accepted)

    def send(self, line: bytes, more: Iterable[Any] = ()) -> bytes:
        pending = list(more)
        run = self.session.execute(line)
        out = b""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                item = run.throw(error) if error is not None else run.send(value)
            except StopIteration:
                return out
            value, error = None, None
            if isinstance(item, bytes):
                out += item
                continue
            self.actions.append(item)
            if isinstance(item, RunBlocking):
                value = item.call()
            elif isinstance(item, Call):
                try:
                    value = item.fn(*item.args)
                except Exception as e:
                    error = e
            elif isinstance(item, ReadLine | ReadData):
                value = pending.pop(0)

    def login(self, user: str = "alice") -> None:
        self.send(b"EHLO client.example")
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + PASSWORDS[user])
        assert self.send(b"AUTH PLAIN " + token).startswith(b"235 2.7.0")


def code(out: bytes) -> tuple[str, str]:
    """(basic code, enhanced code) of the last reply line."""
    last = out.rstrip(b"\r\n").split(b"\r\n")[-1].decode()
    parts = last.split(" ")
    return parts[0], parts[1]


MSG = b"From: alice@isp.example\r\nTo: bob@x.example\r\nBcc: hidden@y.example\r\nSubject: hi\r\n\r\nbody\r\n"


def test_greeting_and_ehlo_advertise_the_extensions() -> None:
    d = Driver(plaintext=False)
    assert d.session.greeting() == b"220 gw.example ESMTP popgate submission\r\n"
    out = d.send(b"EHLO client.example")
    assert out.split(b"\r\n")[:-1] == [
        b"250-gw.example",
        b"250-SIZE 36700160",
        b"250-8BITMIME",
        b"250-PIPELINING",
        b"250-ENHANCEDSTATUSCODES",
        b"250 STARTTLS",
    ]  # no AUTH before TLS off loopback, no SMTPUTF8
    out = Driver(tls=True, plaintext=False).send(b"EHLO c")
    assert b"250 AUTH PLAIN LOGIN\r\n" in out and b"STARTTLS" not in out


def test_no_mail_without_auth() -> None:
    d = Driver()
    d.send(b"EHLO c")
    assert code(d.send(b"MAIL FROM:<alice@isp.example>")) == ("530", "5.7.0")


def test_auth_before_starttls_off_loopback_is_refused() -> None:
    d = Driver(plaintext=False)
    d.send(b"EHLO c")
    token = base64.b64encode(b"\0alice\0secret")
    assert code(d.send(b"AUTH PLAIN " + token)) == ("538", "5.7.11")
    assert not [a for a in d.actions if isinstance(a, RunBlocking)]  # password never checked


def test_starttls_then_auth_and_state_is_forgotten() -> None:
    d = Driver(plaintext=False)
    d.send(b"EHLO c")
    assert d.send(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
    assert isinstance(d.actions[-1], StartTLS)
    assert code(d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==")) == ("503", "5.5.1")  # EHLO again
    d.send(b"EHLO c")
    assert code(d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==")) == ("235", "2.7.0")
    assert code(d.send(b"STARTTLS")) == ("503", "5.5.1")


def test_auth_plain_login_failure_cancel_and_syntax() -> None:
    d = Driver()
    d.send(b"EHLO c")
    assert code(d.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong"))) == ("535", "5.7.8")
    assert code(d.send(b"AUTH PLAIN", [b"*"])) == ("501", "5.0.0")
    assert code(d.send(b"AUTH PLAIN !!!")) == ("501", "5.5.2")
    assert code(d.send(b"AUTH PLAIN " + base64.b64encode(b"bob\0alice\0secret"))) == (
        "535",
        "5.7.8",
    )  # acting as another user
    assert code(d.send(b"AUTH CRAM-MD5")) == ("504", "5.5.4")
    out = d.send(b"AUTH LOGIN", [base64.b64encode(b"alice"), base64.b64encode(b"secret")])
    assert out.startswith(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0")
    assert code(d.send(b"AUTH PLAIN =")) == ("503", "5.5.1")  # already authenticated


def test_a_message_is_accepted_after_commit_with_bcc_only_in_the_sent_source() -> None:
    d = Driver()
    d.login()
    assert code(d.send(b"MAIL FROM:<alice@isp.example> SIZE=100 BODY=8BITMIME")) == ("250", "2.1.0")
    assert code(d.send(b"RCPT TO:<bob@x.example>")) == ("250", "2.1.5")
    assert code(d.send(b"RCPT TO:<hidden@y.example>")) == ("250", "2.1.5")
    out = d.send(b"DATA", [MSG])
    assert out.startswith(b"354 ") and code(out) == ("250", "2.0.0")
    assert out.endswith(b"queued as 1\r\n")
    (sub,) = d.accepted
    assert sub.route == "alice-isp" and sub.mail_from == "alice@isp.example"
    assert sub.recipients == ("bob@x.example", "hidden@y.example")
    assert b"Bcc: hidden@y.example" in sub.raw and b"Bcc" not in sub.relay
    assert sub.message_id and sub.raw.endswith(MSG) and sub.eight_bit


def test_refusals_have_their_codes() -> None:
    d = Driver(max_message_size=200, max_recipients=2)
    d.login()
    assert code(d.send(b"MAIL FROM:<bob@isp.example>")) == ("550", "5.7.1")
    assert code(d.send(b"MAIL FROM:<nobody@nowhere.example>")) == ("550", "5.7.1")
    assert code(d.send(b"MAIL FROM:<alice@isp.example> SIZE=201")) == ("552", "5.3.4")
    assert code(d.send(b"MAIL FROM:<alice@isp.example> SMTPUTF8")) == ("555", "5.5.4")
    assert code(d.send(b"RCPT TO:<x@y.example>")) == ("503", "5.5.1")
    assert code(d.send(b"DATA")) == ("503", "5.5.1")
    d.send(b"MAIL FROM:<alice@isp.example>")
    assert code(d.send(b"MAIL FROM:<alice@isp.example>")) == ("503", "5.5.1")
    assert code(d.send(b"DATA")) == ("554", "5.5.1")
    assert code(d.send(b"RCPT TO:<not an address>")) == ("553", "5.1.3")
    assert code(d.send("RCPT TO:<bø@y.example>".encode())) == ("553", "5.1.3")
    d.send(b"RCPT TO:<a@y.example>")
    d.send(b"RCPT TO:<b@y.example>")
    assert code(d.send(b"RCPT TO:<c@y.example>")) == ("452", "4.5.3")
    assert code(d.send(b"DATA", [MessageTooLarge(500)])) == ("552", "5.3.4")
    d.send(b"MAIL FROM:<alice@isp.example>")
    d.send(b"RCPT TO:<a@y.example>")
    forged = MSG.replace(b"From: alice@isp.example", b"From: bob@isp.example")
    out = d.send(b"DATA", [forged])
    assert code(out) == ("550", "5.7.1") and b"allowed: alice@isp.example" in out
    assert d.accepted == []
    assert code(d.send(b"VRFY bob")) == ("502", "5.5.1")
    assert code(d.send(b"FOO")) == ("500", "5.5.2")
    assert code(d.send(b"RSET")) == ("250", "2.0.0")
    assert code(d.send(b"NOOP")) == ("250", "2.0.0")


def test_store_failure_is_a_temporary_refusal_and_nothing_counts() -> None:
    d = Driver(max_messages_per_hour=1)
    d.login()
    d.accept_error = StoreError("disk full")
    d.send(b"MAIL FROM:<alice@isp.example>")
    d.send(b"RCPT TO:<a@y.example>")
    assert code(d.send(b"DATA", [MSG])) == ("451", "4.3.0")
    d.accept_error = None
    d.send(b"MAIL FROM:<alice@isp.example>")
    d.send(b"RCPT TO:<a@y.example>")
    assert code(d.send(b"DATA", [MSG])) == ("250", "2.0.0")


def test_rate_limit_refuses_the_next_message_of_the_hour() -> None:
    d = Driver(max_messages_per_hour=1)
    d.login()
    d.send(b"MAIL FROM:<alice@isp.example>")
    d.send(b"RCPT TO:<a@y.example>")
    assert code(d.send(b"DATA", [MSG])) == ("250", "2.0.0")
    assert code(d.send(b"MAIL FROM:<alice@isp.example>")) == ("450", "4.7.0")
    d.clock += 3600
    assert code(d.send(b"MAIL FROM:<alice@isp.example>")) == ("250", "2.1.0")


def test_quit_and_too_many_errors_close() -> None:
    d = Driver(max_failed_commands=3)
    out = d.send(b"QUIT")
    assert out == b"221 2.0.0 Bye\r\n" and isinstance(d.actions[-1], Close)
    d = Driver(max_failed_commands=3)
    d.send(b"X")
    d.send(b"Y")
    assert code(d.send(b"Z")) == ("421", "4.7.0") and isinstance(d.actions[-1], Close)


@pytest.mark.parametrize(
    "line",
    [b"EHLO", b"MAIL FROM:<a@b.example>", b"RCPT TO:<a@b.example>", b"DATA x", b"STARTTLS x"],
)
def test_every_reply_carries_an_enhanced_code(line: bytes) -> None:
    out = Driver().send(line)
    for reply in out.rstrip(b"\r\n").split(b"\r\n"):
        match = REPLY.match(reply)
        assert match, reply
        assert re.match(rb"^[245]\.\d+\.\d+ ", match.group(3)), reply
