"""A fresh access token for each fetch pass: the token file read again whenever it
changes, the refresh-token grant (RFC 6749 §6) ahead of expiry, retries with backoff.

Rules:

- the file is re-read when its (mtime, size, inode) changes, so ``popgate oauth login``
  fixes a running gateway without a restart;
- a token expiring within :func:`refresh_margin` is refreshed first; a rotated refresh
  token from the answer replaces the old one, an answer without one keeps it (§6);
- a refresh failing for a network reason (or a 5xx) is tried :data:`REFRESH_ATTEMPTS` times,
  waiting :data:`RETRY_BASE` × 2ⁿ seconds between tries; then the pass fails temporarily;
- ``invalid_grant`` is permanent: :class:`~gateway.oauth.grant.GrantRevoked` is raised, and
  raised again without asking the endpoint until the file changes (a new login).

One refresh at a time: concurrent callers share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from twisted.internet import defer, task
from twisted.python.failure import Failure

from gateway.oauth.grant import (
    GrantRevoked,
    NotLoggedIn,
    OAuthError,
    TokenEndpointUnavailable,
    parse_token_response,
    refresh_request,
)
from gateway.oauth.http import FormPoster
from gateway.oauth.settings import OAuth2Settings
from gateway.oauth.tokenfile import (
    TokenFileError,
    TokenSet,
    file_stamp,
    load_tokens,
    save_tokens,
)

log = structlog.get_logger(__name__)

REFRESH_MARGIN = 300.0
"""Refresh when the access token has less than this left (or half its life, if shorter)."""

REFRESH_ATTEMPTS = 3
"""Tries of one refresh before the pass fails (temporarily) on network trouble."""

RETRY_BASE = 2.0
"""Seconds before the second try; doubled for each further one."""


def refresh_margin(tokens: TokenSet) -> float:
    """How long before ``expires_at`` a refresh is due: :data:`REFRESH_MARGIN`, or half
    the token's lifetime for short-lived tokens (a 5 s token is refreshed after 2.5 s)."""
    if tokens.expires_at is None:
        return 0.0
    lifetime = tokens.expires_at - tokens.obtained_at
    return min(REFRESH_MARGIN, max(0.0, lifetime / 2))


class TokenSource:
    """The access token of one upstream (see the module docstring)."""

    def __init__(
        self,
        upstream: str,
        settings: OAuth2Settings,
        path: Path,
        *,
        reactor: Any,
        poster: Any = None,
        attempts: int = REFRESH_ATTEMPTS,
        retry_base: float = RETRY_BASE,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.path = path
        self.reactor = reactor
        self._poster = poster
        self.attempts = attempts
        self.retry_base = retry_base
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: TokenSet | None = None
        self._revoked: GrantRevoked | None = None
        self._waiters: list[defer.Deferred[TokenSet]] | None = None
        self.refreshes = 0

    @property
    def poster(self) -> Any:
        if self._poster is None:
            self._poster = FormPoster(self.reactor, ca_file=self.settings.ca_file)
        return self._poster

    def _reload(self) -> None:
        stamp = file_stamp(self.path)
        if stamp is not None and stamp == self._stamp:
            return
        self._stamp = stamp
        self._revoked = None  # new tokens (or none): the old verdict no longer applies
        try:
            self._tokens = load_tokens(self.path)
        except TokenFileError as e:
            self._tokens = None
            raise OAuthError(str(e), "token_file") from None
        if self._tokens is not None:
            log.info(
                "oauth.tokens_loaded", upstream=self.upstream, expires_at=self._tokens.expires_at
            )

    def current(self) -> TokenSet | None:
        """The tokens as last read from the file (no refresh)."""
        self._reload()
        return self._tokens

    async def _access_token(self) -> str:
        self._reload()
        tokens = self._tokens
        if tokens is None:
            raise NotLoggedIn(f"no OAuth tokens for {self.upstream}: run popgate oauth login")
        if self._revoked is not None:
            raise self._revoked
        now = self.reactor.seconds()
        if tokens.expires_at is None or tokens.expires_at - now > refresh_margin(tokens):
            return tokens.access_token
        if tokens.refresh_token is None:
            if tokens.expires_at > now:
                return tokens.access_token
            raise NotLoggedIn(
                f"the access token of {self.upstream} expired and there is no refresh token"
            )
        waiter: defer.Deferred[TokenSet] = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
        else:
            self._waiters = [waiter]
            defer.Deferred.fromCoroutine(self._refresh(tokens)).addBoth(self._refresh_done)
        refreshed = await waiter
        return refreshed.access_token

    def _refresh_done(self, result: Any) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if waiter.called:  # that caller's pass was cancelled meanwhile
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _refresh(self, tokens: TokenSet) -> TokenSet:
        assert tokens.refresh_token is not None
        fields = refresh_request(self.settings, tokens.refresh_token)
        delay = self.retry_base
        for attempt in range(1, self.attempts + 1):
            try:
                status, body = await self.poster.post(self.settings.token_url, fields)
                fresh = parse_token_response(
                    status, body, now=self.reactor.seconds(), previous_refresh=tokens.refresh_token
                )
            except TokenEndpointUnavailable as e:
                log.warning(
                    "oauth.refresh_retry"
                    if attempt < self.attempts
                    else "oauth.refresh_unavailable",
                    upstream=self.upstream,
                    attempt=attempt,
                    reason=str(e),
                )
                if attempt == self.attempts:
                    raise
                await task.deferLater(self.reactor, delay, lambda: None)
                delay *= 2
                continue
            except GrantRevoked as e:
                if file_stamp(self.path) == self._stamp:  # not replaced by a login meanwhile
                    self._revoked = e
                log.warning("oauth.grant_revoked", upstream=self.upstream, reason=str(e))
                raise
            if file_stamp(self.path) != self._stamp:
                # A login wrote new tokens while this refresh ran: theirs win.
                self._reload()
                if self._tokens is not None:
                    return self._tokens
            save_tokens(self.path, fresh)
            self._tokens, self._stamp = fresh, file_stamp(self.path)
            self.refreshes += 1
            log.info(
                "oauth.refreshed",
                upstream=self.upstream,
                expires_at=fresh.expires_at,
                rotated=fresh.refresh_token != tokens.refresh_token,
            )
            return fresh
        raise AssertionError("unreachable")

    def access_token(self) -> defer.Deferred[str]:
        """A valid access token, refreshed first when due; fails with an
        :class:`~gateway.oauth.grant.OAuthError` (``permanent`` says if a retry can help)."""
        return defer.Deferred.fromCoroutine(self._access_token())
