"""Opening an upstream session: verified TLS (implicit or STLS) and an explicit login.

Nothing is guessed: TLS verifies the chain and the host name (RFC 2595 §2.4, RFC 6125 §6),
STLS is only used when CAPA offers it, and :func:`login` sends exactly the configured
mechanism (USER/PASS, APOP, SASL PLAIN), refusing to send credentials on a connection that
should be encrypted but is not. Failures are :class:`~gateway.pop3.errors.FetchError` kinds.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.mail.pop3 import ServerErrorResponse

from gateway.core.net import is_loopback_host
from gateway.pop3.client import UpstreamClient
from gateway.pop3.errors import (
    FetchError,
    InsecureLoginRefused,
    LoginFailed,
    StartTLSUnavailable,
    UpstreamConfigError,
    server_text,
    translate_failure,
)
from gateway.pop3.upstream import Upstream

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class _UpstreamFactory(Factory):
    def __init__(self, reactor: Any, host: str, timeout: float) -> None:
        self._reactor = reactor
        self._host = host
        self._timeout = timeout

    def buildProtocol(self, addr: Any) -> UpstreamClient:
        client = UpstreamClient(self._reactor, self._host, self._timeout)
        client.factory = self
        return client


# ---- TLS --------------------------------------------------------------------------


def trust_root(ca_file: str | None) -> Any:
    """The trust anchors for verifying an upstream: ``ca_file`` (every PEM certificate in
    it) when given, else the system store (:func:`twisted.internet.ssl.platformTrust`)."""
    if ca_file is None:
        return ssl.platformTrust()
    try:
        pem = Path(ca_file).read_bytes()
    except OSError as e:
        raise UpstreamConfigError(f"cannot read ca_file {ca_file}: {e.strerror}") from None
    blocks = _PEM_CERT_RE.findall(pem)
    if not blocks:
        raise UpstreamConfigError(f"ca_file {ca_file} holds no PEM certificate")
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise UpstreamConfigError(f"ca_file {ca_file}: bad certificate: {e}") from None
    return ssl.trustRootFromCertificates(certificates)


def client_tls_options(upstream: Upstream) -> Any:
    """Client TLS options that verify the chain against :func:`trust_root` and the
    certificate against ``upstream.host`` (DNS name or IP literal, RFC 6125 §6)."""
    return ssl.optionsForClientTLS(upstream.host, trustRoot=trust_root(upstream.ca_file))


# ---- connect and login ------------------------------------------------------------


async def _connect(upstream: Upstream, reactor: Any) -> UpstreamClient:
    host = upstream.host
    if upstream.tls not in ("implicit", "starttls", "none"):
        raise UpstreamConfigError(f"unknown tls mode {upstream.tls!r}")
    if upstream.tls == "none" and not is_loopback_host(host) and not upstream.allow_plaintext:
        raise UpstreamConfigError(f'tls = "none" to {host} would send the password in clear')
    options = client_tls_options(upstream) if upstream.tls != "none" else None

    endpoint: Any = HostnameEndpoint(reactor, host, upstream.port, timeout=upstream.timeout)
    if upstream.tls == "implicit":
        endpoint = wrapClientTLS(options, endpoint)
    factory = _UpstreamFactory(reactor, host, upstream.timeout)
    try:
        client: UpstreamClient = await endpoint.connect(factory)
    except Exception as e:
        raise translate_failure(e, host, "connect") from None

    try:
        try:
            await client.greeting
        except Exception as e:
            raise translate_failure(e, host, "greeting") from None
        if upstream.tls == "starttls":
            await _start_tls(client, options, host)
        if upstream.tls != "none" and not client.secure:
            raise InsecureLoginRefused(f"connection to {host} is not encrypted")
    except BaseException:
        client.abort()
        raise
    return client


async def _start_tls(client: UpstreamClient, options: Any, host: str) -> None:
    """STLS, RFC 2595 §4: only if offered in CAPA, with verifying options, and the
    capability cache dropped afterwards (Twisted re-reads CAPA over TLS)."""
    try:
        caps = await client.capabilities(useCache=False)
    except Exception as e:
        raise translate_failure(e, host, "CAPA") from None
    if b"STLS" not in caps:
        raise StartTLSUnavailable(f"{host} does not offer STLS; refusing to log in without TLS")
    try:
        await client.startTLS(options)
    except Exception as e:
        raise translate_failure(e, host, "STLS") from None


def connect(upstream: Upstream, reactor: Any) -> defer.Deferred[UpstreamClient]:
    """Connect to ``upstream`` and return a client past the greeting and, for
    "implicit" and "starttls", on a verified TLS connection. Nothing is sent before TLS
    except, for "starttls", CAPA and STLS. Fails with a :class:`FetchError`."""
    return defer.Deferred.fromCoroutine(_connect(upstream, reactor))


async def _login(client: UpstreamClient, upstream: Upstream) -> None:
    host = upstream.host
    if upstream.tls != "none" and not client.secure:
        raise InsecureLoginRefused(f"refusing to send credentials to {host} without TLS")
    user = upstream.username.encode("utf-8")
    password = upstream.password.encode("utf-8")
    mechanism = upstream.auth
    if mechanism in ("auto", "plain"):
        mechanism = await _choose_mechanism(client, upstream)
    try:
        if mechanism == "apop":
            # RFC 1939 §7: only when configured; the digest is MD5(challenge + secret).
            if client.serverChallenge is None:
                raise LoginFailed(f"{host} offered no APOP challenge in its greeting")
            digest = hashlib.md5(client.serverChallenge + password).hexdigest()
            await client.apop(user, digest.encode("ascii"))
        elif mechanism == "plain":
            # RFC 5034 §4 with an initial response (RFC 4616 message).
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            await client.sendShort(b"AUTH", b"PLAIN " + token)
        else:
            # USER/PASS (RFC 1939 §7), never APOP by guesswork.
            await client.user(user)
            await client.password(password)
    except ServerErrorResponse as e:
        raise LoginFailed(f"{host} refused the login: {server_text(e)}") from None
    except FetchError:
        raise
    except Exception as e:
        raise translate_failure(e, host, "login") from None


async def _choose_mechanism(client: UpstreamClient, upstream: Upstream) -> str:
    """ "auto": SASL PLAIN (RFC 5034) when CAPA (RFC 2449, read again over TLS) offers it,
    else USER/PASS. "plain": SASL PLAIN, refused up front when CAPA answers without
    offering it (a server without CAPA is simply tried)."""
    try:
        # After STLS Twisted has already re-read CAPA over TLS (RFC 2595 §4: the list
        # from before TLS must be discarded), so that cached answer is the one to trust.
        caps = await client.capabilities(useCache=bool(client.startedTLS))
    except Exception as e:
        raise translate_failure(e, upstream.host, "CAPA") from None
    offered = [m.upper() for m in (caps.get(b"SASL") or [])]
    if b"PLAIN" in offered:
        return "plain"
    if upstream.auth == "plain":
        if caps:
            raise LoginFailed(f'{upstream.host} does not offer SASL PLAIN (auth = "plain")')
        return "plain"
    return "user"


def login(client: UpstreamClient, upstream: Upstream) -> defer.Deferred[None]:
    """Authenticate with the configured mechanism (USER/PASS, APOP, AUTH PLAIN, or for
    "auto" AUTH PLAIN when offered else USER/PASS; APOP only when configured);
    fails with :class:`LoginFailed` (or another :class:`FetchError`)."""
    return defer.Deferred.fromCoroutine(_login(client, upstream))
