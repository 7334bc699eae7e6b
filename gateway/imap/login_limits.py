"""One connection's side of the login limits: failure budgets and delays, and the cap on
logged-in connections per user and address (RFC 5530 ``UNAVAILABLE`` and ``LIMIT``).

The counts themselves live in the shared factory (:mod:`gateway.imap.factory`) and the
penalty (:class:`~gateway.security.penalty.AuthPenalty`); this module decides, for one
password check, what the LOGIN or AUTHENTICATE command is resumed with and after what
delay, and remembers the user slot the connection holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from gateway.imap.handler import Refused, logged
from gateway.security.penalty import LoginAttempt

if TYPE_CHECKING:
    from gateway.imap.factory import IMAPServerFactory

log = structlog.get_logger(__name__)

Outcome = tuple[float, str | None, BaseException | None]
"""(delay in seconds, the canonical user name to resume with, or the error to throw)."""


class LoginLimits:
    """The login limits as they apply to one connection."""

    def __init__(self, factory: IMAPServerFactory) -> None:
        self.factory = factory
        self.slot: tuple[str, str] | None = None
        """The (user, address) connection slot this connection holds, once logged in."""
        self.attempt: LoginAttempt | None = None
        """The password check under way, counted against the failure budgets."""

    def begin(self, host: str, peer: str, user: str) -> Outcome | None:
        """Before a password check: refuse it unchecked when the source's or the user's
        failure budget is spent, counting checks under way (``NO [UNAVAILABLE]``,
        RFC 5530), after the source's current delay so a retry loop gains nothing.
        None: go ahead and check (the check now counts as in flight)."""
        penalty = self.factory.penalty
        if penalty is None:
            return None
        reason = penalty.refusal(host, user)
        if reason is None:
            self.attempt = penalty.begin(host, user)
            return None
        log.warning("imap.auth_refused", user=logged(user), peer=peer, budget=reason)
        error = Refused("Too many failed logins; try again later", "UNAVAILABLE")
        return penalty.current_delay(host), None, error

    def checked(self, host: str, peer: str, user: str, canonical: str | None) -> Outcome:
        """After a password check: a failure is answered after the source's doubling
        delay (the same for unknown users and wrong passwords, so timing tells nothing);
        a success resets it and takes one of the user's per-address connection slots."""
        attempt, self.attempt = self.attempt, None
        if canonical is None:
            delay = attempt.failed() if attempt is not None else 0.0
            return delay, None, None
        if attempt is not None:
            attempt.succeeded(canonical)
        if self.slot is None:
            key = (canonical, host)
            if not self.factory.take_user_slot(key):
                log.warning("imap.login_refused", user=canonical, peer=peer, reason="limit")
                error = Refused("Too many connections for this user from your address", "LIMIT")
                return 0.0, None, error
            self.slot = key
        return 0.0, canonical, None

    def settle(self, attempt: LoginAttempt | None, canonical: str | None) -> None:
        """A check's outcome arrived after its command was dropped (the client hung up):
        it still counts, so hanging up does not make a guess free."""
        if attempt is None:
            return
        if self.attempt is attempt:
            self.attempt = None
        attempt.record(canonical)

    def abandon(self, attempt: LoginAttempt | None) -> None:
        """The check itself failed (a server error): it no longer counts."""
        if attempt is None:
            return
        if self.attempt is attempt:
            self.attempt = None
        attempt.abandoned()

    def release(self) -> None:
        """Give the user slot back (the connection ended, or the login failed after all)."""
        key, self.slot = self.slot, None
        if key is not None:
            self.factory.release_user_slot(key)
