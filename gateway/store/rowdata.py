"""The values a SQL backend writes for a message and its flags, computed the same way for all.

The SQLite and PostgreSQL stores keep the same tables (:mod:`gateway.store.schema`,
:mod:`gateway.store.postgres.schema`): a message's precomputed columns (dates as epoch
seconds and day ordinals, ENVELOPE/BODYSTRUCTURE wire forms, case-folded search text),
and a mailbox row's flags as one space-separated text column (system flags in canonical
case) with \\Seen kept apart per viewer in shared mailboxes. What goes into those columns,
and how a STORE turns old flags into new ones, is decided here once, so the two backends
cannot drift apart; only the SQL that writes them differs.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.core.flags import RECENT
from gateway.message.analysis import Analysis
from gateway.store.interfaces import LedgerEntry, MessageFlags, MessageRow
from gateway.store.rules import SEEN_KEY, stored_internaldate
from gateway.store.search import address_row_name

SEEN_TOKEN = " \\Seen "
"""\\Seen as found in ``' ' || flags || ' '`` (flags text, system flags canonical)."""

DELETED_TOKEN = " \\Deleted "


FLAG_CACHE_SIZE = 4096
"""Distinct (flags text, recent) pairs whose frozenset is kept; mailboxes reuse few."""


class RowValues:
    """Reading row values back, the same in every SQL backend (a mixin of the backends'
    connection classes, which set ``_flag_cache``, ``_zones`` and ``_clock``): flags text
    and the \\Recent bit as one frozenset, shared between rows that have the same ones;
    a stored zone offset as a ``timezone``; now, for default INTERNALDATEs."""

    _flag_cache: dict[tuple[str, int], frozenset[str]]
    _zones: dict[int, datetime.timezone]
    _clock: Callable[[], float]

    def _flags(self, text: str, recent: int) -> frozenset[str]:
        key = (text, recent)
        flags = self._flag_cache.get(key)
        if flags is None:
            if len(self._flag_cache) >= FLAG_CACHE_SIZE:
                self._flag_cache.clear()
            items = text.split()
            if recent:
                items.append(RECENT)
            flags = self._flag_cache[key] = frozenset(items)
        return flags

    def _zone(self, minutes: int) -> datetime.timezone:
        zone = self._zones.get(minutes)
        if zone is None:
            zone = self._zones[minutes] = datetime.timezone(datetime.timedelta(minutes=minutes))
        return zone

    def _now(self) -> datetime.datetime:
        """The current time in the server's local zone (INTERNALDATE default)."""
        return datetime.datetime.fromtimestamp(int(self._clock())).astimezone()


def stored_map(text: str) -> dict[str, str]:
    """Flags text → {lower-case flag: flag as stored}."""
    return {f.lower(): f for f in text.split()}


def flags_text(flags: dict[str, str]) -> str:
    return " ".join(sorted(flags.values()))


def split_seen(flags: dict[str, str], shared: bool) -> tuple[str, bool]:
    """(flags text for the mailbox row, whether \\Seen is set): in a shared mailbox
    \\Seen is private and never written to the shared column."""
    if not shared:
        return flags_text(flags), SEEN_KEY in flags
    rest = {k: v for k, v in flags.items() if k != SEEN_KEY}
    return flags_text(rest), SEEN_KEY in flags


@dataclass(frozen=True)
class MessageValues:
    """The ``message`` row of one message (without its id), in column order:
    sha256, size, internaldate, internaldate_tz, internal_day, sent_date, sent_day,
    message_id_header, envelope, bodystructure, body, parts."""

    row: tuple[object, ...]
    headers: list[tuple[int, str, str]]  # (pos, lower-case name, case-folded value)
    header_folded: str
    text_folded: str


MESSAGE_COLUMNS = (
    "sha256, size, internaldate, internaldate_tz, internal_day, sent_date, sent_day,"
    " message_id_header, envelope, bodystructure, body, parts"
)
"""The ``message`` columns :attr:`MessageValues.row` fills, in order."""


def message_values(
    raw: bytes,
    analysis: Analysis,
    internal: tuple[int, int, int],
    *,
    digest: bytes | None = None,
) -> MessageValues:
    """What a backend stores for a message. ``internal`` is (epoch seconds, offset
    minutes, day ordinal in that offset) of its INTERNALDATE; the sent day falls back
    to the internal day when the Date: header is missing or unusable (RFC 5256 §2.2).
    ``digest``: the bytes' SHA-256 when the caller already has it (content dedup)."""
    epoch, minutes, day = internal
    sent_epoch: int | None = None
    sent_day = day
    sent = analysis.sent_date
    if sent is not None:
        if sent.tzinfo is None or sent.utcoffset() is None:
            sent = sent.replace(tzinfo=datetime.UTC)
        try:
            sent_epoch = int(sent.timestamp())
            sent_day = sent.date().toordinal()
        except (OverflowError, ValueError, OSError):
            sent_epoch, sent_day = None, day
    row = (
        hashlib.sha256(raw).digest() if digest is None else digest,
        len(raw),
        epoch,
        minutes,
        day,
        sent_epoch,
        sent_day,
        analysis.message_id,
        analysis.envelope,
        analysis.bodystructure,
        analysis.body,
        analysis.parts,
    )
    headers = [
        (pos, name.lower(), value.casefold()) for pos, (name, value) in enumerate(analysis.headers)
    ] + [
        # FROM/TO/CC/BCC search the addresses as parsed (issue 17), under their own names
        (pos, address_row_name(name), value.casefold())
        for pos, (name, value) in enumerate(analysis.addresses)
    ]
    header_text = "\n".join(f"{name.lower()}: {value}" for name, value in analysis.headers)
    return MessageValues(row, headers, header_text.casefold(), analysis.text.casefold())


