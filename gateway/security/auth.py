"""Who may log in to IMAP: the local user table, checked in constant time.

The IMAP server only sees the :class:`Authenticator` protocol, so that a reload of the
user table (SIGHUP, `popgate adduser`) swaps one object and touches no session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

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
    """Authenticator over ``{user: scrypt hash}`` from the config file."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)

    def replace(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)

    def users(self) -> list[str]:
        return sorted(self._hashes)

    def knows(self, user: str) -> bool:
        return user in self._hashes

    def authenticate(self, user: str, password: bytes) -> str | None:
        stored = self._hashes.get(user)
        ok = verify_password(password, stored if stored is not None else DUMMY_HASH)
        return user if ok and stored is not None else None
