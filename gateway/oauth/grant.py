"""The OAuth 2.0 messages popgate sends and reads, without I/O: the device authorization
request and answer (RFC 8628 §3.1-3.2), the device-code and refresh-token grants (RFC 8628
§3.4, RFC 6749 §6) and the token answer or error (RFC 6749 §5.1-5.2).

Errors are :class:`OAuthError` subclasses whose ``permanent`` flag says whether trying again
later can help; their text never holds a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.oauth.settings import OAuth2Settings
from gateway.oauth.tokenfile import TokenSet

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
"""RFC 8628 §3.4 grant type."""

DEFAULT_POLL_INTERVAL = 5
"""RFC 8628 §3.2: seconds between token polls when the server names no ``interval``."""

SLOW_DOWN_STEP = 5
"""RFC 8628 §3.5: ``slow_down`` adds this many seconds to the polling interval for good."""

MAX_ERROR_TEXT = 200
"""How much of a server's ``error_description`` is kept."""


class OAuthError(Exception):
    """Getting or refreshing a token failed. ``error`` is the RFC 6749 §5.2 code (or a
    popgate word); ``permanent`` is True when only the operator can fix it."""

    permanent = True
    error = "oauth_error"

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        if error is not None:
            self.error = error


class NotLoggedIn(OAuthError):
    """No token file: ``popgate oauth login NAME`` has not been run (or logout was)."""

    error = "not_logged_in"


class GrantRevoked(OAuthError):
    """``invalid_grant`` (RFC 6749 §5.2): the refresh token was revoked or expired."""

    error = "invalid_grant"


class TokenRejected(OAuthError):
    """Another error the token endpoint answered (``invalid_client``, ``unauthorized_client``,
    ``invalid_scope``...): the registration or settings are wrong."""


class TokenEndpointUnavailable(OAuthError):
    """The endpoint could not be reached or answered nonsense: worth retrying."""

    permanent = False
    error = "unavailable"


class DeviceFlowFailed(OAuthError):
    """The device login ended without tokens (``access_denied``, ``expired_token``)."""


@dataclass(frozen=True)
class DeviceAuthorization:
    """The device authorization answer (RFC 8628 §3.2)."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float = DEFAULT_POLL_INTERVAL
    verification_uri_complete: str | None = None


def _client_fields(settings: OAuth2Settings) -> dict[str, str]:
    """RFC 6749 §2.3.1: the client secret, if any, travels in the form body; public
    clients (RFC 8628 §3.1) send only ``client_id``."""
    fields = {"client_id": settings.client_id}
    secret = settings.client_secret()
    if secret:
        fields["client_secret"] = secret
    return fields


def device_authorization_request(settings: OAuth2Settings) -> dict[str, str]:
    """RFC 8628 §3.1 form fields."""
    return {**_client_fields(settings), "scope": settings.scope}


def device_token_request(settings: OAuth2Settings, device_code: str) -> dict[str, str]:
    """RFC 8628 §3.4 form fields."""
    return {**_client_fields(settings), "grant_type": DEVICE_CODE_GRANT, "device_code": device_code}


def refresh_request(settings: OAuth2Settings, refresh_token: str) -> dict[str, str]:
    """RFC 6749 §6 form fields. The scope is repeated: Microsoft wants it, and it never
    exceeds what was granted, as §6 requires."""
    return {
        **_client_fields(settings),
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "scope": settings.scope,
    }


def _number(value: Any, default: float | None) -> float | None:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.isdigit():  # some servers send strings
        return float(value)
    return default


def error_of(status: int, body: Any) -> OAuthError | None:
    """The RFC 6749 §5.2 error in an answer, or None for a success answer."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        text = str(body.get("error_description") or "")[:MAX_ERROR_TEXT]
        message = f"{code}: {text}" if text else code
        if code == "invalid_grant":
            return GrantRevoked(message, code)
        if code in ("temporarily_unavailable", "server_error"):
            return TokenEndpointUnavailable(message, code)
        return TokenRejected(message, code)
    if status >= 500:
        return TokenEndpointUnavailable(f"HTTP {status}")
    if status >= 400 or not isinstance(body, dict):
        return TokenEndpointUnavailable(f"HTTP {status} without an OAuth answer")
    return None


def parse_device_authorization(status: int, body: Any) -> DeviceAuthorization:
    """RFC 8628 §3.2; Google names the URL ``verification_url``, so both are read."""
    problem = error_of(status, body)
    if problem is not None:
        raise problem
    uri = body.get("verification_uri") or body.get("verification_url")
    code, user_code = body.get("device_code"), body.get("user_code")
    if not all(isinstance(v, str) and v for v in (uri, code, user_code)):
        raise TokenEndpointUnavailable("device authorization answer lacks a code or URL")
    complete = body.get("verification_uri_complete")
    return DeviceAuthorization(
        device_code=code,
        user_code=user_code,
        verification_uri=uri,
        expires_in=_number(body.get("expires_in"), 900.0) or 900.0,
        interval=max(1.0, _number(body.get("interval"), DEFAULT_POLL_INTERVAL) or 1.0),
        verification_uri_complete=complete if isinstance(complete, str) else None,
    )


def parse_token_response(
    status: int, body: Any, *, now: float, previous_refresh: str | None = None
) -> TokenSet:
    """RFC 6749 §5.1. A refresh answer may omit ``refresh_token`` (§6): the previous one
    is kept; when it carries one (rotation), the new one replaces it."""
    problem = error_of(status, body)
    if problem is not None:
        raise problem
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenEndpointUnavailable("token answer without an access_token")
    refresh = body.get("refresh_token")
    lifetime = _number(body.get("expires_in"), None)
    scope = body.get("scope")
    return TokenSet(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
        expires_at=now + lifetime if lifetime is not None else None,
        obtained_at=now,
        token_type=str(body.get("token_type") or "Bearer"),
        scope=scope if isinstance(scope, str) else None,
    )
