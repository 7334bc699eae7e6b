"""Login failure penalties: the delay before a failed login is answered, and the failure
budgets after which a source address or a user name is refused for a while.

The delay doubles with each failure from the same source, from ``initial_delay`` up to
``max_delay`` (Dovecot's ``auth_penalty``: 2, 4, 8, 15 s), and a success resets it. The
delay is *applied by the caller* on its clock (``callLater``); this module only does
the bookkeeping, on an injected clock, so it never blocks the reactor and tests drive
it with ``twisted.internet.task.Clock``.

Budgets: after ``ip_budget`` failures from one source, or ``user_budget`` failures for
one user name, within ``window`` seconds of each other, logins are refused
(``NO [UNAVAILABLE]``, RFC 5530) until ``window`` seconds pass without a failure. The
user budget stops a password-spraying botnet; so that it cannot lock the real owner
out, a source that logged in successfully as that user before is exempt from it.

Unknown users and wrong passwords are treated the same (no enumeration): the key is the
name as given, whether or not it exists. IPv6 sources are grouped by /64 (one host
usually holds a whole /64). Every table is bounded (``max_entries``, least recently
touched first out), so a flood of sources cannot grow memory without limit.

Attempts in flight count (issue 20): a password check takes tens of milliseconds of
scrypt and a failure is answered only after its delay, so a failure recorded only at
the end would let a client run many checks in parallel before the first one counts
(100 parallel wrong LOGINs got 100 checks against a budget of 30). So every check is a
:class:`LoginAttempt` from :meth:`AuthPenalty.begin` on: while in flight it counts
against both budgets as a failure would, and it ends as a failure (recorded), a
success (released) or abandoned (the check itself broke; released). At most
``ip_budget`` checks per source and ``user_budget`` per user name can be under way or
failed within a window.

Known sources survive a restart (issue 20): the sources a user logged in from (at most
:data:`KNOWN_SOURCES_PER_USER` per user, the most recently seen, each for
:data:`KNOWN_GOOD_TTL`) are kept in the store when one is injected
(:class:`KnownSourceBook`, the contract in :mod:`gateway.store.known_sources`), so an
attacker who restarts nothing but waits for a restart cannot lock the owner out of their
usual address. Reads happen once per user per process (then cached); a write happens
when a source is new for the user or was last written :data:`KNOWN_SOURCE_REFRESH` ago,
so a busy user costs at most one small write per source per hour.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog
from twisted.internet.interfaces import IReactorTime

K = TypeVar("K")
V = TypeVar("V")

MAX_USER_KEY = 256
"""A user name is cut to this many characters before use as a key (names are client input)."""

KNOWN_GOOD_TTL = 30 * 24 * 3600.0
"""How long a successful login from a source exempts it from that user's failure budget."""

KNOWN_SOURCES_PER_USER = 16
"""Most sources remembered per user (the most recently seen): home, work, phone networks."""

KNOWN_SOURCE_REFRESH = 3600.0
"""A known source's last-seen time is written to the store at most this often."""

log = structlog.get_logger(__name__)


class KnownSourceBook(Protocol):
    """What the penalty needs from a store to remember known sources across restarts.

    The contract, its rules and its backends are in :mod:`gateway.store.known_sources`
    (``security`` may not import ``store``, so the two calls it makes are named here;
    both store backends satisfy this Protocol, which the contract tests check).
    """

    def remember_source(
        self, user: str, source: str, seen: float, *, keep: int, forget_before: float
    ) -> None: ...

    def known_sources(self, user: str) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class PenaltySettings:
    """The knobs of ``[security]`` in the config."""

    initial_delay: float = 2.0
    """Delay of the first failed login from a source (seconds)."""

    max_delay: float = 15.0
    """Ceiling of the doubling delay."""

    window: float = 15 * 60.0
    """Failures further apart than this are forgotten; a budget block lasts this long
    after the last failure."""

    ip_budget: int = 30
    """Failures from one source within the window before it is refused (0: no budget)."""

    user_budget: int = 100
    """Failures for one user name within the window before it is refused, from sources
    that never logged in as that user (0: no budget)."""

    max_entries: int = 100_000
    """Most sources (and, separately, user names) remembered at once."""


