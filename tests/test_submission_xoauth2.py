"""SASL XOAUTH2 to an upstream SMTP server (an ``auth = "oauth2"`` upstream sends with its
access token, as Gmail and Outlook.com require), and the service's token injection."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from twisted.internet.defer import ensureDeferred, succeed

from gateway.app.sending import with_oauth_tokens
from gateway.submission.client import RelayOutcome, relay_message
from gateway.submission.policy import SmtpUpstream
from gateway.testing.submission import on_reactor, reactor
from tests.test_submission_client import default, server  # noqa: F401 (fixture)

UPSTREAM = SmtpUpstream(
    host="127.0.0.1",
    port=0,
    tls="none",
    username="alice@outlook.example",
    timeout=5,
    mechanism="xoauth2",
)


def send(upstream: SmtpUpstream, deliver: Any = relay_message) -> RelayOutcome:
    return on_reactor(
        lambda: ensureDeferred(
            deliver(
                upstream,
                mail_from="alice@outlook.example",
                recipients=("bob@example.org",),
                content=b"Subject: x\r\n\r\nhi\r\n",
                reactor=reactor,
                helo_name="gw.test",
            )
        )
    )


class Tokens:
    def access_token(self) -> Any:
        return succeed("the-token")


def test_the_token_is_put_in_and_sent_with_xoauth2(server) -> None:  # noqa: F811
    s = server(
        ehlo=["AUTH PLAIN XOAUTH2"],
        answer=lambda c: b"235 2.7.0 ok\r\n" if c.startswith(b"AUTH") else default(c),
    )
    deliver = with_oauth_tokens(relay_message, {("alice@outlook.example", "127.0.0.1"): Tokens()})
    out = send(replace(UPSTREAM, port=s.port), deliver)
    assert out.reply is not None, out
    s.thread.join(5)
    (auth,) = [line for line in s.received if line.startswith(b"AUTH")]
    decoded = base64.b64decode(auth.split()[2])
    assert decoded == b"user=alice@outlook.example\x01auth=Bearer the-token\x01\x01"


def test_a_refused_token_is_a_temporary_failure(server) -> None:  # noqa: F811
    def answer(cmd: bytes) -> bytes | None:
        if cmd.startswith(b"AUTH XOAUTH2"):
            return b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n"
        if cmd == b"":
            return b"535 5.7.8 Username and Password not accepted\r\n"
        return default(cmd)

    s = server(ehlo=["AUTH XOAUTH2"], answer=answer)
    out = send(replace(UPSTREAM, port=s.port, password="stale"))
    assert out.reply is None and not out.permanent
    assert "refused AUTH XOAUTH2" in (out.error or "")
