"""POP3 SASL for OAuth (gateway.pop3.sasl, connect, client) and RFC 2449/3206 response
codes, against the fake upstream over real sockets: Microsoft's two-step AUTH, the JSON
error continuation, [IN-USE], [SYS/TEMP], [SYS/PERM], [AUTH]."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from twisted.internet import reactor as global_reactor

from gateway.oauth.settings import PROVIDERS, OAuth2Settings
from gateway.pop3.errors import FetchError, response_code
from gateway.pop3.fetcher import FetchResult, fetch_once
from gateway.pop3.sasl import (
    MAX_COMMAND_LINE,
    MechanismUnavailable,
    SaslExchange,
    choose_mechanism,
    oauthbearer_response,
    parse_error_challenge,
    xoauth2_response,
)
from gateway.pop3.upstream import Upstream
from gateway.store.memory import MemoryStore
from gateway.testing import samplemail
from gateway.testing.fakepop3 import FakePOP3Server, Faults
from gateway.testing.reactor_thread import ReactorThread

USER = "alice@outlook.example"
SHORT_TOKEN = "tok-short"
LONG_TOKEN = "EwB" + "x" * 1800  # Microsoft's access tokens are ~2 KB

# ---- pure ---------------------------------------------------------------------------------


def test_xoauth2_initial_response_is_the_documented_form() -> None:
    assert xoauth2_response("a@b", "T") == b"user=a@b\x01auth=Bearer T\x01\x01"


def test_oauthbearer_initial_response_follows_rfc7628_with_escaped_authzid() -> None:
    raw = oauthbearer_response("a,b=c@x", "T", "pop.example", 995)
    assert raw == b"n,a=a=2Cb=3Dc@x,\x01host=pop.example\x01port=995\x01auth=Bearer T\x01\x01"


@pytest.mark.parametrize(
    ("setting", "offered", "expected"),
    [
        ("auto", [b"PLAIN", b"XOAUTH2", b"OAUTHBEARER"], "OAUTHBEARER"),
        ("auto", [b"PLAIN", b"XOAUTH2"], "XOAUTH2"),
        ("auto", None, "XOAUTH2"),
        ("xoauth2", [b"xoauth2", b"OAUTHBEARER"], "XOAUTH2"),
        ("oauthbearer", None, "OAUTHBEARER"),
    ],
)
def test_mechanism_choice_from_capa_sasl(setting: str, offered: Any, expected: str) -> None:
    assert choose_mechanism(setting, offered) == expected


def test_a_mechanism_the_server_does_not_list_is_refused_before_sending_a_token() -> None:
    with pytest.raises(MechanismUnavailable):
        choose_mechanism("oauthbearer", [b"PLAIN", b"XOAUTH2"])
    with pytest.raises(MechanismUnavailable):
        choose_mechanism("auto", [b"PLAIN"])


def test_short_initial_response_goes_on_the_auth_line_long_one_after_the_continuation() -> None:
    short = SaslExchange("XOAUTH2", xoauth2_response(USER, SHORT_TOKEN))
    assert short.inline and short.arguments.startswith(b"XOAUTH2 ")
    assert len(b"AUTH " + short.arguments + b"\r\n") <= MAX_COMMAND_LINE
    long = SaslExchange("XOAUTH2", xoauth2_response(USER, LONG_TOKEN))
    assert not long.inline and long.arguments == b"XOAUTH2"
    assert base64.b64decode(long.respond(b"")) == xoauth2_response(USER, LONG_TOKEN)


def test_error_continuation_is_answered_per_mechanism_and_remembered() -> None:
    error = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer"}).encode())
    x = SaslExchange("XOAUTH2", b"r", inline=True)
    assert x.respond(error) == b""
    assert x.error == {"status": "401", "schemes": "bearer"}
    assert x.respond(error) == b"*"  # anything more is cancelled (RFC 5034 §4)
    o = SaslExchange("OAUTHBEARER", b"r", inline=True)
    assert base64.b64decode(o.respond(error)) == b"\x01"  # RFC 7628 §3.2.3


def test_unreadable_error_continuation_is_still_answered() -> None:
    assert parse_error_challenge(b"!!!") == {"status": "unreadable"}
    assert repr(SaslExchange("XOAUTH2", xoauth2_response(USER, "SECRET"))).count("SECRET") == 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (b"[IN-USE] locked", "IN-USE"),
        (b"[SYS/TEMP] try later", "SYS/TEMP"),
        (b"[sys/perm] disabled", "SYS/PERM"),
        (b"[AUTH] bad", "AUTH"),
        (b"no code here", None),
        (b"[] empty", None),
    ],
)
def test_response_codes_are_read_from_err_text(text: bytes, code: str | None) -> None:
    assert response_code(text) == code


# ---- against the fake upstream ----------------------------------------------------------


@pytest.fixture(scope="module")
def rt() -> ReactorThread:
    return ReactorThread.shared(global_reactor)


class Peer:
    def __init__(self, rt: ReactorThread, **server_kw: Any) -> None:
        self.rt = rt
        server_kw.setdefault("sasl", ("PLAIN", "XOAUTH2", "OAUTHBEARER"))
        self.server = FakePOP3Server(USER, "unused", **server_kw)
        self.server.bearer_tokens = {SHORT_TOKEN, LONG_TOKEN}
        self.store = MemoryStore()
        self.port = rt.call(self.server.listen, global_reactor)

    def upstream(self, token: str, mechanism: str = "auto", **kw: Any) -> Upstream:
        settings = OAuth2Settings(
            provider="microsoft",
            client_id="cid",
            mechanism=mechanism,
            **vars(PROVIDERS["microsoft"]),
        )
        return Upstream(
            name="outlook",
            owner="alice",
            host="127.0.0.1",
            port=self.port.getHost().port,
            tls="none",
            username=USER,
            password=token,
            auth="oauth2",
            oauth2=settings,
            timeout=10.0,
            **kw,
        )

    def fetch(self, token: str, mechanism: str = "auto") -> FetchResult:
        try:
            return self.rt.call(
                fetch_once, self.upstream(token, mechanism), self.store, reactor=global_reactor
            )
        finally:
            self.rt.call(self.server.when_idle)

    def fetch_error(self, token: str, mechanism: str = "auto") -> FetchError:
        with pytest.raises(FetchError) as info:
            self.fetch(token, mechanism)
        return info.value

    def auth_commands(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(c.verb, c.args) for c in self.server.commands if c.verb.startswith("AUTH")]


@pytest.fixture
def peer(rt: ReactorThread) -> Iterator[Any]:
    made: list[Peer] = []

    def make(**kw: Any) -> Peer:
        made.append(Peer(rt, **kw))
        return made[-1]

    yield make
    for p in made:
        rt.call(p.port.stopListening)


def test_microsoft_two_step_auth_with_a_long_token_fetches(peer) -> None:
    p = peer(messages=samplemail.generate(3, 7), sasl=("PLAIN", "XOAUTH2"))
    p.server.oauth_two_step_only = True
    result = p.fetch(LONG_TOKEN)
    assert result.fetched == 3
    # AUTH XOAUTH2 alone, then the response line after the "+ " continuation
    assert [verb for verb, _ in p.auth_commands()] == ["AUTH", "AUTH-RESPONSE"]
    assert p.server.oauth_logins == [(USER, LONG_TOKEN)]


def test_short_token_rides_on_the_auth_line_when_the_server_allows(peer) -> None:
    p = peer(messages=samplemail.generate(1, 8))
    assert p.fetch(SHORT_TOKEN, "xoauth2").fetched == 1
    assert [verb for verb, _ in p.auth_commands()] == ["AUTH"]


def test_oauthbearer_is_chosen_when_offered(peer) -> None:
    p = peer(messages=samplemail.generate(1, 9))
    assert p.fetch(LONG_TOKEN).fetched == 1
    assert p.server.oauth_logins == [(USER, LONG_TOKEN)]


def test_json_error_continuation_is_answered_and_reported_as_auth(peer) -> None:
    p = peer()
    with structlog.testing.capture_logs() as logs:
        error = p.fetch_error("dead-token", "xoauth2")
    assert error.kind == "auth"
    assert "status=401" in str(error)
    assert p.server.sasl_error_answers == [b""]  # the empty response, then -ERR [AUTH]
    events = [e for e in logs if e["event"] == "pop3.sasl_error"]
    assert events and events[0]["status"] == "401" and events[0]["mechanism"] == "XOAUTH2"
    assert not any("dead-token" in repr(e) for e in logs)


def test_in_use_is_a_temporary_failure_with_its_own_event_not_an_auth_failure(peer) -> None:
    p = peer(faults=Faults(login_error=b"[IN-USE] maildrop locked by another session"))
    with structlog.testing.capture_logs() as logs:
        error = p.fetch_error(SHORT_TOKEN)
    assert error.kind == "in_use"
    assert any(e["event"] == "pop3.in_use" for e in logs)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (b"[SYS/TEMP] backend unavailable", "sys_temp"),
        (b"[SYS/PERM] account disabled", "sys_perm"),
        (b"[LOGIN-DELAY] wait", "login_delay"),
        (b"[AUTH] no", "auth"),
    ],
)
def test_response_codes_at_login_are_told_apart(peer, text: bytes, kind: str) -> None:
    p = peer(faults=Faults(login_error=text))
    assert p.fetch_error(SHORT_TOKEN).kind == kind


def test_password_login_codes_are_told_apart_too(peer) -> None:
    p = peer(faults=Faults(login_error=b"[SYS/TEMP] later"))
    up = p.upstream("unused")
    plain = Upstream(**{**vars(up), "auth": "user", "oauth2": None})
    with pytest.raises(FetchError) as info:
        p.rt.call(fetch_once, plain, p.store, reactor=global_reactor)
    assert info.value.kind == "sys_temp"


def test_capa_login_delay_is_reported_in_the_result(peer) -> None:
    p = peer(faults=Faults(login_delay=30))
    assert p.fetch(SHORT_TOKEN).login_delay == 30.0


def test_a_token_is_needed_before_connecting(peer, tmp_path: Path) -> None:
    """with_oauth_token: a missing token file fails the pass as auth, with no connection."""
    from gateway.oauth.refresh import TokenSource
    from gateway.pop3.credentials import with_oauth_token

    p = peer()
    up = p.upstream("")
    source = TokenSource("outlook", up.oauth2, tmp_path / "none.json", reactor=global_reactor)
    fetch = with_oauth_token(fetch_once, source)
    with pytest.raises(FetchError) as info:
        p.rt.call(lambda: fetch(up, p.store, reactor=global_reactor))
    assert info.value.kind == "auth"
    assert "popgate oauth login outlook" in str(info.value)
    assert p.server.sessions == 0
    assert isinstance(info.value.result, FetchResult)
