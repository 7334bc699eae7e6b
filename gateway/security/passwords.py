"""Password hashing for local IMAP users: salted scrypt from hashlib, in a self-describing string.

The format ``scrypt$n$r$p$salt_b64$hash_b64`` carries its parameters so that a later
release can raise the cost without invalidating stored hashes.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import hmac
import os

SCHEME = "scrypt"
# RFC 7914 parameters: n=2**14, r=8 costs ~16 MiB and ~50 ms here, a fair price per login.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MAXMEM = 64 * 1024 * 1024

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""

RETURNED_BLOCK_SIZE = 8 * 1024 * 1024
"""Blocks of at least this many bytes are mapped for themselves and unmapped when freed:
scrypt's 16 MiB working area (128 * r * n bytes, allocated by OpenSSL) among them."""


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


def return_scrypt_memory() -> bool:
    """Make scrypt's working area go back to the operating system after each check
    (issue 19: 10,000 IDLE connections within 200 MiB); False where this is not glibc.

    glibc serves a block above its mmap threshold (128 KiB at first) with a mapping of
    its own, but raises the threshold to the size of each such block freed, up to
    32 MiB. So after the first check, scrypt's 16 MiB come from the heap of the calling
    thread's arena, and each password-pool thread keeps 16 MiB resident for good (the
    gateway's two threads: 32 MiB, a sixth of the budget). A fixed threshold of
    :data:`RETURNED_BLOCK_SIZE` maps and unmaps it every time (a few hundred µs of page
    faults per ~30 ms check) and leaves smaller blocks (messages, buffers) as they were.
    Process-wide and idempotent; done when this module is first imported, before any
    check.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (or no libc symbols)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, RETURNED_BLOCK_SIZE))


return_scrypt_memory()

DUMMY_HASH = f"{SCHEME}${N}${R}${P}${_b64(bytes(SALT_BYTES))}${_b64(bytes(HASH_BYTES))}"
"""Checked when the user does not exist, so that an unknown user costs the same scrypt
run as a wrong password (no user enumeration by timing); its answer is ignored. Only its
parameters matter, so it is a constant: hashing a random password here cost every
process start (the gateway's, each CLI command's) one scrypt run, ~0.1 s (issue 19,
start-up)."""
