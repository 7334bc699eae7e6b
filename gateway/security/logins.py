"""One connection's side of the login limits, for every server (IMAP, ManageSieve,
submission): failure budgets and delays around a password check, and the cap on logged-in
connections per user and address.

The counts themselves live in the server's shared factory
(:class:`~gateway.security.connections.ConnectionCounts`) and the penalty
(:class:`~gateway.security.penalty.AuthPenalty`, one per service, so failures on any
protocol count together); this module decides, for one password check, what the login
command is resumed with and after what delay, and remembers the user slot the connection
holds. Each server supplies its own refusal errors (IMAP ``NO [UNAVAILABLE]`` /
``[LIMIT]`` of RFC 5530, ManageSieve ``NO (TRYLATER)``, SMTP 454).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from gateway.security.penalty import LoginAttempt

log = structlog.get_logger(__name__)

Outcome = tuple[float, str | None, BaseException | None]
"""(delay in seconds, the canonical user name to resume with, or the error to throw)."""

MAX_LOGGED_USER = 128
"""Characters of a client-chosen user name that may appear in a log event."""


class LoginLimits:
    """The login limits as they apply to one connection.

    ``factory`` is the server's shared factory: its ``penalty`` (None: no penalties) is
    read at each check, and its ``take_user_slot``/``release_user_slot`` count logged-in
    connections. ``refused()`` is the error for a spent failure budget; ``over_limit()``
    the error for one connection too many of a user from an address, None when the
    protocol caps no such thing (then no slot is taken). ``protocol`` prefixes the log
    events (``imap.auth_refused``, ``imap.login_refused``).
    """

    def __init__(
        self,
        factory: Any,
        *,
        protocol: str,
        refused: Callable[[], BaseException],
        over_limit: Callable[[], BaseException] | None,
    ) -> None:
        self.factory = factory
        self.protocol = protocol
        self.refused = refused
        self.over_limit = over_limit
        self.slot: tuple[str, str] | None = None
        """The (user, address) connection slot this connection holds, once logged in."""
        self.attempt: LoginAttempt | None = None
        """The password check under way, counted against the failure budgets."""
        self._withdraw: Callable[[], None] | None = None
        """Withdraws this connection's attempt from its source's queue while it waits."""

    def begin(self, host: str, peer: str, user: str, go: Callable[[Outcome | None], None]) -> None:
        """Before a password check: ``go(None)`` when it may start (it now counts as in
        flight, :attr:`attempt`), at once or once a check from the same source ends (a
        crowded NAT waits, :meth:`AuthPenalty.enter`); ``go(refusal)`` when the source's
        or the user's failure budget is spent, after the source's current delay so a retry
        loop gains nothing. :meth:`release` withdraws an attempt still waiting."""
        penalty = self.factory.penalty
        if penalty is None:
            go(None)
            return

        def turn(attempt: LoginAttempt | None, reason: str | None) -> None:
            self._withdraw = None
            if attempt is not None:
                self.attempt = attempt
                go(None)
                return
            log.warning(
                f"{self.protocol}.auth_refused",
                user=user[:MAX_LOGGED_USER],
                peer=peer,
                budget=reason,
            )
            go((penalty.current_delay(host), None, self.refused()))

        self._withdraw = penalty.enter(host, user, turn)

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
        if self.slot is None and self.over_limit is not None:
            key = (canonical, host)
            if not self.factory.take_user_slot(key):
                log.warning(
                    f"{self.protocol}.login_refused", user=canonical, peer=peer, reason="limit"
                )
                return 0.0, None, self.over_limit()
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

    def withdraw(self) -> None:
        """Leave the source's queue if still waiting for a check's turn (the connection
        ended): the check never starts."""
        withdraw, self._withdraw = self._withdraw, None
        if withdraw is not None:
            withdraw()

    def release(self) -> None:
        """Give the user slot back (the connection ended, or the login failed after all),
        and leave the queue if still waiting for a check's turn."""
        self.withdraw()
        key, self.slot = self.slot, None
        if key is not None:
            self.factory.release_user_slot(key)
