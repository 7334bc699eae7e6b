"""The verifier cache (issue 19): recent successful password checks, so that a device
that logs in again with the same password skips scrypt, and many devices of one user
logging in at once run scrypt once.

Why a cache at all: every LOGIN runs a full scrypt check (~28 ms of one CPU here), so
after a restart or a network blip 10,000 phones take minutes to get back. Dovecot answers
the same herd with its auth cache (``auth_cache_size``; it keeps a hash of the password
it verified and checks it cheaply, ``auth_cache_verify_password_with_worker`` only moves
that work to a worker).

What it must not do: give anyone who steals the state dir or the gateway's memory a
cheaper way to test password guesses than the scrypt hashes in the config. Any check the
server can run cheaply from its memory alone, an attacker holding that memory can run
too (a plain ``HMAC(key, password)`` with the key beside it is a fast hash, a million
guesses per second where scrypt allows ~36). So the key is never in this process:

* The tags are ``HMAC-SHA256(key, user, stored hash, password)`` computed by a
  :class:`KeyHolder`, a small child process that draws the key itself from
  ``os.urandom`` and only ever returns tags. A dump of the gateway's memory (a core file,
  ``/proc/PID/mem``, a memory-disclosure bug) holds tags without their key: testing a
  guess against them needs the key holder, so the cheapest offline test is still scrypt.
* Nothing is written to disk: the key dies with the child, the tags with the gateway.
* Only successes are stored. A failed check is never cached; it runs scrypt every time
  and is counted by the login penalty like any other (the penalty sits around the check,
  in :mod:`gateway.security.logins`, and sees every attempt, hit or miss).
* The tag covers the stored hash, so a changed password misses at once; the whole cache
  is also dropped on every reload of the user table (SIGHUP, ``popgate passwd``).
* Bounded: at most ``max_entries`` users (least recently verified first out), each
  entry trusted for ``ttl`` seconds after its scrypt check.

What it does not protect against: someone who can run code as the gateway's user (or
root) while it runs can ask the key holder for tags, and can equally read every
password as it arrives; that attacker is beyond the stated one. Without a key holder
(it failed to start) the cache is off and every check runs scrypt.

Coalescing: checks of the same (user, stored hash, password) that arrive while one is
running wait for it instead of running scrypt themselves (a household's ten phones
reconnecting at once cost one check). A waiter shares a failure too: scrypt is
deterministic, so a second run could only give the same answer; each waiter's failure
is still recorded by the penalty.
"""

from __future__ import annotations

import hmac
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

TAG_BYTES = 32
"""HMAC-SHA256 output."""

MAX_MESSAGE = 1 << 20
"""Most bytes the key holder accepts per tag request (a user, a hash and a password)."""

DEFAULT_MAX_ENTRIES = 10_000
"""Default ``[security] auth_cache_size``: users whose last check is remembered (about
200 bytes each, so 2 MB at most)."""

DEFAULT_TTL = 3600.0
"""Default ``[security] auth_cache_ttl``: how long a successful check is trusted (Dovecot's
``auth_cache_ttl`` default is one hour too)."""

_HOLDER_CODE = """
import os, sys
try:
    from _sha2 import sha256
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
key = os.urandom(32) + bytes(32)
inner, outer = sha256(bytes(b ^ 0x36 for b in key)), sha256(bytes(b ^ 0x5C for b in key))
del key
src, dst = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = src.read(4)
    if len(head) < 4:
        break
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        break
    data = src.read(size)
    if len(data) < size:
        break
    hashed = inner.copy()
    hashed.update(data)
    tag = outer.copy()
    tag.update(hashed.digest())
    dst.write(tag.digest())
    dst.flush()
""".replace("MAX_MESSAGE", str(MAX_MESSAGE))
"""The key holder's whole program: no imports from popgate, no files, no key output.
HMAC-SHA256 (RFC 2104) written out over the interpreter's own SHA-256 module, whose
copies of the keyed inner and outer states are all the holder keeps: importing
``hashlib``/``hmac`` would load OpenSSL's libcrypto into the child (12.6 MiB RSS
instead of 8.8 MiB here, issue 19's "RSS in all"). Checked against :mod:`hmac` by test."""


class KeyHolderError(Exception):
    """The key holder is gone or answered nonsense; the cache turns itself off."""