@dataclass
class _Record:
    failures: int
    last: float


class _Bounded(Generic[K, V]):
    """An insertion-ordered map that forgets its least recently touched entry when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


SOURCE_KEYS_CACHED = 4096
"""Peer addresses whose key is remembered: parsing one with ``ipaddress`` costs ~20 µs and
every login asks ~6 times (issue 19's reconnect storm profile)."""


@functools.lru_cache(maxsize=SOURCE_KEYS_CACHED)
def source_key(host: str) -> str:
    """The penalty key of a peer address: the IPv4 address, the IPv6 /64, or the text
    itself for anything else (UNIX sockets)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host or "local"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _user_key(user: str) -> str:
    return user[:MAX_USER_KEY]


class LoginAttempt:
    """One password check, counted against the budgets from :meth:`AuthPenalty.begin`
    until exactly one of :meth:`failed`, :meth:`succeeded` or :meth:`abandoned` ends it
    (later calls do nothing). The servers end it when the check's outcome arrives, even
    if the client has gone by then: hanging up does not make a guess free."""

    def __init__(self, penalty: AuthPenalty, host: str, user: str) -> None:
        self.penalty = penalty
        self.host = host
        self.user = user
        self._open = True

    def _end(self) -> bool:
        if not self._open:
            return False
        self._open = False
        self.penalty._release(self.host, self.user)
        return True

    def failed(self) -> float:
        """A wrong password (or unknown user): recorded; the seconds to wait before
        answering it."""
        return self.penalty.failed(self.host, self.user) if self._end() else 0.0

    def succeeded(self, canonical: str) -> None:
        """A correct password for ``canonical``: see :meth:`AuthPenalty.succeeded`."""
        if self._end():
            self.penalty.succeeded(self.host, canonical)

    def record(self, canonical: str | None) -> float:
        """The check's outcome, whichever it was: :meth:`failed` for None (returns the
        delay), else :meth:`succeeded` (returns 0)."""
        if canonical is None:
            return self.failed()
        self.succeeded(canonical)
        return 0.0

    def abandoned(self) -> None:
        """The check broke (a server error): no outcome, nothing recorded."""
        self._end()


class AuthPenalty:
    """Failure bookkeeping shared by every connection (IMAP, ManageSieve, submission)
    of one service. ``known_sources`` (the store) keeps known sources across restarts;
    None keeps them in memory only."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: PenaltySettings | None = None,
        known_sources: KnownSourceBook | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings if settings is not None else PenaltySettings()
        self.known_sources = known_sources
        limit = self.settings.max_entries
        self._sources: _Bounded[str, _Record] = _Bounded(limit)
        self._users: _Bounded[str, _Record] = _Bounded(limit)
        self._known: _Bounded[str, dict[str, float]] = _Bounded(limit)
        """user → {source: last seen}, at most KNOWN_SOURCES_PER_USER each (a cache of
        the store's rows when there is a store)."""
        self._in_flight_sources: dict[str, int] = {}
        self._in_flight_users: dict[str, int] = {}
        """Checks under way (at most one per connection, so bounded by connections)."""

    def _live(self, table: _Bounded[str, _Record], key: str) -> _Record | None:
        record = table.get(key)
        if record is not None and self.clock.seconds() - record.last > self.settings.window:
            table.pop(key)
            return None
        return record

    def failures(self, host: str) -> int:
        """Failures remembered for this source (0 after a success or a quiet window)."""
        record = self._live(self._sources, source_key(host))
        return record.failures if record is not None else 0

    def delay_after(self, failures: int) -> float:
        """The delay for the ``failures``-th failure in a row: initial doubled per
        earlier failure, capped."""
        if failures <= 0:
            return 0.0
        s = self.settings
        return min(s.initial_delay * 2.0 ** min(failures - 1, 64), s.max_delay)

    def current_delay(self, host: str) -> float:
        """What the source's latest failure cost it (the delay for a refused attempt)."""
        return self.delay_after(self.failures(host))

    def refusal(self, host: str, user: str) -> str | None:
        """``"source"`` or ``"user"`` when that budget is spent and this attempt must be
        refused without checking the password; None when it may proceed."""
        s = self.settings
        source = source_key(host)
        used = self._spent(self._sources, self._in_flight_sources, source)
        if s.ip_budget and used >= s.ip_budget:
            return "source"
        user = _user_key(user)
        used = self._spent(self._users, self._in_flight_users, user)
        if s.user_budget and used >= s.user_budget and not self.known(host, user):
            return "user"
        return None

    def _spent(self, table: _Bounded[str, _Record], in_flight: dict[str, int], key: str) -> int:
        """Failures within the window plus checks under way: what a budget counts."""
        record = self._live(table, key)
        return (record.failures if record is not None else 0) + in_flight.get(key, 0)

    def begin(self, host: str, user: str) -> LoginAttempt:
        """A password check is about to start (after :meth:`refusal` said go ahead): it
        counts against both budgets until the returned attempt is ended."""
        for in_flight, key in (
            (self._in_flight_sources, source_key(host)),
            (self._in_flight_users, _user_key(user)),
        ):
            in_flight[key] = in_flight.get(key, 0) + 1
        return LoginAttempt(self, host, user)

    def _release(self, host: str, user: str) -> None:
        for in_flight, key in (
            (self._in_flight_sources, source_key(host)),
            (self._in_flight_users, _user_key(user)),
        ):
            left = in_flight.get(key, 0) - 1
            if left > 0:
                in_flight[key] = left
            else:
                in_flight.pop(key, None)

    def in_flight(self, host: str) -> int:
        """Password checks under way for this source."""
        return self._in_flight_sources.get(source_key(host), 0)

    def known(self, host: str, user: str) -> bool:
        """Whether ``host`` is a known source for ``user`` (exempt from the user budget)."""
        seen = self._known_for(_user_key(user)).get(source_key(host))
        return seen is not None and self.clock.seconds() - seen <= KNOWN_GOOD_TTL

    def _known_for(self, user: str) -> dict[str, float]:
        """The user's known sources (source → last seen), read from the store once."""
        known = self._known.get(user)
        if known is None:
            known = {}
            if self.known_sources is not None:
                try:
                    known = dict(self.known_sources.known_sources(user))
                except Exception:
                    log.exception("penalty.known_sources_unreadable", user=user)
            self._known.put(user, known)
        return known

    def failed(self, host: str, user: str) -> float:
        """Record a failed login; returns the seconds to wait before answering it."""
        now = self.clock.seconds()
        count = 0
        for table, key in ((self._sources, source_key(host)), (self._users, _user_key(user))):
            record = self._live(table, key)
            if record is None:
                record = _Record(0, now)
            record.failures += 1
            record.last = now
            table.put(key, record)
            if table is self._sources:
                count = record.failures
        return self.delay_after(count)

    def succeeded(self, host: str, user: str) -> None:
        """A correct password: the source's penalty is reset and it becomes a known-good
        source for this user. The user's failure count stays (others may be guessing)."""
        source = source_key(host)
        self._sources.pop(source)
        user = _user_key(user)
        now = self.clock.seconds()
        known = self._known_for(user)
        before = known.pop(source, None)
        known[source] = now
        while len(known) > KNOWN_SOURCES_PER_USER:
            del known[min(known, key=known.__getitem__)]
        book = self.known_sources
        if book is not None and (before is None or now - before >= KNOWN_SOURCE_REFRESH):
            try:
                book.remember_source(
                    user,
                    source,
                    now,
                    keep=KNOWN_SOURCES_PER_USER,
                    forget_before=now - KNOWN_GOOD_TTL,
                )
            except Exception:
                # Lockout protection then lasts until the restart only; logins go on.
                log.exception("penalty.known_source_unwritten", user=user)
