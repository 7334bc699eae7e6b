"""``popgate oauth login|status|logout``: signing an upstream in with OAuth 2.0.

``login NAME`` runs the device authorization grant (RFC 8628) against the upstream's
provider: it prints a URL and a code, the user signs in from any browser, and the tokens
land in ``state_dir/oauth/NAME.json`` (0600). A running gateway picks them up at its next
pass (:class:`gateway.oauth.refresh.TokenSource` re-reads a changed file): no restart.
``status`` lists the OAuth upstreams and their token expiry; ``logout NAME`` deletes the
token file (the provider's grant itself is revoked on the provider's account page).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from twisted.internet import defer

from gateway.app import config as configmod
from gateway.cli.common import DEFAULT_CONFIG
from gateway.oauth.grant import DeviceAuthorization, OAuthError
from gateway.oauth.tokenfile import (
    TokenFileError,
    TokenSet,
    forget_tokens,
    load_tokens,
    save_tokens,
    token_path,
)

load_config: Callable[[str], Any] = configmod.load
"""How the commands read the configuration (tests substitute it)."""


class _Refused(Exception):
    pass


def _config(path: str) -> Any:
    try:
        return load_config(path)
    except configmod.ConfigError as e:
        raise _Refused("\n".join(e.problems)) from None


def oauth_upstreams(cfg: Any) -> list[Any]:
    return [u for u in cfg.upstreams if getattr(u, "oauth2", None) is not None]


def _upstream(cfg: Any, name: str) -> Any:
    for upstream in cfg.upstreams:
        if upstream.name == name:
            if getattr(upstream, "oauth2", None) is None:
                raise _Refused(f"upstream {name!r} has no [upstreams.oauth2] table")
            return upstream
    raise _Refused(f"no upstream named {name!r} in the configuration")


def _when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "no expiry given"
    stamp = datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    left = epoch - now
    if left <= 0:
        return f"expired {stamp}"
    return f"expires {stamp} (in {_duration(left)})"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def login_flow(
    upstream: Any, path: Path, *, reactor: Any, out: TextIO, poster: Any = None
) -> defer.Deferred[TokenSet]:
    """The device login for ``upstream``, printing the code to ``out`` and saving the
    tokens in ``path``; fires with them (used by :func:`cmd_login` and by tests)."""
    # The HTTP client (twisted.web's) and the device grant only for a login: every
    # `popgate` command imports this module to build its parser (issue 19, start-up).
    from gateway.oauth.device import device_login
    from gateway.oauth.http import FormPoster

    settings = upstream.oauth2
    if poster is None:
        poster = FormPoster(reactor, ca_file=settings.ca_file)

    def show(grant: DeviceAuthorization) -> None:
        out.write(
            f"To sign popgate in to {upstream.name} ({settings.provider}, {upstream.username}):\n"
            f"  open    {grant.verification_uri}\n"
            f"  enter   {grant.user_code}\n"
            f"and sign in as {upstream.username}. "
            f"The code is valid for {_duration(grant.expires_in)}; waiting...\n"
        )
        if grant.verification_uri_complete:
            out.write(f"  (or open {grant.verification_uri_complete})\n")
        out.flush()

    def saved(tokens: TokenSet) -> TokenSet:
        save_tokens(path, tokens)
        out.write(
            f"Signed in. Tokens saved to {path}; access token {_when(tokens.expires_at, reactor.seconds())}"
            f"{'' if tokens.refresh_token else ' (no refresh token: the scope lacks offline access)'}.\n"
            "A running gateway uses them at its next pass.\n"
        )
        out.flush()
        return tokens

    d = device_login(settings, reactor=reactor, poster=poster, show=show)
    return d.addCallback(saved)


def _run_in_reactor(fn: Callable[[Any], defer.Deferred[Any]]) -> Any:
    """Run the global reactor until ``fn(reactor)`` fires; its result, or raise its error."""
    from twisted.internet import reactor
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def start() -> None:
        d = defer.maybeDeferred(fn, reactor)

        def done(result: Any) -> None:
            outcome.append(result)
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def cmd_login(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args.config)
        upstream = _upstream(cfg, args.name)
        path = token_path(cfg.state_dir, upstream.name)
        _run_in_reactor(lambda reactor: login_flow(upstream, path, reactor=reactor, out=sys.stdout))
    except _Refused as e:
        print(f"popgate: {e}", file=sys.stderr)
        return 1
    except OAuthError as e:
        print(f"popgate: sign-in failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("popgate: sign-in interrupted", file=sys.stderr)
        return 130
    return 0


def cmd_status(args: argparse.Namespace, *, now: float | None = None) -> int:
    import time

    now = time.time() if now is None else now
    try:
        cfg = _config(args.config)
    except _Refused as e:
        print(f"popgate: {e}", file=sys.stderr)
        return 1
    upstreams = oauth_upstreams(cfg)
    if not upstreams:
        print('no upstream uses OAuth (auth = "oauth2" with an [upstreams.oauth2] table)')
        return 0
    for upstream in upstreams:
        path = token_path(cfg.state_dir, upstream.name)
        try:
            tokens = load_tokens(path)
        except TokenFileError as e:
            state = f"unreadable token file: {e}"
        else:
            if tokens is None:
                state = f"not signed in: run popgate oauth login {upstream.name}"
            else:
                refresh = "refresh token kept" if tokens.refresh_token else "no refresh token"
                state = f"access token {_when(tokens.expires_at, now)}; {refresh}"
        print(f"{upstream.name}  {upstream.oauth2.provider}  {upstream.username}  {state}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args.config)
        upstream = _upstream(cfg, args.name)
    except _Refused as e:
        print(f"popgate: {e}", file=sys.stderr)
        return 1
    path = token_path(cfg.state_dir, upstream.name)
    if forget_tokens(path):
        print(
            f"{upstream.name}: tokens deleted ({path}); fetching stops at the next pass. "
            "To withdraw the grant itself, remove popgate on the provider's account page."
        )
    else:
        print(f"{upstream.name}: was not signed in")
    return 0


def add_parsers(subparsers: Any, default_config: str = DEFAULT_CONFIG) -> None:
    """Register ``popgate oauth ...`` on the top-level sub-parsers."""
    p = subparsers.add_parser("oauth", help="OAuth 2.0 sign-in for upstreams (Outlook, Gmail)")
    sub = p.add_subparsers(dest="oauth_command", required=True)
    q = sub.add_parser("login", help="sign an upstream in (device code: any browser will do)")
    q.add_argument("name", help="the [[upstreams]] name")
    q.add_argument("--config", "-c", default=default_config)
    q.set_defaults(func=cmd_login)
    q = sub.add_parser("status", help="list the OAuth upstreams and their token expiry")
    q.add_argument("--config", "-c", default=default_config)
    q.set_defaults(func=cmd_status)
    q = sub.add_parser("logout", help="forget an upstream's tokens")
    q.add_argument("name", help="the [[upstreams]] name")
    q.add_argument("--config", "-c", default=default_config)
    q.set_defaults(func=cmd_logout)
