"""Signing in to the web page: the popgate login, with IMAP's password check, login
penalty and rule about passwords in clear.

The same :class:`~gateway.security.auth.Authenticator` checks the password (off the
reactor, on the injected ``run_blocking``, because scrypt takes tens of milliseconds)
and the same :class:`~gateway.security.penalty.AuthPenalty` as IMAP counts failures, so
guessing over the web costs what guessing over IMAP costs and the budgets are shared:
a refused source is refused on both.

Plaintext rule (as IMAP's listener policy, RFC 3501 §6.2.3 LOGINDISABLED): a password
may arrive over plain HTTP only from a loopback peer, unless the operator allowed it
(``allow_plaintext``); otherwise the sign-in form says to use HTTPS and the password is
never checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from gateway.core.net import is_loopback_host
from gateway.security.auth import Authenticator
from gateway.security.penalty import AuthPenalty, LoginAttempt

log = structlog.get_logger(__name__)

MAX_USER_LENGTH = 256
"""Longest user name looked at (longer ones fail like a wrong password)."""

MAX_PASSWORD_LENGTH = 1024
"""Longest password checked (scrypt's cost must not grow with client input)."""


def plaintext_allowed(*, secure: bool, peer_host: str, allow_plaintext: bool = False) -> bool:
    """Whether a password may be taken on this request: over TLS always, in clear only
    from this machine or where the operator said so."""
    return secure or allow_plaintext or is_loopback_host(peer_host)


class Refused(Exception):
    """The source's or the user's failure budget is spent: not even checked."""


class SignIn:
    """Checks a user name and password as IMAP LOGIN does; one per web service."""

    def __init__(
        self,
        authenticator: Authenticator,
        penalty: AuthPenalty | None,
        run_blocking: Callable[..., defer.Deferred[Any]],
        clock: IReactorTime,
    ) -> None:
        self.authenticator = authenticator
        self.penalty = penalty
        self.run_blocking = run_blocking
        self.clock = clock

    def _later(self, delay: float, value: Any) -> defer.Deferred[Any]:
        if delay <= 0:
            return defer.succeed(value) if not isinstance(value, Exception) else defer.fail(value)
        d: defer.Deferred[Any] = defer.Deferred()

        def fire() -> None:
            if isinstance(value, Exception):
                d.errback(value)
            else:
                d.callback(value)

        self.clock.callLater(delay, fire)
        return d

    def attempt(self, peer_host: str, user: str, password: bytes) -> defer.Deferred[str | None]:
        """Fires with the canonical user name, or None after the failure delay; fails
        with :class:`Refused` (after the source's current delay) when a budget is spent."""
        penalty = self.penalty
        if penalty is not None and (reason := penalty.refusal(peer_host, user)) is not None:
            log.warning("web.signin_refused", user=user[:64], peer=peer_host, budget=reason)
            return self._later(penalty.current_delay(peer_host), Refused(reason))
        if len(user) > MAX_USER_LENGTH or len(password) > MAX_PASSWORD_LENGTH or not user:
            return defer.succeed(None).addCallback(lambda _: self._failed(peer_host, user))
        # In flight from now: counted against the budgets (gateway/security/penalty.py).
        attempt = penalty.begin(peer_host, user) if penalty is not None else None
        d = self.run_blocking(self.authenticator.authenticate, user, password)

        def checked(canonical: str | None) -> Any:
            if canonical is None:
                return self._failed(peer_host, user, attempt)
            if attempt is not None:
                attempt.succeeded(canonical)
            log.info("web.signed_in", user=canonical, peer=peer_host)
            return canonical

        def broken(failure: Any) -> Any:
            if attempt is not None:
                attempt.abandoned()
            return failure

        return d.addCallbacks(checked, broken)

    def _failed(
        self, peer_host: str, user: str, attempt: LoginAttempt | None = None
    ) -> defer.Deferred[None]:
        log.info("web.signin_failed", user=user[:64], peer=peer_host)
        if attempt is not None:
            delay = attempt.failed()
        else:
            delay = self.penalty.failed(peer_host, user) if self.penalty is not None else 0.0
        return self._later(delay, None)
