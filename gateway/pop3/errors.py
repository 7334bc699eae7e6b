"""What can go wrong talking to a POP3 upstream, as :class:`FetchError` kinds, and the one
mapping from Twisted/OpenSSL/POP3 failures to them (:func:`translate_failure`).

Errors reach callers as :class:`FetchError` subclasses with a stable ``kind`` for logs,
metrics and status; the server's own ``-ERR`` text is cut to :data:`MAX_SERVER_TEXT`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.mail.pop3 import LineTooLong as TwistedLineTooLong
from twisted.mail.pop3 import ServerErrorResponse
from twisted.python.failure import Failure

from gateway.pop3.framing import MAX_LINE_LENGTH
from gateway.store.errors import LeaseLost

MAX_SERVER_TEXT = 200
"""How much of a server's -ERR text is kept in an error message."""


class FetchError(Exception):
    """A fetch pass failed; ``kind`` is a short stable word for logs and status.

    ``result`` is set by the fetcher to what the pass achieved before failing (messages
    delivered before the failure stay delivered)."""

    kind = "error"
    result: Any = None


class UpstreamConfigError(FetchError):
    """The upstream's settings cannot be used safely (e.g. an unreadable ca_file)."""

    kind = "config"


class UpstreamConnectError(FetchError):
    """The TCP connection could not be made (refused, unreachable, DNS)."""

    kind = "connect"


class TLSVerificationError(FetchError):
    """The server's certificate is untrusted or does not name the host (RFC 6125 §6)."""

    kind = "tls_verify"


class UpstreamTLSError(FetchError):
    """The TLS handshake failed for a reason other than certificate verification."""

    kind = "tls"


class StartTLSUnavailable(FetchError):
    """tls = "starttls" but the server does not offer STLS (RFC 2595 §4): no login."""

    kind = "starttls_unavailable"


class LoginFailed(FetchError):
    """The server refused the credentials or the configured mechanism."""

    kind = "auth"


class OAuthLoginNeeded(LoginFailed):
    """The OAuth grant is gone (``invalid_grant``, no token file, a rejected client):
    only ``popgate oauth login NAME`` fixes it. Same ``kind`` as any refused login."""


class OAuthTokenUnavailable(FetchError):
    """The token endpoint could not be reached to refresh the access token (retried with
    backoff first): temporary."""

    kind = "oauth_token"


class UpstreamInUse(FetchError):
    """``-ERR [IN-USE]`` (RFC 2449 §8.1.1): another session holds the maildrop lock.
    Temporary, and not a refused login."""

    kind = "in_use"


class LoginDelayed(FetchError):
    """``-ERR [LOGIN-DELAY]`` (RFC 2449 §8.1.2): logged in again too soon."""

    kind = "login_delay"


class UpstreamSysTemp(FetchError):
    """``-ERR [SYS/TEMP]`` (RFC 3206 §4): a temporary problem on the server's side."""

    kind = "sys_temp"


class UpstreamSysPerm(FetchError):
    """``-ERR [SYS/PERM]`` (RFC 3206 §4): a problem on the server's side that will not go
    away without a person (an account disabled, a mailbox gone)."""

    kind = "sys_perm"


class UIDLUnsupported(FetchError):
    """The server has no UIDL (RFC 1939 §7 makes it optional); exactly-once needs it."""

    kind = "uidl_unsupported"


class StepTimeout(FetchError):
    """No answer within the per-step timeout."""

    kind = "timeout"


class UpstreamConnectionLost(FetchError):
    """The connection closed while a command was outstanding."""

    kind = "connection_lost"


class UpstreamLineTooLong(FetchError):
    """A line exceeded :data:`MAX_LINE_LENGTH`; the connection was dropped."""

    kind = "line_too_long"


class UpstreamServerError(FetchError):
    """The server answered -ERR to a command the pass cannot do without."""

    kind = "server_error"


class UpstreamProtocolError(FetchError):
    """The server broke the protocol (a status line that is neither +OK nor -ERR)."""

    kind = "protocol"


class FetchCancelled(FetchError):
    """The pass was cancelled (service stopping); the connection was dropped without QUIT."""

    kind = "cancelled"


class InsecureLoginRefused(FetchError):
    """Credentials would have gone over a connection that should be encrypted but is not."""

    kind = "insecure"


class StoreFailed(FetchError):
    """The store refused a delivery for a reason other than size: the pass stops before
    any DELE, so nothing undelivered can be deleted."""

    kind = "store"


class LeaseLostError(FetchError):
    """This node lost its lease on the upstream mid-pass (another node took it over, or
    it expired: gateway/store/leases.py): the pass committed nothing more and dropped the
    connection without QUIT, so none of its DELEs took effect."""

    kind = "lease_lost"


