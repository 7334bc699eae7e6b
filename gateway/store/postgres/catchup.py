"""The node's memo of recent changes per mailbox: a catch-up answered without a query.

Every IMAP command ends with a catch-up (RFC 3501 §7: EXPUNGE, EXISTS, FETCH FLAGS of
what other sessions changed), ``changes_since(mailbox, modseq)``; on PostgreSQL that was
one statement per command, the largest item of the store threads' time under the
50-client mix (bench/README.md, "PostgreSQL mix tail, session 3"). The sessions of one
mailbox ask nearly the same question over and over: what changed after a modseq a few
changes old. So the store keeps, per (mailbox, viewer), the last answer it read as a
small *change log*: for every UID changed after a floor modseq its latest row (flags and
modseq), for every UID expunged after the floor its expunge modseq, and the mailbox's
HIGHESTMODSEQ then (the head). Any ``since`` at or above the floor is answered from it by
filtering on modseq, as the query would (RFC 7162 §3.1: every change stamps a modseq no
greater than HIGHESTMODSEQ).

A log answers only while this node knows nothing changed in that mailbox since it was
read. Every change reaches the node through one funnel,
:meth:`~gateway.store.postgres.connection.PGConnection.dispatch_changes`: its own commits
(after they commit) and other nodes' notices (the LISTEN bridge,
:mod:`gateway.store.postgres.push`). That funnel calls :meth:`ChangeLogs.changed`, which
gives the mailbox a new *stamp*; a log is valid only under the stamp taken before its
query began, so a commit the query might have missed always outdates it (the commit's
stamp comes after its commit, which comes after the query's stamp was read).
Other nodes' commits are heard only while the LISTEN connection is up, so the logs are
trusted only between :meth:`ChangeLogs.trust` (the bridge listens and has caught up)
and :meth:`ChangeLogs.distrust` (the connection failed, or the bridge stopped): until
then, and without a bridge at all (tests, command-line tools), every catch-up queries.
Each distrust starts a new epoch, so no log read before it is used after it. A log is
also never used past :data:`MAX_AGE`, which bounds how stale a node can be if its
LISTEN connection died without an error the bridge could see yet (a half-open TCP
connection until the heartbeat notices).

\\Recent is per row but changes without a modseq (the first session told claims it, RFC
3501 §2.3.2): an answer read with a \\Recent row is never kept as it is, so a claimed row
is never handed out as recent again (as :mod:`gateway.imap.selectcache` does for SELECT).
Such an answer is held aside instead, and becomes the log once this node has claimed
every one of its \\Recent rows (:meth:`ChangeLogs.claimed`, after the claim's commit):
the claim leaves those rows without \\Recent for good, so the answer with \\Recent
taken off is what a query would now return, as long as the mailbox's stamp has not
moved. After an APPEND the first session to catch up claims the new message, and the
other sessions of that mailbox are answered from the log instead of each querying (and
trying to claim) again.

This node's own APPEND puts its new row in the log at once (:meth:`ChangeLogs.wrote`),
\\Recent included (it is unclaimed when it commits), so even the first catch-up after it
needs no query; a claim made here takes the \\Recent off (:meth:`ChangeLogs.claimed`),
and a log holding one never answers on the reactor thread (:meth:`ChangeLogs.known`: the
claim is a write). A row another node claimed first stays \\Recent in this node's log
until a session here tries to claim it: the claim returns nothing (the database decides,
as before) and the log forgets it.

A miss still helps: the query asks only from the log's head (its rows come merged into
the log, whose floor stays), so a log grows forward with the mailbox and is trimmed to
:data:`MAX_ROWS` from its oldest end.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from operator import attrgetter

from gateway.core.flags import RECENT
from gateway.store.interfaces import Changes, MessageRow

MAX_AGE = 2.0
"""Seconds a log may answer after it was last read from the database."""

MAX_ROWS = 512
"""Changed rows and expunged UIDs one log keeps (its oldest are dropped, raising its floor)."""

MAX_LOGS = 4096
"""(mailbox, viewer) logs kept per node (least recently used out)."""

Key = tuple[int, str]
"""(mailbox id, viewer or "")."""

_uid_of = attrgetter("uid")


@dataclass(frozen=True)
class Token:
    """What was true before a query: the trust epoch and the mailbox's stamp then."""

    epoch: int
    stamp: int


@dataclass
class _Log:
    token: Token
    read_at: float
    floor: int
    head: int
    rows: dict[int, MessageRow] = field(default_factory=dict)
    gone: dict[int, int] = field(default_factory=dict)
    """Expunged UID -> the modseq of its expunge."""

    def answer(self, since: int) -> Changes:
        # Filtered before sorting: a catch-up asks from a few changes back, so most of a
        # log's rows (up to MAX_ROWS) are older; this runs on the reactor thread too.
        changed = [row for row in self.rows.values() if row.modseq > since]
        changed.sort(key=_uid_of)
        return Changes(
            highestmodseq=self.head,
            changed=changed,
            expunged=sorted(uid for uid, modseq in self.gone.items() if modseq > since),
        )


