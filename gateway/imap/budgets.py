"""Byte budgets shared by every connection of a listener: input held for clients that
have not logged in, APPEND literal bytes in flight, and the spool files behind them.

Issue 20 found two ways to make the gateway's memory grow without bound: strangers
announcing 60 MB literals before login (item 2), and logged-in users sending several
large APPENDs at once (item 5). Per-connection caps (:mod:`gateway.imap.framing`) bound one
connection; these budgets bound the sum, so that many connections cannot add up to what
one may not do:

* **pre-login input**: the bytes the parsers of unauthenticated connections hold
  (:attr:`CommandParser.buffered_size`), summed. A connection whose next chunk would take
  the sum over :attr:`IMAPLimits.max_prelogin_buffered` gets ``* BYE [LIMIT]`` and is
  closed (event ``imap.prelogin_buffer_full``): a client that has not logged in has no
  reason to send that much, and refusing the newcomer keeps the others' memory bounded.
* **APPEND in flight**: each literal a logged-in user announces reserves its size until
  the command ends, per user and in total. Over either cap the command is refused with
  ``NO [LIMIT]`` before the client sends the bytes (``{n}``: no ``+``) or while they are
  skipped (``{n+}``) — refusing is predictable and the client may retry, where waiting
  would let one user's stalled uploads hold everybody's. Large literals go to spool files
  (:mod:`gateway.imap.spool`), so the caps bound disk use and the work queued behind them
  rather than memory, which stays near one chunk per connection.

The accounting (``prelogin_buffered``, ``in_flight``, ``spooled`` and their peaks) is what
tests and metrics read: it counts bytes, not RSS.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from gateway.imap.spool import LiteralSpool

log = structlog.get_logger(__name__)

MAX_PRELOGIN_BUFFERED = 16 * 1024 * 1024
"""Input held by all unauthenticated connections together (16 MiB: some 200 full pre-login
commands at once, far more than honest clients ever have in flight before login)."""

MAX_APPEND_IN_FLIGHT_PER_USER = 256 * 1024 * 1024
"""APPEND literal bytes one user may have announced and not yet stored (four messages of
the largest size, so a client uploading on a few connections is not refused)."""

MAX_APPEND_IN_FLIGHT = 1024 * 1024 * 1024
"""APPEND literal bytes in flight for all users together (spool disk use is bounded by it)."""


class ByteBudgets:
    """The listener-wide counters; one instance per :class:`IMAPServerFactory`."""

    def __init__(
        self,
        max_prelogin_buffered: int = MAX_PRELOGIN_BUFFERED,
        max_in_flight_per_user: int = MAX_APPEND_IN_FLIGHT_PER_USER,
        max_in_flight: int = MAX_APPEND_IN_FLIGHT,
    ) -> None:
        self.max_prelogin_buffered = max_prelogin_buffered
        self.max_in_flight_per_user = max_in_flight_per_user
        self.max_in_flight = max_in_flight
        self.prelogin_buffered = 0
        """Bytes the parsers of unauthenticated connections hold right now."""
        self.prelogin_peak = 0
        self.in_flight = 0
        """APPEND literal bytes reserved by commands not finished yet."""
        self.in_flight_by_user: dict[str, int] = {}
        self.in_flight_peak = 0
        self.spooled = 0
        """Bytes in open spool files right now."""
        self.spool_peak = 0
        self.prelogin_refusals = 0
        self.in_flight_refusals = 0

    def adjust_prelogin(self, delta: int) -> None:
        self.prelogin_buffered += delta
        self.prelogin_peak = max(self.prelogin_peak, self.prelogin_buffered)

    def reserve(self, user: str, size: int) -> str | None:
        """Reserve ``size`` bytes for ``user``; the refusal text if a cap is in the way."""
        mine = self.in_flight_by_user.get(user, 0)
        if mine + size > self.max_in_flight_per_user:
            self.in_flight_refusals += 1
            log.warning("imap.append_budget_full", user=user, size=size, scope="user")
            return f"too many octets in flight for this user (limit {self.max_in_flight_per_user})"
        if self.in_flight + size > self.max_in_flight:
            self.in_flight_refusals += 1
            log.warning("imap.append_budget_full", user=user, size=size, scope="server")
            return "too many octets in flight on this server, try again later"
        self.in_flight_by_user[user] = mine + size
        self.in_flight += size
        self.in_flight_peak = max(self.in_flight_peak, self.in_flight)
        return None

    def release(self, user: str, size: int) -> None:
        left = self.in_flight_by_user.get(user, 0) - size
        if left > 0:
            self.in_flight_by_user[user] = left
        else:
            self.in_flight_by_user.pop(user, None)
        self.in_flight -= size

    def meter_spool(self, delta: int) -> None:
        self.spooled += delta
        self.spool_peak = max(self.spool_peak, self.spooled)


class ConnectionBudget:
    """One connection's share of the :class:`ByteBudgets`: what it holds before login,
    what its current command reserved, and the spool files that command uses."""

    def __init__(self, budgets: ByteBudgets, spool_dir: Path | None = None) -> None:
        self.budgets = budgets
        self.spool_dir = spool_dir
        self.prelogin_held = 0
        self._reserved: list[tuple[str, int]] = []
        self._spools: list[LiteralSpool] = []

    # -- before login --

    def hold_prelogin(self, buffered: int) -> bool:
        """Record that this connection now holds ``buffered`` bytes before login (0 once
        logged in or gone). Checked after the parser has taken what it could from the new
        input, so bytes that complete a command are never refused; False (counted, logged,
        nothing recorded) when growing to ``buffered`` would pass the listener-wide cap.
        The sum can pass the cap by at most one read of one connection, never for long."""
        budgets = self.budgets
        delta = buffered - self.prelogin_held
        if delta > 0 and budgets.prelogin_buffered + delta > budgets.max_prelogin_buffered:
            budgets.prelogin_refusals += 1
            log.warning(
                "imap.prelogin_buffer_full",
                held=budgets.prelogin_buffered,
                wanted=delta,
                limit=budgets.max_prelogin_buffered,
            )
            return False
        budgets.adjust_prelogin(delta)
        self.prelogin_held = buffered
        return True

    # -- APPEND literals --

    def reserve(self, user: str | None, size: int) -> str | None:
        """The parser's literal gate: literals of logged-in users count against the
        in-flight caps until :meth:`command_done` (before login the framing caps rule)."""
        if user is None:
            return None
        refused = self.budgets.reserve(user, size)
        if refused is None:
            self._reserved.append((user, size))
        return refused

    def open_spool(self, size: int) -> LiteralSpool:
        spool = LiteralSpool(size, self.spool_dir, self.budgets.meter_spool)
        self._spools.append(spool)
        return spool

    def command_done(self) -> None:
        """The command the reservations and spools were for has ended: give them back.
        Parsing is lazy (the next command is read only once this one is done), so all of
        them belong to it."""
        if not self._reserved and not self._spools:
            return  # most commands carry no literal
        reserved, self._reserved = self._reserved, []
        for user, size in reserved:
            self.budgets.release(user, size)
        spools, self._spools = self._spools, []
        for spool in spools:
            spool.close()

    def close(self) -> None:
        """The connection is gone."""
        self.command_done()
        self.hold_prelogin(0)