@dataclass
class FlagPlan:
    """What one STORE writes (RFC 3501 §6.4.6, RFC 7162 §3.1.3), decided before any SQL.

    ``writes`` holds (uid, new shared flags text or None, new private \\Seen or None,
    flags text the viewer now sees, recent bit) for each row whose visible flags change;
    ``modified`` the UIDs refused under UNCHANGEDSINCE.
    """

    writes: list[tuple[int, str | None, bool | None, str, int]]
    modified: list[int]

    def rows(self, modseq: int, flags_of: object) -> list[MessageRow]:
        """The ``updated`` rows of the StoreResult, all stamped ``modseq``;
        ``flags_of(text, recent)`` turns a flags text into the frozenset shown."""
        return [
            MessageRow(uid, flags_of(effective, recent), modseq)  # type: ignore[operator]
            for uid, _t, _p, effective, recent in self.writes
        ]

    def unchanged(
        self, rows: Iterable[Sequence], flags_of: Callable[[str, int], frozenset[str]]
    ) -> list[MessageFlags]:
        """The planned ``rows`` this plan leaves alone (neither written nor MODIFIED), as
        ``message_flags`` reads them: the StoreResult's ``unchanged``, so the handler's
        untagged FETCH (RFC 3501 §6.4.6) needs no second read. Only for a mailbox that
        is not shared (the rows carry no viewer's private \\Seen merged in)."""
        skip = {write[0] for write in self.writes}
        skip.update(self.modified)
        return [
            MessageFlags(uid, flags_of(text, recent), modseq)
            for uid, text, recent, modseq, _seen, _pmodseq in rows
            if uid not in skip
        ]


def plan_flags(
    rows: Iterable[tuple[int, str, int, int, int | None, int | None]],
    mode: str,
    given: dict[str, str],
    unchangedsince: int | None,
    shared: bool,
    viewer: str | None,
) -> FlagPlan:
    """Plan a STORE over ``rows`` of (uid, flags text, recent, modseq, private seen,
    private modseq). Rows whose flags do not change are left out (they keep their
    modseq); in a shared mailbox \\Seen is ``viewer``'s own and left alone without one."""
    plan = FlagPlan([], [])
    for uid, text, recent, modseq, pseen, pmodseq in rows:
        if unchangedsince is not None and max(modseq, pmodseq or 0) > unchangedsince:
            plan.modified.append(uid)
            continue
        current = stored_map(text)
        if shared and viewer is not None and pseen:
            current[SEEN_KEY] = "\\Seen"
        if mode == "":
            new = dict(given)
        elif mode == "+":
            new = {**given, **current}
        else:
            new = {k: v for k, v in current.items() if k not in given}
        if shared and viewer is None:
            new.pop(SEEN_KEY, None)  # nobody's \Seen to change
        if new.keys() == current.keys():
            continue
        new_text, seen = split_seen(new, shared)
        shared_write = new_text if new_text.split() != text.split() else None
        private_write = seen if shared and seen != bool(pseen) else None
        plan.writes.append((uid, shared_write, private_write, flags_text(new), recent))
    return plan


def copy_entries(
    rows: Sequence[tuple[int, int, str]], dst_shared: bool
) -> tuple[list[tuple[int, str]], list[bool]]:
    """For COPY/MOVE of (uid, message id, flags text as the viewer sees them): the
    (message id, flags text) entries of the destination rows and, per entry, whether the
    viewer's \\Seen goes along privately (destination shared)."""
    split = [split_seen(stored_map(f), dst_shared) for _u, _mid, f in rows]
    entries = [(mid, t) for (_u, mid, _f), (t, _s) in zip(rows, split, strict=True)]
    return entries, [s for _t, s in split]


def internal_values(when: datetime.datetime | None, now: datetime.datetime) -> tuple[int, int, int]:
    """INTERNALDATE as stored: (epoch seconds, offset minutes, day ordinal in that
    offset); ``now`` when not given (see :func:`~gateway.store.rules.stored_internaldate`)."""
    when = stored_internaldate(when, now)
    offset = when.utcoffset()
    assert offset is not None
    return int(when.timestamp()), int(offset.total_seconds() // 60), when.date().toordinal()


def ledger_entries_from_rows(upstream: str, rows: Iterable[Sequence]) -> list[LedgerEntry]:
    """Ledger rows as the contract returns them, from either SQL backend's
    ``SELECT uidl, state, reason, fetched_at, size, message_id IS NOT NULL``: ``stored``
    only means something for a delivered UIDL (imported and skipped ones have no message)."""
    return [
        LedgerEntry(
            upstream=upstream,
            uidl=uidl,
            state=state,
            reason=reason,
            fetched_at=datetime.datetime.fromtimestamp(fetched_at, datetime.UTC),
            size=size,
            stored=bool(stored) if state == "delivered" else None,
        )
        for uidl, state, reason, fetched_at, size, stored in rows
    ]
