"""A cheap authenticator for tests: the real contract without scrypt's ~50 ms per login.

Every IMAP LOGIN in the unit suite used to run a real scrypt check; this one keeps the
:class:`gateway.security.auth.Authenticator` contract (canonical name or None, unknown
users and wrong passwords indistinguishable, constant-time comparison) and does the work
of one HMAC instead. The scrypt path stays covered where it is the subject: the password
tests, the security tests (``running_server(..., scrypt=True)``) and every end-to-end
test, which reads a real config.

It can never serve a real gateway: the config only accepts scrypt hashes
(``gateway.app.config``), and the package map in ``gateway/__init__.py`` forbids
``app`` and every package below it from importing ``gateway.testing``
(``tests/test_architecture.py`` enforces it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

_KEY = os.urandom(32)
"""Per-process key: passwords are compared as HMAC digests, so the comparison takes the
same time whatever the lengths and contents of the two passwords."""


def _digest(password: bytes) -> bytes:
    return hmac.new(_KEY, password, hashlib.sha256).digest()


_NOBODY = _digest(os.urandom(16))
"""Compared against for unknown users, so they cost the same work as a wrong password."""


class CheapPasswords:
    """Authenticator over ``{user: plaintext password}``, for tests only."""

    def __init__(self, passwords: Mapping[str, str | bytes]) -> None:
        self.replace(passwords)

    def replace(self, passwords: Mapping[str, str | bytes]) -> None:
        """Swap the table (as :meth:`PasswordTable.replace` does on reload)."""
        self._digests = {
            user: _digest(pw.encode() if isinstance(pw, str) else pw)
            for user, pw in passwords.items()
        }

    def users(self) -> list[str]:
        return sorted(self._digests)

    def knows(self, user: str) -> bool:
        """:class:`gateway.security.auth.UserDirectory`, as the password table offers it."""
        return user in self._digests

    def authenticate(self, user: str, password: bytes) -> str | None:
        stored = self._digests.get(user)
        ok = hmac.compare_digest(_digest(password), stored if stored is not None else _NOBODY)
        return user if ok and stored is not None else None
