"""Who may log in to IMAP: the local user table, checked in constant time.

The IMAP server only sees the :class:`Authenticator` protocol, so that a reload of the
user table (SIGHUP, `popgate adduser`) swaps one object and touches no session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.security.authcache import VerifierCache
from gateway.security.passwords import DUMMY_HASH, verify_password


class Authenticator(Protocol):
    def authenticate(self, user: str, password: bytes) -> str | None:
        """The canonical user name if the password is right, else None.

        Unknown users and wrong passwords are indistinguishable (same work, same answer).
        """


class UserDirectory(Protocol):
    """Who has an account right now (after the last reload). Sessions ask it before
    every command, so a deleted user's open sessions end at their next command."""

    def knows(self, user: str) -> bool:
        """True while ``user`` (a canonical name) has an account."""


class PasswordTable:
    """Authenticator over ``{user: scrypt hash}`` from the config file.

    With a ``cache`` (:mod:`gateway.security.authcache`), a password that passed scrypt
    recently passes again without it; a new table (reload) empties the cache. Unknown
    users never touch the cache: they cost one scrypt check of a dummy hash, as before.
    """

    def __init__(self, hashes: Mapping[str, str], cache: VerifierCache | None = None) -> None:
        self._hashes = dict(hashes)
        self.cache = cache

    def replace(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)
        if self.cache is not None:
            self.cache.clear()

    def users(self) -> list[str]:
        return sorted(self._hashes)

    def knows(self, user: str) -> bool:
        return user in self._hashes

    def authenticate(self, user: str, password: bytes) -> str | None:
        stored = self._hashes.get(user)
        if stored is None:
            verify_password(password, DUMMY_HASH)
            return None
        if self.cache is None:
            ok = verify_password(password, stored)
        else:
            ok = self.cache.check(user, stored, password, lambda: verify_password(password, stored))
        return user if ok else None
