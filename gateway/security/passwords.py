"""Password hashing for local IMAP users: salted scrypt from hashlib, in a self-describing string.

The format ``scrypt$n$r$p$salt_b64$hash_b64`` carries its parameters so that a later
release can raise the cost without invalidating stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCHEME = "scrypt"
# RFC 7914 parameters: n=2**14, r=8 costs ~16 MiB and ~50 ms here, a fair price per login.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str | bytes, *, salt: bytes | None = None) -> str:
    """A new salted hash for ``password``; what `popgate hash-password` prints."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password, salt=salt, n=N, r=R, p=P, maxmem=MAXMEM, dklen=HASH_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def is_hash(text: str) -> bool:
    """True if ``text`` is a well-formed hash this module can verify (config validation)."""
    try:
        _parse(text)
    except ValueError:
        return False
    return True


def _parse(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not a popgate scrypt hash (expected scrypt$n$r$p$salt$hash)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, base64.binascii.Error) as e:
        raise ValueError(f"malformed scrypt hash: {e}") from None
    if n < 2 or n & (n - 1) or not (1 <= r <= 64) or not (1 <= p <= 16) or len(digest) < 16:
        raise ValueError("scrypt hash parameters out of range")
    return n, r, p, salt, digest


def verify_password(password: str | bytes, stored: str) -> bool:
    """Constant-time check of ``password`` against ``stored``; False for a malformed hash."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    try:
        n, r, p, salt, digest = _parse(stored)
    except ValueError:
        return False
    candidate = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=len(digest))
    return hmac.compare_digest(candidate, digest)


_dummy_hash: str | None = None


def __getattr__(name: str) -> str:
    """``DUMMY_HASH``: a hash of a random password, checked when the user does not exist,
    so that an unknown user costs the same time as a wrong password (no user enumeration
    by timing). Made on first use (PEP 562; the authenticator imports it at start-up), so
    a process that only reads the config (``popgate fetch``, the ingest worker) does not
    pay an scrypt run (~0.15 s of CPU, 16 MiB) at import."""
    global _dummy_hash
    if name != "DUMMY_HASH":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _dummy_hash is None:
        _dummy_hash = hash_password(os.urandom(16))
    return _dummy_hash
