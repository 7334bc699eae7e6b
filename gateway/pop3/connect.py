"""Opening an upstream session: verified TLS (implicit or STLS) and an explicit login.

Nothing is guessed: TLS verifies the chain and the host name (RFC 2595 §2.4, RFC 6125 §6),
STLS is only used when CAPA offers it, and :func:`login` sends exactly the configured
mechanism (USER/PASS, APOP, SASL PLAIN, or for ``auth = "oauth2"`` SASL XOAUTH2/OAUTHBEARER
with the access token in ``upstream.password``), refusing to send credentials on a connection
that should be encrypted but is not. Failures are :class:`~gateway.pop3.errors.FetchError`
kinds; a refused login's RFC 2449/3206 response code picks the kind (:func:`login_refused`).
CAPA's ``LOGIN-DELAY n`` (RFC 2449 §6.8), when read, is left in ``client.login_delay``,
and ``PIPELINING`` (§6.6) in ``client.pipelining`` (the fetcher then pipelines RETRs).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import structlog
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
    login_refused,
    translate_failure,
)
from gateway.pop3.sasl import (
    MechanismUnavailable,
    SaslExchange,
    choose_mechanism,
    oauthbearer_response,
    xoauth2_response,
)
from gateway.pop3.upstream import Upstream

log = structlog.get_logger(__name__)

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
    elif client._capCache is not None:
        _note_login_delay(client, client._capCache)
    try:
        if mechanism == "oauth2":
            await _oauth_login(client, upstream)
        elif mechanism == "apop":
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
        raise _reported(login_refused(e, host), upstream) from None
    except FetchError as e:
        raise _reported(e, upstream) from None
    except Exception as e:
        raise translate_failure(e, host, "login") from None


def _reported(error: FetchError, upstream: Upstream) -> FetchError:
    """[IN-USE] gets its own event: another client holds the maildrop (RFC 2449 §8.1.1)."""
    if error.kind == "in_use":
        log.warning("pop3.in_use", upstream=upstream.name, message=str(error))
    return error


async def _capabilities(client: UpstreamClient, upstream: Upstream) -> dict[bytes, Any]:
    try:
        # After STLS Twisted has already re-read CAPA over TLS (RFC 2595 §4: the list
        # from before TLS must be discarded), so that cached answer is the one to trust.
        caps = await client.capabilities(useCache=bool(client.startedTLS))
    except Exception as e:
        raise translate_failure(e, upstream.host, "CAPA") from None
    _note_login_delay(client, caps)
    # RFC 2449 §6.6: the client may send commands without waiting for each answer.
    client.pipelining = b"PIPELINING" in caps
    return caps


def _note_login_delay(client: UpstreamClient, caps: dict[bytes, Any]) -> None:
    """RFC 2449 §6.8: ``LOGIN-DELAY n [USER]``, the least seconds between logins."""
    value = caps.get(b"LOGIN-DELAY")
    first = value[0] if isinstance(value, list) and value else value
    if isinstance(first, bytes) and first.isdigit():
        client.login_delay = float(int(first))


async def _oauth_login(client: UpstreamClient, upstream: Upstream) -> None:
    """SASL XOAUTH2 or OAUTHBEARER (RFC 7628) with the access token the pass was given.
    A refused token comes back as a JSON error continuation, answered (see
    :class:`SaslExchange`) and reported in the ``pop3.sasl_error`` event and the error."""
    host = upstream.host
    caps = await _capabilities(client, upstream)
    setting = upstream.oauth2.mechanism if upstream.oauth2 is not None else "auto"
    try:
        mechanism = choose_mechanism(setting, caps.get(b"SASL") if caps else None)
    except MechanismUnavailable as e:
        raise LoginFailed(f"{host}: {e}") from None
    if mechanism == "XOAUTH2":
        initial = xoauth2_response(upstream.username, upstream.password)
    else:
        initial = oauthbearer_response(upstream.username, upstream.password, host, upstream.port)
    exchange = SaslExchange(mechanism, initial)
    try:
        await client.sasl(exchange.arguments, exchange.respond)
    except ServerErrorResponse as e:
        error = login_refused(e, host, f"the OAuth token (AUTH {mechanism})")
        if exchange.error is not None:
            log.warning(
                "pop3.sasl_error", upstream=upstream.name, mechanism=mechanism, **exchange.error
            )
            if isinstance(error, LoginFailed):
                detail = ", ".join(f"{k}={v}" for k, v in exchange.error.items())
                error = LoginFailed(f"{error} [server said: {detail}]")
        raise error from None


async def _choose_mechanism(client: UpstreamClient, upstream: Upstream) -> str:
    """ "auto": SASL PLAIN (RFC 5034) when CAPA (RFC 2449, read again over TLS) offers it,
    else USER/PASS. "plain": SASL PLAIN, refused up front when CAPA answers without
    offering it (a server without CAPA is simply tried)."""
    caps = await _capabilities(client, upstream)
    offered = [m.upper() for m in (caps.get(b"SASL") or [])]
    if b"PLAIN" in offered:
        return "plain"
    if upstream.auth == "plain":
        if caps:
            raise LoginFailed(f'{upstream.host} does not offer SASL PLAIN (auth = "plain")')
        return "plain"
    return "user"


def login(client: UpstreamClient, upstream: Upstream) -> defer.Deferred[None]:
    """Authenticate with the configured mechanism (USER/PASS, APOP, AUTH PLAIN, AUTH
    XOAUTH2/OAUTHBEARER for "oauth2", or for "auto" AUTH PLAIN when offered else USER/PASS;
    APOP only when configured);
    fails with :class:`LoginFailed` (or another :class:`FetchError`)."""
    return defer.Deferred.fromCoroutine(_login(client, upstream))
