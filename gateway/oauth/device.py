"""The OAuth 2.0 device authorization grant (RFC 8628), the sign-in that works on a
headless server: ask for a code, show the user where to enter it, poll until they have.

Polling follows §3.5: ``authorization_pending`` waits ``interval`` seconds and asks again,
``slow_down`` adds :data:`~gateway.oauth.grant.SLOW_DOWN_STEP` seconds to the interval for
the rest of the login, ``access_denied`` and ``expired_token`` end it. Network trouble while
polling is retried at the same pace until the code expires. Time comes from the injected
reactor, so tests drive it with a :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from gateway.oauth.grant import (
    SLOW_DOWN_STEP,
    DeviceAuthorization,
    DeviceFlowFailed,
    TokenEndpointUnavailable,
    TokenRejected,
    device_authorization_request,
    device_token_request,
    parse_device_authorization,
    parse_token_response,
)
from gateway.oauth.settings import OAuth2Settings
from gateway.oauth.tokenfile import TokenSet

Show = Callable[[DeviceAuthorization], None]


async def _device_login(
    settings: OAuth2Settings, *, reactor: Any, poster: Any, show: Show
) -> TokenSet:
    status, body = await poster.post(
        settings.device_authorization_url, device_authorization_request(settings)
    )
    grant = parse_device_authorization(status, body)
    show(grant)
    deadline = reactor.seconds() + grant.expires_in
    interval = grant.interval
    fields = device_token_request(settings, grant.device_code)
    while True:
        await task.deferLater(reactor, interval, lambda: None)
        if reactor.seconds() > deadline:
            raise DeviceFlowFailed("the code expired before the sign-in finished", "expired_token")
        try:
            status, body = await poster.post(settings.token_url, fields)
            return parse_token_response(status, body, now=reactor.seconds())
        except TokenEndpointUnavailable:
            continue  # §3.5: a network problem is retried at the same pace
        except TokenRejected as e:
            if e.error == "authorization_pending":
                continue
            if e.error == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if e.error in ("access_denied", "expired_token"):
                raise DeviceFlowFailed(str(e), e.error) from None
            raise


def device_login(
    settings: OAuth2Settings, *, reactor: Any, poster: Any, show: Show
) -> defer.Deferred[TokenSet]:
    """Run the whole device grant; ``show`` is called once with the code to display.
    Fires with the granted :class:`TokenSet`, or fails with an
    :class:`~gateway.oauth.grant.OAuthError`."""
    return defer.Deferred.fromCoroutine(
        _device_login(settings, reactor=reactor, poster=poster, show=show)
    )
