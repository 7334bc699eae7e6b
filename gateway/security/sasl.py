"""SASL PLAIN (RFC 4616) for every server: decoding the message and the authorization rule.

IMAP ``AUTHENTICATE``, ManageSieve ``AUTHENTICATE`` and SMTP ``AUTH`` each read the
base64 their own way (continuation lines, strings, 334 challenges), then hand the
decoded message here, so the three cannot disagree on who a client may log in as.

The rule (RFC 4616 §2): popgate does not let anyone act as another user, so the
authorization identity must be empty or name the authenticating user. A foreign authzid
is *a failed login*, decided inside the password check (:func:`check_plain`): the
password is checked all the same, and the caller's penalty bookkeeping sees ``None``
exactly as for a wrong password, so the answer, its delay and the failure budgets are
the same (a correct password with a foreign authzid must not reset the source's penalty
or mark the address as a known one, nor be answered faster than a wrong one).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.security.auth import Authenticator


class MalformedPlain(ValueError):
    """Not ``[authzid] NUL authcid NUL passwd`` with UTF-8 identities."""


@dataclass(frozen=True)
class PlainCredentials:
    """One decoded PLAIN message. ``password`` stays bytes (never logged, never decoded)."""

    authzid: str
    authcid: str
    password: bytes

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"PlainCredentials(authzid={self.authzid!r}, authcid={self.authcid!r})"


def decode_plain(message: bytes) -> PlainCredentials:
    """RFC 4616 §2: ``message = [authzid] UTF8NUL authcid UTF8NUL passwd``.

    Raises :class:`MalformedPlain` for anything else (not exactly three fields, or an
    identity that is not UTF-8); the callers answer that as a failed login.
    """
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise MalformedPlain("expected authzid NUL authcid NUL password")
    authzid, authcid, password = parts
    try:
        return PlainCredentials(authzid.decode("utf-8"), authcid.decode("utf-8"), password)
    except UnicodeDecodeError:
        raise MalformedPlain("identities must be UTF-8") from None


def check_plain(authenticator: Authenticator, credentials: PlainCredentials) -> str | None:
    """The canonical user name if the password is right *and* the authzid is empty or
    names the same user; else None. Blocking (scrypt): run it where password checks run.

    The password is checked even when the authzid is foreign, so the work and the
    answer are those of any failed login."""
    canonical = authenticator.authenticate(credentials.authcid, credentials.password)
    proxy = credentials.authzid
    if canonical is not None and proxy and proxy not in (credentials.authcid, canonical):
        return None
    return canonical
