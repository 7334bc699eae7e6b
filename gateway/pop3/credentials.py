"""The access token for an ``auth = "oauth2"`` upstream, fetched before each pass.

:func:`with_oauth_token` wraps a fetch function (:func:`gateway.pop3.fetcher.fetch_once`):
it asks the upstream's :class:`~gateway.oauth.refresh.TokenSource` for a valid token
(refreshing it first when due) before any connection is opened, and hands the fetch a copy
of the settings whose ``password`` is that token (:func:`gateway.pop3.connect.login` sends
it with SASL XOAUTH2/OAUTHBEARER). Token failures become fetch failures: a revoked or
missing grant is :class:`~gateway.pop3.errors.OAuthLoginNeeded` (kind ``auth``), an
unreachable token endpoint :class:`~gateway.pop3.errors.OAuthTokenUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog
from twisted.internet import defer

from gateway.oauth.grant import OAuthError
from gateway.oauth.refresh import TokenSource
from gateway.pop3.errors import FetchError, OAuthLoginNeeded, OAuthTokenUnavailable
from gateway.pop3.fetcher import FetchResult
from gateway.pop3.upstream import Upstream

log = structlog.get_logger(__name__)

FetchFunction = Callable[..., defer.Deferred[FetchResult]]


def oauth_failure(error: OAuthError, upstream: Upstream) -> FetchError:
    """The fetch error for a token that could not be had."""
    if error.permanent:
        return OAuthLoginNeeded(
            f"OAuth sign-in for {upstream.name} is no longer valid ({error.error}: {error}); "
            f"run: popgate oauth login {upstream.name}"
        )
    return OAuthTokenUnavailable(f"cannot refresh the OAuth token of {upstream.name}: {error}")


def with_oauth_token(fetch: FetchFunction, tokens: TokenSource) -> FetchFunction:
    """``fetch`` with the access token from ``tokens`` put in ``upstream.password``."""

    async def run(upstream: Upstream, store: Any, kwargs: dict[str, Any]) -> FetchResult:
        try:
            token = await tokens.access_token()
        except OAuthError as e:
            error = oauth_failure(e, upstream)
            error.result = FetchResult(upstream.name)
            log.warning(
                "pop3.fetch_failed",
                upstream=upstream.name,
                owner=upstream.owner,
                error=error.kind,
                oauth_error=e.error,
                message=str(error),
            )
            raise error from None
        return await fetch(replace(upstream, password=token), store, **kwargs)

    def fetch_with_token(
        upstream: Upstream, store: Any, **kwargs: Any
    ) -> defer.Deferred[FetchResult]:
        return defer.Deferred.fromCoroutine(run(upstream, store, kwargs))

    return fetch_with_token
