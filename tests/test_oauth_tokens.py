"""The OAuth machinery without a network: [upstreams.oauth2] parsing, the token file, the
device grant's polling rules (RFC 8628 §3.5) and refresh (RFC 6749 §6) on a Clock."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.oauth.device import device_login
from gateway.oauth.grant import (
    DEVICE_CODE_GRANT,
    DeviceFlowFailed,
    GrantRevoked,
    NotLoggedIn,
    TokenEndpointUnavailable,
    parse_token_response,
)
from gateway.oauth.refresh import TokenSource, refresh_margin
from gateway.oauth.settings import OAuth2Settings, parse_oauth2_table
from gateway.oauth.tokenfile import TokenSet, load_tokens, save_tokens, token_path

# ---- settings -----------------------------------------------------------------------------


def test_microsoft_preset_fills_urls_and_scope() -> None:
    settings, problems = parse_oauth2_table({"provider": "microsoft", "client_id": "abc"})
    assert problems == []
    assert settings is not None
    assert settings.token_url.startswith("https://login.microsoftonline.com/")
    assert "POP.AccessAsUser.All" in settings.scope and "offline_access" in settings.scope
    assert settings.mechanism == "auto"


def test_custom_needs_every_url_and_the_scope() -> None:
    settings, problems = parse_oauth2_table({"provider": "custom", "client_id": "abc"})
    assert settings is None
    assert sorted(p.split(":")[0] for p in problems) == [
        "oauth2.device_authorization_url",
        "oauth2.scope",
        "oauth2.token_url",
    ]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://idp.example/token", True),
        ("http://127.0.0.1:8080/token", True),
        ("http://localhost/token", True),
        ("http://idp.example/token", False),
        ("ftp://idp.example/token", False),
    ],
)
def test_http_endpoints_only_on_loopback(url: str, ok: bool) -> None:
    table = {
        "provider": "custom",
        "client_id": "c",
        "token_url": url,
        "device_authorization_url": "https://idp.example/device",
        "scope": "mail",
    }
    settings, problems = parse_oauth2_table(table)
    assert (settings is not None) is ok, problems
    if not ok:
        assert problems[0].startswith("oauth2.token_url:")


def test_unknown_keys_bad_values_and_missing_files_are_problems(tmp_path: Path) -> None:
    _, problems = parse_oauth2_table(
        {
            "provider": "yahoo",
            "client_id": "",
            "mechanism": "plain",
            "client_secret_file": str(tmp_path / "nope"),
            "colour": "blue",
        },
        prefix="upstreams.x.oauth2",
    )
    keys = {p.split(":")[0] for p in problems}
    assert keys == {
        "upstreams.x.oauth2.provider",
        "upstreams.x.oauth2.client_id",
        "upstreams.x.oauth2.mechanism",
        "upstreams.x.oauth2.client_secret_file",
        "upstreams.x.oauth2.colour",
    }


def test_client_secret_is_read_from_its_file_and_never_in_repr(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    settings, _ = parse_oauth2_table(
        {"provider": "google", "client_id": "c", "client_secret_file": str(secret)}
    )
    assert settings is not None and settings.client_secret() == "s3cr3t"
    assert "s3cr3t" not in repr(settings)


# ---- token file ---------------------------------------------------------------------------


def test_token_file_is_0600_atomic_and_round_trips(tmp_path: Path) -> None:
    path = token_path(tmp_path, "alice-outlook")
    assert load_tokens(path) is None
    tokens = TokenSet("AT", "RT", expires_at=1000.0, obtained_at=10.0, scope="s")
    save_tokens(path, tokens)
    assert path == tmp_path / "oauth" / "alice-outlook.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_tokens(path) == tokens
    assert [p.name for p in path.parent.iterdir()] == ["alice-outlook.json"]
    assert "AT" not in repr(tokens) and "RT" not in repr(tokens)


def test_refresh_answer_without_refresh_token_keeps_the_old_one() -> None:
    body = {"access_token": "new", "expires_in": 60, "token_type": "Bearer"}
    kept = parse_token_response(200, body, now=100.0, previous_refresh="old-rt")
    assert kept.refresh_token == "old-rt" and kept.expires_at == 160.0
    rotated = parse_token_response(
        200, {**body, "refresh_token": "rt2"}, now=0, previous_refresh="x"
    )
    assert rotated.refresh_token == "rt2"


# ---- a scripted token endpoint -----------------------------------------------------------


class ScriptedPoster:
    """Answers POSTs from a list of (status, body) or exceptions; records the forms."""

    def __init__(self, clock: Clock, answers: list[Any]) -> None:
        self.clock = clock
        self.answers = answers
        self.posts: list[tuple[float, str, dict[str, str]]] = []

    def post(self, url: str, fields: dict[str, str]) -> defer.Deferred[tuple[int, Any]]:
        self.posts.append((self.clock.seconds(), url, dict(fields)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


SETTINGS = OAuth2Settings(
    provider="custom",
    client_id="cid",
    token_url="https://idp.example/token",
    device_authorization_url="https://idp.example/device",
    scope="mail offline",
)

DEVICE = (
    200,
    {
        "device_code": "DC",
        "user_code": "WXYZ-1234",
        "verification_uri": "https://idp.example/verify",
        "expires_in": 120,
        "interval": 5,
    },
)
PENDING = (400, {"error": "authorization_pending"})
SLOW = (400, {"error": "slow_down"})
TOKENS = (200, {"access_token": "AT", "refresh_token": "RT", "expires_in": 3600})


def run_device(clock: Clock, answers: list[Any]) -> tuple[Any, ScriptedPoster, list[Any]]:
    poster = ScriptedPoster(clock, answers)
    shown: list[Any] = []
    d = device_login(SETTINGS, reactor=clock, poster=poster, show=shown.append)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    for _ in range(200):
        if outcome:
            break
        clock.advance(1)
    return outcome[0], poster, shown


def test_device_flow_polls_at_interval_and_slows_down_for_good() -> None:
    clock = Clock()
    result, poster, shown = run_device(clock, [DEVICE, PENDING, SLOW, PENDING, TOKENS])
    assert isinstance(result, TokenSet) and result.refresh_token == "RT"
    assert shown[0].user_code == "WXYZ-1234"
    times = [t for t, url, _ in poster.posts if url.endswith("/token")]
    # every 5 s; after slow_down every 10 s (RFC 8628 §3.5)
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [5, 10, 10]
    assert poster.posts[1][2]["grant_type"] == DEVICE_CODE_GRANT
    assert poster.posts[1][2]["device_code"] == "DC"


@pytest.mark.parametrize("error", ["access_denied", "expired_token"])
def test_device_flow_ends_on_denial_or_expiry(error: str) -> None:
    result, _, _ = run_device(Clock(), [DEVICE, PENDING, (400, {"error": error})])
    assert isinstance(result.value, DeviceFlowFailed) and result.value.error == error


def test_device_flow_gives_up_when_the_code_expires_locally() -> None:
    result, poster, _ = run_device(Clock(), [DEVICE] + [PENDING] * 30)
    assert isinstance(result.value, DeviceFlowFailed)
    assert len(poster.posts) <= 1 + 120 / 5


def test_device_flow_retries_network_trouble() -> None:
    down = TokenEndpointUnavailable("connection refused")
    result, _, _ = run_device(Clock(), [DEVICE, down, (503, None), TOKENS])
    assert isinstance(result, TokenSet)


# ---- refresh ------------------------------------------------------------------------------


def source(tmp_path: Path, clock: Clock, answers: list[Any], **kw: Any) -> TokenSource:
    return TokenSource(
        "up", SETTINGS, tmp_path / "oauth" / "up.json", reactor=clock,
        poster=ScriptedPoster(clock, answers), **kw,
    )  # fmt: skip


def token(src: TokenSource, clock: Clock, *, advance: float = 0.0) -> Any:
    out: list[Any] = []
    src.access_token().addBoth(out.append)
    while not out and advance > 0:
        clock.advance(1)
        advance -= 1
    return out[0] if out else None


def test_refresh_margin_is_half_a_short_lifetime() -> None:
    assert refresh_margin(TokenSet("a", expires_at=105, obtained_at=100)) == 2.5
    assert refresh_margin(TokenSet("a", expires_at=3700, obtained_at=100)) == 300


def test_no_file_is_not_logged_in(tmp_path: Path) -> None:
    got = token(source(tmp_path, Clock(), []), Clock())
    assert isinstance(got.value, NotLoggedIn) and got.value.permanent


def test_valid_token_is_used_without_asking_and_refreshed_ahead_of_expiry(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    src = source(
        tmp_path,
        clock,
        [(200, {"access_token": "AT2", "expires_in": 3600, "refresh_token": "RT2"})],
    )
    save_tokens(src.path, TokenSet("AT1", "RT1", expires_at=1000 + 3600, obtained_at=1000))
    assert token(src, clock) == "AT1"
    assert src.poster.posts == []
    clock.advance(3600 - 299)  # inside the 300 s margin
    assert token(src, clock) == "AT2"
    form = src.poster.posts[0][2]
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "RT1"
    saved = load_tokens(src.path)
    assert saved is not None and saved.refresh_token == "RT2"  # rotated one kept


def test_network_failures_are_retried_with_backoff_then_fail_temporarily(tmp_path: Path) -> None:
    clock = Clock()
    down = TokenEndpointUnavailable("refused")
    src = source(tmp_path, clock, [down, down, down])
    save_tokens(src.path, TokenSet("AT", "RT", expires_at=0, obtained_at=0))
    got = token(src, clock, advance=60)
    assert isinstance(got.value, TokenEndpointUnavailable) and not got.value.permanent
    times = [t for t, _, _ in src.poster.posts]
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [2, 4]


def test_network_failure_then_success(tmp_path: Path) -> None:
    clock = Clock()
    src = source(tmp_path, clock, [TokenEndpointUnavailable("x"), TOKENS])
    save_tokens(src.path, TokenSet("AT", "RT", expires_at=0, obtained_at=0))
    assert token(src, clock, advance=10) == "AT"


def test_invalid_grant_is_permanent_and_not_retried_until_a_new_login(tmp_path: Path) -> None:
    clock = Clock()
    revoked = (400, {"error": "invalid_grant", "error_description": "AADSTS70000 revoked"})
    src = source(tmp_path, clock, [revoked])
    save_tokens(src.path, TokenSet("AT", "RT", expires_at=0, obtained_at=0))
    first = token(src, clock)
    assert isinstance(first.value, GrantRevoked) and first.value.permanent
    second = token(src, clock)
    assert isinstance(second.value, GrantRevoked)
    assert len(src.poster.posts) == 1  # the endpoint is not hammered
    # popgate oauth login writes a new file: picked up at the next call, no restart
    clock.advance(5)
    save_tokens(
        src.path,
        TokenSet("NEW", "RT9", expires_at=clock.seconds() + 3600, obtained_at=clock.seconds()),
    )
    os.utime(src.path, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    assert token(src, clock) == "NEW"


def test_concurrent_callers_share_one_refresh(tmp_path: Path) -> None:
    clock = Clock()
    pending: defer.Deferred[Any] = defer.Deferred()

    class SlowPoster:
        posts = 0

        def post(self, url: str, fields: dict[str, str]) -> defer.Deferred[Any]:
            SlowPoster.posts += 1
            return pending

    src = TokenSource("up", SETTINGS, tmp_path / "up.json", reactor=clock, poster=SlowPoster())
    save_tokens(src.path, TokenSet("AT", "RT", expires_at=0, obtained_at=0))
    results: list[Any] = []
    src.access_token().addBoth(results.append)
    src.access_token().addBoth(results.append)
    pending.callback(TOKENS)
    assert results == ["AT", "AT"] and SlowPoster.posts == 1


def test_a_cancelled_caller_does_not_break_the_shared_refresh(tmp_path: Path) -> None:
    clock = Clock()
    pending: defer.Deferred[Any] = defer.Deferred()

    class SlowPoster:
        def post(self, url: str, fields: dict[str, str]) -> defer.Deferred[Any]:
            return pending

    src = TokenSource("up", SETTINGS, tmp_path / "up.json", reactor=clock, poster=SlowPoster())
    save_tokens(src.path, TokenSet("AT", "RT", expires_at=0, obtained_at=0))
    cancelled = src.access_token()
    cancelled.addErrback(lambda f: f.trap(defer.CancelledError))
    cancelled.cancel()  # the poller stopping mid-refresh
    later: list[Any] = []
    src.access_token().addBoth(later.append)  # joins the same refresh
    pending.callback(TOKENS)
    assert later == ["AT"] and src.refreshes == 1