class KeyHolder:
    """A child process that holds a random HMAC key and returns tags of what it is sent.

    Started on first use (a gateway nobody logs in to runs no extra process), with an
    isolated interpreter without ``site`` (``-I -S``: a few MB). It exits when its
    stdin closes, so it never outlives the gateway. Thread-safe: password checks run on
    a thread pool.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [self.python, "-I", "-S", "-c", _HOLDER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the gateway does not kill it first
        )
        log.info("auth_cache.key_holder_started", pid=process.pid)
        return process

    def tag(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under the holder's key."""
        if len(message) > MAX_MESSAGE:
            raise KeyHolderError("message too long for the key holder")
        with self._lock:
            if self._closed:
                raise KeyHolderError("key holder closed")
            if self._process is None:
                self._process = self._start()
            process = self._process
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(struct.pack(">I", len(message)) + message)
                process.stdin.flush()
                tag = process.stdout.read(TAG_BYTES)
            except (OSError, ValueError) as e:
                raise KeyHolderError(f"key holder failed: {e}") from None
            if len(tag) != TAG_BYTES:
                raise KeyHolderError(f"key holder exited ({process.poll()})")
            return tag

    @property
    def pid(self) -> int | None:
        """The child's pid once started (tests and ``popgate status`` may show it)."""
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        """Stop the child (its key is gone for good); later tags raise."""
        with self._lock:
            self._closed = True
            process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def frame(user: str, stored: str, password: bytes) -> bytes:
    """The bytes a tag covers: each part length-prefixed, so no two (user, hash,
    password) triples share a framing."""
    parts = (user.encode("utf-8"), stored.encode("ascii", "replace"), password)
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


@dataclass
class _Flight:
    """A check under way: later arrivals with the same tag wait on ``done``."""

    done: threading.Event
    result: bool | None = None
    """The answer once ``done`` is set; None when the check itself broke."""


class VerifierCache:
    """Remembers, per user, the tag of the password that last passed scrypt.

    ``tagger`` computes tags (a :class:`KeyHolder`'s ``tag``); ``clock`` is monotonic
    seconds (injected for tests). :meth:`check` is called from the password threads.
    """

    def __init__(
        self,
        tagger: Callable[[bytes], bytes],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tagger = tagger
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._flights: dict[bytes, _Flight] = {}
        self._generation = 0
        """Bumped by :meth:`clear`: a check that began before a clear stores nothing."""
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self.shared = 0
        """Checks answered by another check of the same password under way."""

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (the user table was reloaded: a password may have changed)."""
        with self._lock:
            self._entries.clear()
            self._generation += 1

    def check(self, user: str, stored: str, password: bytes, verify: Callable[[], bool]) -> bool:
        """Whether ``password`` is ``user``'s (whose stored hash is ``stored``): from the
        cache when the same password passed scrypt within ``ttl``, else ``verify()``
        (scrypt), shared with an identical check under way. Only successes are stored."""
        if not self.enabled:
            return verify()
        try:
            tag = self.tagger(frame(user, stored, password))
        except KeyHolderError as e:
            log.error("auth_cache.off", reason=str(e))
            self.enabled = False
            return verify()
        with self._lock:
            entry = self._entries.get(user)
            if entry is not None:
                if hmac.compare_digest(entry[0], tag) and self.clock() - entry[1] <= self.ttl:
                    self._entries.move_to_end(user)
                    self.hits += 1
                    return True
                if self.clock() - entry[1] > self.ttl:
                    del self._entries[user]
            flight = self._flights.get(tag)
            leader = flight is None
            if leader:
                flight = self._flights[tag] = _Flight(threading.Event())
                generation = self._generation
                self.misses += 1
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.result is not None:
                with self._lock:
                    self.shared += 1
                return flight.result
            return verify()  # the leader's check broke: run our own
        try:
            ok = verify()
        except BaseException:
            self._land(tag, flight, None)
            raise
        with self._lock:
            if ok and generation == self._generation and self.max_entries > 0:
                self._entries[user] = (tag, self.clock())
                self._entries.move_to_end(user)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        self._land(tag, flight, ok)
        return ok

    def _land(self, tag: bytes, flight: _Flight, result: bool | None) -> None:
        with self._lock:
            self._flights.pop(tag, None)
        flight.result = result
        flight.done.set()


def cache_from_settings(
    max_entries: int, ttl: float
) -> tuple[VerifierCache | None, KeyHolder | None]:
    """The gateway's cache and its key holder, or (None, None) when ``max_entries`` is 0
    (``[security] auth_cache_size = 0``: every login runs scrypt)."""
    if max_entries <= 0:
        return None, None
    holder = KeyHolder()
    return VerifierCache(holder.tag, max_entries=max_entries, ttl=ttl), holder
