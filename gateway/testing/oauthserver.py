"""A small OAuth 2.0 authorization server for tests: device authorization (RFC 8628), the
token endpoint (device-code and refresh-token grants, RFC 6749 §6, refresh tokens rotated),
and token introspection (RFC 7662) for Dovecot's ``oauth2`` passdb to validate with.

It is a real HTTP server (twisted.web on loopback) so that popgate's treq client, the
``popgate oauth login`` device flow and Dovecot all talk to it over sockets. Knobs let a
test shorten token life, revoke refresh tokens, and make the device flow answer
``authorization_pending`` or ``slow_down`` first. Time comes from the injected reactor.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.web import resource, server

from gateway.testing.ports import LOOPBACK


@dataclass
class DeviceRequest:
    user_code: str
    expires_at: float
    approved_for: str | None = None
    denied: bool = False
    polls: int = 0
    last_poll: float | None = None


@dataclass
class AuthorizationServer:
    """The server's state; :meth:`listen` serves it. ``auto_approve`` (a user name) plays
    the user who signs in after ``pending_polls`` polls."""

    reactor: Any
    access_lifetime: float = 5.0
    device_interval: int = 1
    pending_polls: int = 1
    slow_down_once: bool = False
    auto_approve: str | None = None
    rotate_refresh: bool = True
    access: dict[str, tuple[str, float]] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    devices: dict[str, DeviceRequest] = field(default_factory=dict)
    grants: list[str] = field(default_factory=list)  # grant types served, in order
    introspections: int = 0
    port: Any = None

    # ---- test controls ------------------------------------------------------------------

    def issue(self, user: str, *, with_refresh: bool = True) -> dict[str, Any]:
        """A token answer for ``user`` (RFC 6749 §5.1), recorded as valid."""
        token = "at-" + secrets.token_urlsafe(16)
        self.access[token] = (user, self.reactor.seconds() + self.access_lifetime)
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "scope": "mail",
        }
        if with_refresh:
            refresh = "rt-" + secrets.token_urlsafe(16)
            self.refresh[refresh] = user
            answer["refresh_token"] = refresh
        return answer

    def revoke_refresh_tokens(self) -> None:
        """Forget every refresh token: the next refresh gets ``invalid_grant``."""
        self.refresh.clear()

    def expire_access_tokens(self) -> None:
        self.access.clear()

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port.getHost().port}{path}"

    def listen(self) -> Any:
        root = resource.Resource()
        root.putChild(b"device", _Endpoint(self._device))
        root.putChild(b"token", _Endpoint(self._token))
        root.putChild(b"introspect", _Endpoint(self._introspect))
        site = server.Site(root)
        site.noisy = False
        self.port = self.reactor.listenTCP(0, site, interface=LOOPBACK)
        return self.port

    # ---- endpoints ----------------------------------------------------------------------

    def _device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 8628 §3.1-3.2."""
        if not form.get("client_id"):
            return 401, {"error": "invalid_client"}
        code = secrets.token_urlsafe(16)
        user_code = secrets.token_hex(4).upper()
        self.devices[code] = DeviceRequest(user_code, self.reactor.seconds() + 600)
        return 200, {
            "device_code": code,
            "user_code": user_code,
            "verification_uri": self.url("/verify"),
            "expires_in": 600,
            "interval": self.device_interval,
        }

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form)
        if grant == "refresh_token":
            user = self.refresh.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "refresh token revoked"}
            if self.rotate_refresh:
                del self.refresh[form["refresh_token"]]
                return 200, self.issue(user)
            return 200, self.issue(user, with_refresh=False)
        return 400, {"error": "unsupported_grant_type"}

    def _device_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 8628 §3.4-3.5."""
        request = self.devices.get(form.get("device_code", ""))
        if request is None:
            return 400, {"error": "invalid_grant"}
        now = self.reactor.seconds()
        request.polls += 1
        if now > request.expires_at:
            return 400, {"error": "expired_token"}
        if self.slow_down_once:
            self.slow_down_once = False
            return 400, {"error": "slow_down"}
        if request.denied:
            return 400, {"error": "access_denied"}
        if (
            request.approved_for is None
            and self.auto_approve
            and request.polls > self.pending_polls
        ):
            request.approved_for = self.auto_approve
        if request.approved_for is None:
            return 400, {"error": "authorization_pending"}
        del self.devices[form["device_code"]]
        return 200, self.issue(request.approved_for)

    def _introspect(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """RFC 7662 §2.2, the fields Dovecot's oauth2 passdb reads."""
        self.introspections += 1
        entry = self.access.get(form.get("token", ""))
        if entry is None or entry[1] <= self.reactor.seconds():
            return 200, {"active": False}
        return 200, {"active": True, "username": entry[0]}


class _Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self._handler = handler

    def render_POST(self, request: Any) -> bytes:
        form = {
            k.decode("utf-8"): v[0].decode("utf-8") for k, v in (request.args or {}).items() if v
        }
        status, body = self._handler(form)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8")


def dovecot_oauth2_config(server: AuthorizationServer, directory: Path) -> str:
    """``extra_config`` for :class:`gateway.testing.dovecot.Dovecot`: an ``oauth2`` passdb
    (mechanisms XOAUTH2 and OAUTHBEARER) validating tokens by POSTing them to ``server``'s
    introspection endpoint (RFC 7662). ``directory`` must be readable by Dovecot's
    unprivileged user; the passdb's settings file is written there (mode 0644)."""
    args = directory / "dovecot-oauth2.conf.ext"
    args.write_text(
        f"introspection_url = {server.url('/introspect')}\n"
        "introspection_mode = post\n"
        "username_attribute = username\n"
        "active_attribute = active\n"
        "active_value = true\n"
    )
    args.chmod(0o644)
    return (
        "auth_mechanisms = plain login xoauth2 oauthbearer\n"
        "passdb {\n"
        "  driver = oauth2\n"
        "  mechanisms = xoauth2 oauthbearer\n"
        f"  args = {args}\n"
        "}\n"
    )
