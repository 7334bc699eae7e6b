"""The OAuth client over real HTTP(S) sockets (treq) against the test authorization server
(gateway.testing.oauthserver): device login, refresh with rotation, invalid_grant, TLS
verified against ``ca_file``, plain http refused off loopback; and the ``popgate oauth``
commands' status and logout."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor

from gateway.cli import oauth as oauth_cli
from gateway.oauth.grant import GrantRevoked, OAuthError, TokenEndpointUnavailable
from gateway.oauth.http import FormPoster
from gateway.oauth.refresh import TokenSource
from gateway.oauth.settings import OAuth2Settings
from gateway.oauth.tokenfile import TokenSet, load_tokens, save_tokens, token_path
from gateway.pop3.upstream import Upstream
from gateway.testing.oauthserver import AuthorizationServer
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import ServerTLSContext, make_ca


@pytest.fixture(scope="module")
def rt() -> ReactorThread:
    return ReactorThread.shared(global_reactor)


@pytest.fixture
def idp(rt: ReactorThread) -> Any:
    server = AuthorizationServer(global_reactor, access_lifetime=60, auto_approve="alice")
    rt.call(server.listen)
    yield server
    rt.call(server.port.stopListening)


def settings_for(idp: AuthorizationServer, **kw: Any) -> OAuth2Settings:
    return OAuth2Settings(
        provider="custom",
        client_id="popgate-test",
        token_url=idp.url("/token"),
        device_authorization_url=idp.url("/device"),
        scope="mail offline_access",
        **kw,
    )


def upstream_for(settings: OAuth2Settings, name: str = "alice-outlook") -> Upstream:
    return Upstream(
        name=name, owner="alice", host="127.0.0.1", port=995, tls="implicit",
        username="alice@example.test", password="", auth="oauth2", oauth2=settings,
    )  # fmt: skip


def test_device_login_over_http_prints_the_code_and_saves_tokens(rt, idp, tmp_path: Path) -> None:
    up = upstream_for(settings_for(idp))
    out = io.StringIO()
    path = token_path(tmp_path, up.name)
    tokens = rt.call(lambda: oauth_cli.login_flow(up, path, reactor=global_reactor, out=out))
    text = out.getvalue()
    assert idp.url("/verify") in text and "Signed in." in text
    assert tokens.access_token not in text and tokens.refresh_token not in text
    assert load_tokens(path) == tokens
    assert idp.grants.count("urn:ietf:params:oauth:grant-type:device_code") >= 2  # pending first


def test_refresh_rotates_and_invalid_grant_is_permanent(rt, idp, tmp_path: Path) -> None:
    settings = settings_for(idp)
    path = tmp_path / "t.json"
    now = global_reactor.seconds()
    first = idp.issue("alice")
    save_tokens(path, TokenSet(first["access_token"], first["refresh_token"], now - 1, now - 61))
    src = TokenSource("up", settings, path, reactor=global_reactor)
    fresh = rt.call(src.access_token)
    assert fresh != first["access_token"] and fresh in idp.access
    assert load_tokens(path).refresh_token in idp.refresh  # the rotated one was kept
    save_tokens(path, TokenSet(fresh, load_tokens(path).refresh_token, now - 1, now - 61))
    idp.revoke_refresh_tokens()
    with pytest.raises(GrantRevoked):
        rt.call(src.access_token)


def test_https_endpoint_verified_against_ca_file(rt, idp, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue(tmp_path / "tls", ["127.0.0.1", "localhost"], stem="idp")
    site = idp.port.factory
    tls_port = rt.call(
        global_reactor.listenSSL, 0, site, ServerTLSContext(cert, key), interface="127.0.0.1"
    )
    try:
        url = f"https://127.0.0.1:{tls_port.getHost().port}/device"
        trusted = FormPoster(global_reactor, ca_file=str(ca.cert_path))
        status, body = rt.call(trusted.post, url, {"client_id": "c", "scope": "s"})
        assert status == 200 and body["user_code"]
        untrusted = FormPoster(global_reactor)  # the system store does not know the test CA
        with pytest.raises(TokenEndpointUnavailable):
            rt.call(untrusted.post, url, {"client_id": "c"})
    finally:
        rt.call(tls_port.stopListening)


def test_plain_http_to_a_remote_host_is_refused_before_connecting(rt) -> None:
    poster = FormPoster(global_reactor)
    with pytest.raises(OAuthError) as info:
        rt.call(poster.post, "http://idp.example/token", {"refresh_token": "RT"})
    assert "loopback" in str(info.value) and info.value.permanent


def test_cli_status_and_logout(idp, tmp_path: Path, monkeypatch, capsys) -> None:
    up = upstream_for(settings_for(idp))
    plain = Upstream(
        name="isp", owner="bob", host="h", port=110, tls="none", username="b", password="p"
    )
    cfg = SimpleNamespace(state_dir=str(tmp_path), upstreams=[up, plain])
    monkeypatch.setattr(oauth_cli, "load_config", lambda path: cfg)
    args = SimpleNamespace(config="x", name="alice-outlook")
    assert oauth_cli.cmd_status(args) == 0
    assert "not signed in: run popgate oauth login alice-outlook" in capsys.readouterr().out
    save_tokens(
        token_path(tmp_path, up.name), TokenSet("AT", "RT", expires_at=5000.0, obtained_at=1000.0)
    )
    assert oauth_cli.cmd_status(args, now=1000.0) == 0
    out = capsys.readouterr().out
    assert "alice-outlook  custom  alice@example.test  access token expires" in out
    assert "(in 1 h 6 min); refresh token kept" in out and "isp" not in out
    assert oauth_cli.cmd_logout(args) == 0
    assert not token_path(tmp_path, up.name).exists()
    assert oauth_cli.cmd_logout(SimpleNamespace(config="x", name="isp")) == 1
    assert "no [upstreams.oauth2] table" in capsys.readouterr().err


def test_cli_parser_has_the_oauth_commands() -> None:
    from gateway.cli.main import build_parser

    args = build_parser().parse_args(["oauth", "login", "alice-outlook", "--config", "f.toml"])
    assert (
        args.func is oauth_cli.cmd_login
        and args.name == "alice-outlook"
        and args.config == "f.toml"
    )
    assert build_parser().parse_args(["oauth", "status"]).func is oauth_cli.cmd_status
    assert build_parser().parse_args(["oauth", "logout", "x"]).func is oauth_cli.cmd_logout