class HeldElsewhere(FetchError):
    """Another node holds the upstream's lease, so this node does not poll it (a fetch
    asked of this node says which node to ask instead)."""

    kind = "held_elsewhere"

    def __init__(self, upstream: str, node: str | None) -> None:
        where = f"node {node}" if node else "another node"
        super().__init__(f"upstream {upstream} is polled by {where}, which holds its lease")
        self.node = node


class MessageTooLargeWhileStreaming(FetchError):
    """A message grew far past max_message_size while streaming; the connection was dropped."""

    kind = "too_large"


def server_text(value: Any) -> str:
    if isinstance(value, ServerErrorResponse):
        value = value.args[0] if value.args else b""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text[:MAX_SERVER_TEXT]


_RESPONSE_CODES: dict[str, type[FetchError]] = {
    "IN-USE": UpstreamInUse,
    "LOGIN-DELAY": LoginDelayed,
    "SYS/TEMP": UpstreamSysTemp,
    "SYS/PERM": UpstreamSysPerm,
    "AUTH": LoginFailed,
}
"""RFC 2449 §8 and RFC 3206 §4 response codes and the error each one means."""


def response_code(text: Any) -> str | None:
    """The extended response code at the start of an -ERR text (``[SYS/TEMP] ...`` →
    ``"SYS/TEMP"``; RFC 2449 §8: hierarchical, "/"-separated, upper-cased here)."""
    line = server_text(text)
    if not line.startswith("["):
        return None
    end = line.find("]")
    if end <= 1:
        return None
    return line[1:end].strip().upper() or None


def login_refused(value: Any, host: str, what: str = "the login") -> FetchError:
    """The error for an -ERR answering PASS, APOP or AUTH: its response code tells a
    locked maildrop, a too-early login and a server fault from wrong credentials
    (``[AUTH]`` or no code)."""
    text = server_text(value)
    code = response_code(value)
    cls = _RESPONSE_CODES.get(code or "", LoginFailed)
    if cls is UpstreamInUse:
        return cls(f"{host} says the mailbox is in use by another session: {text}")
    if cls is LoginDelayed:
        return cls(f"{host} refused a login this soon after the last one: {text}")
    if cls in (UpstreamSysTemp, UpstreamSysPerm):
        return cls(f"{host} refused {what} ({code}): {text}")
    return LoginFailed(f"{host} refused {what}: {text}")


def _is_tls_verification(exc: BaseException) -> str | None:
    """A human reason if ``exc`` is a certificate verification failure, else None."""
    try:
        from service_identity import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - service_identity is a dependency
        VerificationError = CertificateError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, VerificationError):
        return f"certificate does not match the host name ({exc})"
    if isinstance(exc, CertificateError):
        return f"unusable certificate ({exc})"
    from OpenSSL import SSL

    if isinstance(exc, SSL.Error) and "certificate verify failed" in str(exc):
        return "certificate verify failed (issuer not trusted, expired, or not valid for TLS)"
    return None


def translate_failure(failure: Failure | BaseException, host: str, step: str) -> FetchError:
    """Map a Twisted/OpenSSL/POP3 failure during ``step`` to a :class:`FetchError`."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, defer.CancelledError):
        return FetchCancelled(f"{step} with {host} cancelled")
    if isinstance(exc, LeaseLost):
        return LeaseLostError(f"{step} with {host} stopped: {exc}")
    reason = _is_tls_verification(exc)
    if reason is not None:
        return TLSVerificationError(f"TLS certificate verification failed for {host}: {reason}")
    from OpenSSL import SSL

    if isinstance(exc, SSL.Error):
        return UpstreamTLSError(f"TLS handshake with {host} failed during {step}: {exc}")
    if isinstance(exc, error.TimeoutError):
        return StepTimeout(f"{host} did not answer within the timeout during {step}")
    if isinstance(exc, TwistedLineTooLong):
        return UpstreamLineTooLong(
            f"{host} sent a line longer than {MAX_LINE_LENGTH} octets during {step}"
        )
    if isinstance(exc, ServerErrorResponse):
        code = response_code(exc)
        if code in ("SYS/TEMP", "SYS/PERM", "IN-USE"):
            return login_refused(exc, host, step)
        return UpstreamServerError(f"{host} refused {step}: {server_text(exc)}")
    if isinstance(exc, error.ConnectingCancelledError | error.ConnectError | error.DNSLookupError):
        return UpstreamConnectError(f"cannot connect to {host}: {exc}")
    if isinstance(exc, error.ConnectionDone | error.ConnectionLost):
        return UpstreamConnectionLost(f"{host} closed the connection during {step}")
    if isinstance(exc, OSError):
        return UpstreamConnectError(f"cannot connect to {host}: {exc}")
    return FetchError(f"{step} with {host} failed: {type(exc).__name__}: {exc}")
