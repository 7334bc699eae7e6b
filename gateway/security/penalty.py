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
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

K = TypeVar("K")
V = TypeVar("V")

MAX_USER_KEY = 256
"""A user name is cut to this many characters before use as a key (names are client input)."""

KNOWN_GOOD_TTL = 30 * 24 * 3600.0
"""How long a successful login from a source exempts it from that user's failure budget."""


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


class AuthPenalty:
    """Failure bookkeeping shared by every IMAP connection of one service."""

    def __init__(self, clock: IReactorTime, settings: PenaltySettings | None = None) -> None:
        self.clock = clock
        self.settings = settings if settings is not None else PenaltySettings()
        limit = self.settings.max_entries
        self._sources: _Bounded[str, _Record] = _Bounded(limit)
        self._users: _Bounded[str, _Record] = _Bounded(limit)
        self._known_good: _Bounded[tuple[str, str], float] = _Bounded(limit)

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
        record = self._live(self._sources, source)
        if s.ip_budget and record is not None and record.failures >= s.ip_budget:
            return "source"
        user = _user_key(user)
        record = self._live(self._users, user)
        if s.user_budget and record is not None and record.failures >= s.user_budget:
            seen = self._known_good.get((user, source))
            if seen is None or self.clock.seconds() - seen > KNOWN_GOOD_TTL:
                return "user"
        return None

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
        self._known_good.put((_user_key(user), source), self.clock.seconds())
