"""POSTing an OAuth form and reading the JSON answer, over treq on the injected reactor.

HTTPS is verified against the system store, or against every certificate in ``ca_file``
(a private CA in tests or an intercepting proxy's); ``http://`` is refused unless the host
is loopback (:func:`gateway.oauth.settings.url_problem`). Answers are bounded
(:data:`MAX_RESPONSE`); any transport failure becomes :class:`TokenEndpointUnavailable`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.internet import defer, ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from gateway.oauth.grant import OAuthError, TokenEndpointUnavailable
from gateway.oauth.settings import url_problem

MAX_RESPONSE = 256 * 1024
"""Largest token-endpoint answer read (real ones are a few KB)."""

REQUEST_TIMEOUT = 30.0
"""Seconds one token request may take, connect to last byte."""

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class _TooLarge(Exception):
    pass


def _trust_root(ca_file: str | None) -> Any:
    if ca_file is None:
        return ssl.platformTrust()
    try:
        blocks = _PEM_CERT_RE.findall(Path(ca_file).read_bytes())
    except OSError as e:
        raise OAuthError(f"cannot read ca_file {ca_file}: {e.strerror}", "config") from None
    if not blocks:
        raise OAuthError(f"ca_file {ca_file} holds no PEM certificate", "config")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


class FormPoster:
    """One HTTP client per upstream (or per login): ``post(url, fields)`` fires with
    ``(status, parsed JSON or None)``."""

    def __init__(
        self, reactor: Any, *, ca_file: str | None = None, timeout: float = REQUEST_TIMEOUT
    ):
        import treq.client

        self.reactor = reactor
        self.timeout = timeout
        policy = BrowserLikePolicyForHTTPS(trustRoot=_trust_root(ca_file))
        self._client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy))

    async def _post(self, url: str, fields: dict[str, str]) -> tuple[int, Any]:
        why = url_problem(url)
        if why is not None:
            raise OAuthError(f"refusing token endpoint {url}: {why}", "config")
        try:
            response = await self._client.post(
                url,
                data=fields,
                headers={b"Accept": [b"application/json"]},
                timeout=self.timeout,
                reactor=self.reactor,
            )
            size = 0
            chunks: list[bytes] = []

            def collect(data: bytes) -> None:
                nonlocal size
                size += len(data)
                if size > MAX_RESPONSE:
                    raise _TooLarge()
                chunks.append(data)

            import treq

            await treq.collect(response, collect)
        except defer.CancelledError:
            raise
        except _TooLarge:
            raise TokenEndpointUnavailable(
                f"{url} answered more than {MAX_RESPONSE} bytes"
            ) from None
        except Exception as e:
            raise TokenEndpointUnavailable(
                f"{url}: {type(e).__name__}: {_reason(e)}", "unavailable"
            ) from None
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            body = None
        return response.code, body

    def post(self, url: str, fields: dict[str, str]) -> defer.Deferred[tuple[int, Any]]:
        return defer.Deferred.fromCoroutine(self._post(url, fields))


def _reason(e: Exception) -> str:
    """A short reason; Twisted's ResponseNeverReceived etc. wrap the real failure."""
    inner = getattr(e, "reasons", None)
    if inner:
        return "; ".join(str(getattr(r, "value", r))[:120] for r in inner)
    return str(e)[:200]
