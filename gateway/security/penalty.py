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

Attempts in flight take a turn (issues 20 and 19): a password check takes tens of
milliseconds of scrypt and a failure is answered only after its delay, so a failure
recorded only at the end would let a client run many checks in parallel before the first
one counts (100 parallel wrong LOGINs got 100 checks against a budget of 30). So every
check is a :class:`LoginAttempt`, and at most ``ip_budget`` minus the source's failures
(``user_budget`` minus the user's, likewise) may be under way at once. A check beyond that
does not fail: it WAITS for a turn in its source's queue (:meth:`AuthPenalty.enter`, first
in first out, at most ``ip_waiting`` waiting), served as checks end. Only real failures
make a refusal (``NO [UNAVAILABLE]``), and a waiting attempt whose source (or user) runs
out of budget meanwhile is refused then. So a household of 60 phones behind one NAT
address reconnecting together all get in (30 checked at a time, each success resetting the
source), while a brute-forcer from one address still gets at most ``ip_budget`` checks
before the block, however many it sends in parallel. An attempt ends as a failure
(recorded), a success (released) or abandoned (the check itself broke; released).

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
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
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

    ip_waiting: int = 1024
    """Most attempts from one source waiting for a turn (beyond it: refused, as a spent
    budget); a household's or an office's devices behind one NAT address fit."""


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
        if not self._end():
            return 0.0
        delay = self.penalty.failed(self.host, self.user)
        self.penalty._serve()
        return delay

    def succeeded(self, canonical: str) -> None:
        """A correct password for ``canonical``: see :meth:`AuthPenalty.succeeded`."""
        if self._end():
            self.penalty.succeeded(self.host, canonical)
            self.penalty._serve()

    def record(self, canonical: str | None) -> float:
        """The check's outcome, whichever it was: :meth:`failed` for None (returns the
        delay), else :meth:`succeeded` (returns 0)."""
        if canonical is None:
            return self.failed()
        self.succeeded(canonical)
        return 0.0

    def abandoned(self) -> None:
        """The check broke (a server error): no outcome, nothing recorded."""
        if self._end():
            self.penalty._serve()


Turn = Callable[[LoginAttempt | None, str | None], None]
"""Called once with (the attempt, None) when a check may start, or (None, ``"source"`` or
``"user"``) when it is refused (:meth:`AuthPenalty.enter`)."""


@dataclass
class _Waiter:
    host: str
    user: str
    turn: Turn


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
        self._waiting: dict[str, deque[_Waiter]] = {}
        """Source key → attempts waiting for a turn, oldest first (bounded by
        ``ip_waiting`` per source and by connections)."""
        self._serving = False
        self._serve_again = False

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

    def blocked(self, host: str, user: str) -> str | None:
        """``"source"`` or ``"user"`` when real failures alone have spent that budget (the
        attempt is refused, not queued); None otherwise."""
        s = self.settings
        record = self._live(self._sources, source_key(host))
        if s.ip_budget and record is not None and record.failures >= s.ip_budget:
            return "source"
        record = self._live(self._users, _user_key(user))
        if (
            s.user_budget
            and record is not None
            and record.failures >= s.user_budget
            and not self.known(host, user)
        ):
            return "user"
        return None

    def enter(self, host: str, user: str, turn: Turn) -> Callable[[], None] | None:
        """Ask for a password check's turn: ``turn`` is called, now or later, with the
        started :class:`LoginAttempt` or with the budget that refuses it. An attempt that
        would push the checks under way past a budget waits (FIFO per source) until one
        ends; returns the function that withdraws a waiting attempt (the client went
        away), None when ``turn`` was already called."""
        reason = self.blocked(host, user)
        source = source_key(host)
        queue = self._waiting.get(source)
        if reason is None and not queue and self.refusal(host, user) is None:
            turn(self.begin(host, user), None)
            return None
        if reason is None and queue is not None and len(queue) >= self.settings.ip_waiting:
            reason = "source"
        if reason is None and self.settings.ip_waiting <= 0:
            reason = "source"
        if reason is not None:
            turn(None, reason)
            return None
        waiter = _Waiter(host, user, turn)
        self._waiting.setdefault(source, deque()).append(waiter)

        def withdraw() -> None:
            waiting = self._waiting.get(source)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiting[source]

        return withdraw

    def waiting(self, host: str) -> int:
        """Attempts from this source waiting for a turn."""
        return len(self._waiting.get(source_key(host), ()))

    def _serve(self) -> None:
        """A check ended: start (or refuse) the waiting attempts that now can be, oldest
        first per source. Re-entrant calls (a turn whose check ends at once) loop here."""
        if self._serving:
            self._serve_again = True
            return
        self._serving = True
        try:
            self._serve_again = True
            while self._serve_again:
                self._serve_again = False
                for source in list(self._waiting):
                    queue = self._waiting.get(source)
                    while queue:
                        waiter = queue[0]
                        reason = self.blocked(waiter.host, waiter.user)
                        if reason is None and self.refusal(waiter.host, waiter.user) is not None:
                            break  # still no turn: wait for the next check to end
                        queue.popleft()
                        if reason is None:
                            waiter.turn(self.begin(waiter.host, waiter.user), None)
                        else:
                            waiter.turn(None, reason)
                    if not queue and self._waiting.get(source) is queue:
                        del self._waiting[source]
        finally:
            self._serving = False

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
