"""An upstream's ``[upstreams.oauth2]`` table: provider presets, the settings dataclass, and
the pure parser the configuration loader calls.

Token and device-authorization URLs must be ``https://`` (verified against the system store
or ``ca_file``); ``http://`` is accepted only for a loopback host, the same rule as
``tls = "none"`` for POP3 (a token endpoint sees the refresh token, a long-lived secret).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.core.net import is_loopback_host


@dataclass(frozen=True)
class Provider:
    """What a preset fills in when the table leaves it out."""

    token_url: str
    device_authorization_url: str
    scope: str


PROVIDERS: dict[str, Provider] = {
    # Microsoft identity platform v2, "common" tenant (work, school and personal
    # accounts); offline_access is what makes it hand out a refresh token.
    "microsoft": Provider(
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",
        device_authorization_url="https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        scope="https://outlook.office.com/POP.AccessAsUser.All offline_access",
    ),
    # Google: the scope that covers POP is the full-mail one.
    "google": Provider(
        token_url="https://oauth2.googleapis.com/token",
        device_authorization_url="https://oauth2.googleapis.com/device/code",
        scope="https://mail.google.com/",
    ),
}
"""Provider presets; "custom" has none and needs every URL and the scope."""

PROVIDER_NAMES = (*PROVIDERS, "custom")
MECHANISMS = ("auto", "xoauth2", "oauthbearer")
"""``mechanism``: "auto" picks from CAPA SASL (see :func:`gateway.pop3.sasl.choose_mechanism`)."""

KEYS = frozenset(
    {
        "provider",
        "client_id",
        "client_secret_file",
        "token_url",
        "device_authorization_url",
        "scope",
        "mechanism",
        "ca_file",
    }
)


@dataclass(frozen=True)
class OAuth2Settings:
    """One upstream's OAuth client. The client secret stays in its file (read when a
    request needs it), so these settings can be logged and compared freely."""

    provider: str
    client_id: str
    token_url: str
    device_authorization_url: str
    scope: str
    client_secret_file: str | None = None
    mechanism: str = "auto"
    ca_file: str | None = None

    def client_secret(self) -> str | None:
        """The secret from ``client_secret_file`` (first line), or None for a public client."""
        if self.client_secret_file is None:
            return None
        text = Path(self.client_secret_file).read_text(encoding="utf-8")
        return text.splitlines()[0].strip() if text.strip() else None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a token or device endpoint, or None when it can."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return "http:// is only allowed to a loopback host (use https://)"
    return None


def parse_oauth2_table(
    table: Any, *, prefix: str = "oauth2"
) -> tuple[OAuth2Settings | None, list[str]]:
    """``[upstreams.oauth2]`` as :class:`OAuth2Settings`, plus ``"key: problem"`` strings
    (keys named ``{prefix}.key``). Settings are None whenever there is a problem."""
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{prefix}.{key}: {text}" if key else f"{prefix}: {text}")

    if not isinstance(table, dict):
        problem("", "must be a table")
        return None, problems
    for key in sorted(set(table) - KEYS):
        problem(key, "unknown key")

    def text(key: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            problem(key, "must be a non-empty string")
            return None
        return value.strip()

    provider = text("provider")
    if provider is None and "provider" not in table:
        problem("provider", f"required: one of {', '.join(PROVIDER_NAMES)}")
    elif provider is not None and provider not in PROVIDER_NAMES:
        problem("provider", f"must be one of {', '.join(PROVIDER_NAMES)}")
        provider = None
    client_id = text("client_id")
    if client_id is None and "client_id" not in table:
        problem("client_id", "required (the id your app registration got from the provider)")
    preset = PROVIDERS.get(provider or "")
    values: dict[str, str | None] = {}
    for key in ("token_url", "device_authorization_url", "scope"):
        values[key] = text(key, getattr(preset, key) if preset else None)
        if values[key] is None and key not in table and provider == "custom":
            problem(key, 'required for provider = "custom"')
    for key in ("token_url", "device_authorization_url"):
        url = values[key]
        if url is not None and (why := url_problem(url)) is not None:
            problem(key, why)
    mechanism = text("mechanism", "auto")
    if mechanism is not None and mechanism not in MECHANISMS:
        problem("mechanism", f"must be one of {', '.join(MECHANISMS)}")
    secret_file = text("client_secret_file")
    ca_file = text("ca_file")
    for key, path in (("client_secret_file", secret_file), ("ca_file", ca_file)):
        if path is not None and not Path(path).is_file():
            problem(key, f"no such file: {path}")
    if problems or None in (provider, client_id, mechanism, *values.values()):
        return None, problems
    return (
        OAuth2Settings(
            provider=provider,  # type: ignore[arg-type]
            client_id=client_id,  # type: ignore[arg-type]
            token_url=values["token_url"],  # type: ignore[arg-type]
            device_authorization_url=values["device_authorization_url"],  # type: ignore[arg-type]
            scope=values["scope"],  # type: ignore[arg-type]
            client_secret_file=secret_file,
            mechanism=mechanism,  # type: ignore[arg-type]
            ca_file=ca_file,
        ),
        problems,
    )
