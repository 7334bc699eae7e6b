"""IMAP's login limits: the shared :class:`~gateway.security.logins.LoginLimits` with
IMAP's answers, RFC 5530 ``NO [UNAVAILABLE]`` for a spent failure budget and
``NO [LIMIT]`` for one logged-in connection too many of a user from an address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.imap.handler import Refused
from gateway.security.logins import LoginLimits as SharedLoginLimits

if TYPE_CHECKING:
    from gateway.imap.factory import IMAPServerFactory


def _refused() -> Refused:
    return Refused("Too many failed logins; try again later", "UNAVAILABLE")


def _over_limit() -> Refused:
    return Refused("Too many connections for this user from your address", "LIMIT")


class LoginLimits(SharedLoginLimits):
    """The login limits as they apply to one IMAP connection (the answers are module
    functions, not closures made per connection: 10,000 IDLE connections, issue 19)."""

    def __init__(self, factory: IMAPServerFactory) -> None:
        super().__init__(factory, protocol="imap", refused=_refused, over_limit=_over_limit)