@dataclass(frozen=True)
class Plan:
    """What :meth:`ChangeLogs.plan` decided: ``answer`` (no query needed), or the modseq
    to query from (``ask``) under ``token`` (None: do not keep what comes back), the
    rows before ``ask`` coming from ``base`` (a log, never changed once stored)."""

    answer: Changes | None
    ask: int
    token: Token | None = None
    base: _Log | None = None


class ChangeLogs:
    """The change logs of one store (one node); safe to use from every store thread."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = MAX_AGE,
        max_rows: int = MAX_ROWS,
        max_logs: int = MAX_LOGS,
    ) -> None:
        self._clock = clock
        self.max_age = max_age
        self.max_rows = max_rows
        self.max_logs = max_logs
        self._lock = threading.Lock()
        self._logs: OrderedDict[Key, _Log] = OrderedDict()
        self._stamps: dict[int, int] = {}
        self._unclaimed: dict[Key, _Log] = {}
        """Answers held aside for holding \\Recent rows, until :meth:`claimed`."""
        self._counter = 0
        self._epoch = 0
        self._trusted = False
        self.hits = 0
        """Catch-ups answered from a log."""
        self.misses = 0
        """Catch-ups that queried while trusted."""

    # ---- what the node hears ------------------------------------------------------

    @property
    def trusted(self) -> bool:
        """Whether logs may answer (the LISTEN bridge is up and caught up)."""
        return self._trusted

    def trust(self) -> None:
        """The bridge listens and has told every change made while it was not: from now
        on every change reaches :meth:`changed`. Logs read before stay unused."""
        with self._lock:
            self._epoch += 1
            self._trusted = True
            self._logs.clear()
            self._unclaimed.clear()

    def distrust(self) -> None:
        """Other nodes' changes may go unheard (the LISTEN connection is down, or the
        bridge stopped): every catch-up queries until :meth:`trust`."""
        with self._lock:
            self._epoch += 1
            self._trusted = False
            self._logs.clear()
            self._unclaimed.clear()

    def changed(self, mailbox_ids: Iterable[int]) -> None:
        """A change to these mailboxes committed (here, or on another node and heard):
        their logs are outdated. Called before listeners are told, so a session woken by
        the change queries."""
        with self._lock:
            for mailbox_id in mailbox_ids:
                self._counter += 1
                self._stamps[mailbox_id] = self._counter

    def wrote(self, key: Key, before: int, modseq: int, rows: list[MessageRow]) -> None:
        """This node committed a write to the mailbox of ``key`` that moved its
        HIGHESTMODSEQ from ``before`` (read under the write's lock) to ``modseq``,
        changing ``rows`` as ``key``'s viewer sees them. The mailbox has changed (as
        :meth:`changed` says), and a valid log that held everything up to ``before`` now
        holds this write too: nobody else could write in between. ``rows`` may be
        \\Recent (an APPEND's new row) until :meth:`claimed` says otherwise."""
        with self._lock:
            mailbox_id = key[0]
            held = Token(self._epoch, self._stamps.get(mailbox_id, 0))
            self._counter += 1
            self._stamps[mailbox_id] = self._counter
            log = self._logs.get(key)
            if not self._trusted or log is None or log.token != held or log.head != before:
                return
            changed = dict(log.rows)
            changed.update((row.uid, row) for row in rows)
            fed = _Log(
                Token(self._epoch, self._counter),
                self._clock(),
                log.floor,
                modseq,
                changed,
                log.gone,
            )
            _trim(fed, self.max_rows)
            self._logs[key] = fed
            self._logs.move_to_end(key)

    # ---- catch-ups ----------------------------------------------------------------

    def plan(self, key: Key, since: int) -> Plan:
        """Answer from the log if it is valid and reaches back to ``since``; otherwise
        say what to query (from the log's head when the log can take the rows)."""
        with self._lock:
            if not self._trusted:
                return Plan(None, since)
            token = Token(self._epoch, self._stamps.get(key[0], 0))
            log = self._logs.get(key)
            if log is None or log.token.epoch != token.epoch or since < log.floor:
                self.misses += 1
                return Plan(None, since, token)
            self._logs.move_to_end(key)
            if (
                log.token == token
                and since <= log.head
                and self._clock() - log.read_at <= self.max_age
            ):
                self.hits += 1
                return Plan(log.answer(since), since)
            self.misses += 1
            # Ask only what came after the log's head: the log holds the rest.
            return Plan(None, log.head, token, log)

    def known(self, key: Key, since: int) -> Changes | None:
        """The answer :meth:`plan` would give without a query, or None (nothing counted
        as a miss): whether a catch-up may be answered on the reactor thread, where no
        query may run (:meth:`~gateway.store.postgres.messages.PGMessages.pin_changes`)."""
        with self._lock:
            if not self._trusted:
                return None
            log = self._logs.get(key)
            if (
                log is None
                or log.token != Token(self._epoch, self._stamps.get(key[0], 0))
                or not log.floor <= since <= log.head
                or self._clock() - log.read_at > self.max_age
            ):
                return None
            answer = log.answer(since)
            if any(RECENT in row.flags for row in answer.changed):
                return None  # claiming it is a write: not on the reactor thread
            self.hits += 1
            self._logs.move_to_end(key)
            return answer

    def record(
        self,
        key: Key,
        plan: Plan,
        since: int,
        head: int,
        rows: list[MessageRow],
        gone: list[tuple[int, int]],
    ) -> Changes:
        """What the query asked for by ``plan`` returned (``head``, changed rows in UID
        order, (UID, expunge modseq) pairs): the answer for ``since``, and the new log
        when it may be kept."""
        token = plan.token
        if token is None:
            return Changes(head, rows, sorted(uid for uid, _m in gone))
        fresh = _Log(token, self._clock(), plan.ask, head, {r.uid: r for r in rows}, dict(gone))
        if plan.base is not None:
            fresh = _merge(plan.base, fresh)
        answer = fresh.answer(since)
        if any(RECENT in row.flags for row in rows):
            with self._lock:
                if token.epoch == self._epoch:
                    if len(self._unclaimed) >= self.max_logs:
                        self._unclaimed.clear()
                    self._unclaimed[key] = fresh
            return answer
        _trim(fresh, self.max_rows)
        with self._lock:
            self._keep(key, fresh)
        return answer

    def claimed(self, mailbox_id: int, uids: Iterable[int]) -> None:
        """This node's claim of \\Recent on ``uids`` of the mailbox committed: none of
        them holds \\Recent any more (a claim only ever clears it). An answer held aside
        whose \\Recent rows are all among them becomes the log, those rows without
        \\Recent, if nothing has changed in the mailbox since it was read. A log holding
        one of them \\Recent (this node's APPEND, :meth:`wrote`) is one without it: the
        rows keep their modseq (a claim makes none), so nothing else changes."""
        cleared = set(uids)
        with self._lock:
            for key, log in list(self._logs.items()):
                if key[0] != mailbox_id:
                    continue
                found = [log.rows[u] for u in cleared.intersection(log.rows)]
                if claimed := [r for r in found if RECENT in r.flags]:
                    # a new log: a stored one never changes
                    self._logs[key] = replace(log, rows=_unrecent(log.rows, claimed))
            stamp = Token(self._epoch, self._stamps.get(mailbox_id, 0))
            for key in [key for key in self._unclaimed if key[0] == mailbox_id]:
                held = self._unclaimed[key]
                recent = [row for row in held.rows.values() if RECENT in row.flags]
                if held.token != stamp or not all(row.uid in cleared for row in recent):
                    if held.token != stamp:
                        del self._unclaimed[key]
                    continue
                del self._unclaimed[key]
                fresh = replace(held, rows=_unrecent(held.rows, recent))
                _trim(fresh, self.max_rows)
                self._keep(key, fresh)

    def _keep(self, key: Key, fresh: _Log) -> None:
        """Store ``fresh`` as ``key``'s log unless a newer one is there (lock held)."""
        token = fresh.token
        old = self._logs.get(key)
        if token.epoch == self._epoch and (
            old is None or old.token.epoch != token.epoch or old.token.stamp <= token.stamp
        ):
            self._logs[key] = fresh
            self._logs.move_to_end(key)
            while len(self._logs) > self.max_logs:
                self._logs.popitem(last=False)


def _unrecent(rows: dict[int, MessageRow], claimed: list[MessageRow]) -> dict[int, MessageRow]:
    """A copy of a log's ``rows`` with the ``claimed`` ones no longer \\Recent (a claim
    makes no modseq: nothing else of theirs changes)."""
    copy = dict(rows)
    copy.update((r.uid, MessageRow(r.uid, r.flags - {RECENT}, r.modseq)) for r in claimed)
    return copy


def _merge(old: _Log, new: _Log) -> _Log:
    """``old`` (floor F, head H) followed by ``new`` (asked from S = H): every UID
    changed or expunged after S is in ``new`` with its latest state, so ``old``'s rows
    that ``new`` does not mention still hold; the result reaches back to F."""
    rows = {uid: row for uid, row in old.rows.items() if uid not in new.gone}
    rows.update(new.rows)
    gone = {**old.gone, **new.gone}
    return _Log(new.token, new.read_at, old.floor, max(old.head, new.head), rows, gone)


def _trim(log: _Log, max_rows: int) -> None:
    """Keep at most ``max_rows`` entries, dropping the oldest modseqs and raising the
    floor past them (a ``since`` below the floor then queries)."""
    excess = len(log.rows) + len(log.gone) - max_rows
    if excess <= 0:
        return
    modseqs = sorted([row.modseq for row in log.rows.values()] + list(log.gone.values()))
    floor = modseqs[excess - 1]
    log.floor = max(log.floor, floor)
    log.rows = {uid: row for uid, row in log.rows.items() if row.modseq > floor}
    log.gone = {uid: m for uid, m in log.gone.items() if m > floor}
