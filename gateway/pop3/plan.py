"""Sync planning for one POP3 upstream: which messages to fetch, skip, delete or forget.

Pure functions, no I/O (STYLE.md habits 1 and 8): the fetcher hands in the raw lines of
the upstream's UIDL and LIST answers and the ledger's known UIDLs, and gets back a
:class:`SyncPlan`. Everything that decides whether mail could be lost or duplicated lives
here, where property tests can reach it:

- a UIDL already in the ledger is never fetched again (exactly-once ingest);
- a message is deleted upstream only when its UIDL is already durably delivered, the
  listing is complete, and no other message on the server shares its UIDL;
- a ledger entry is forgotten only when a complete, trustworthy listing no longer shows it;
- the deletion policies (:func:`plan_deletions`) only ever choose messages the ledger holds
  as delivered, and only from a complete listing.

Servers without UIDL: :func:`fallback_uidl` derives a stable key from a message's headers
(via ``TOP n 0``, RFC 1939 §7) and its LIST size. Its limits, stated plainly:

- two different messages with the same Message-ID, Date, From, Subject and size get the
  same key: they are taken as one (the first is fetched, the other treated like a
  duplicate UIDL: never fetched, never deleted);
- a server that rewrites headers or changes the reported size of a stored message makes
  it look new, so it would be fetched again;
- it costs one TOP command per listed message on every pass.

POP3 facts relied on (RFC 1939): message numbers are 1-based and fixed for the session
(§5); UIDL answers ``msg-number SP unique-id`` with a unique-id of 1-70 characters in
0x21-0x7E that "persists across sessions" (§7); LIST answers ``msg-number SP size``
with the size in octets as sent on the wire, CRLF line ends included (§5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

MAX_UIDL_LENGTH = 512
"""Longest unique-id accepted. RFC 1939 §7 allows 70; some servers exceed it, so be lenient
but bounded: the UIDL becomes a ledger key."""

MAX_MESSAGE_NUMBER = 10_000_000
"""A message number above this in a listing is treated as garbage, not believed."""

MAX_REPORTED_PROBLEMS = 20
"""How many listing problems a :class:`Listing` keeps verbatim (for the log)."""


@dataclass(frozen=True, order=True)
class ListedMessage:
    """One message as the upstream lists it in this session.

    ``number`` is the 1-based POP3 message number (RFC 1939 §5), valid only for this
    session; ``uidl`` is the persistent key; ``size`` is the LIST size in octets, or None
    when LIST did not mention the message.
    """

    number: int
    uidl: str
    size: int | None = None


@dataclass(frozen=True)
class Listing:
    """The upstream's maildrop as read in one session.

    ``complete`` is true only when every UIDL and LIST line parsed, both answers name the
    same message numbers exactly once, and (when known) STAT agreed on the count. An
    incomplete listing may still be used to fetch, but never to delete or forget.
    """

    messages: tuple[ListedMessage, ...]
    complete: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncPlan:
    """What one fetch pass should do, each list in server (message-number) order.

    - ``fetch``: new UIDLs within the size limit, first occurrence of each UIDL only.
    - ``too_large``: new UIDLs whose LIST size exceeds the limit: record as skipped.
    - ``delete``: messages whose UIDL is already delivered (durably, before this plan was
      made) and may be removed upstream; empty when ``keep_on_server`` is true.
    - ``forget``: ledger UIDLs the upstream no longer lists; empty unless ``trustworthy``.
    - ``duplicates``: UIDLs the upstream lists more than once (a server bug: RFC 1939 §7
      requires them unique); such messages are never deleted.
    """

    fetch: tuple[ListedMessage, ...]
    too_large: tuple[ListedMessage, ...]
    delete: tuple[ListedMessage, ...]
    forget: frozenset[str]
    duplicates: frozenset[str]
    trustworthy: bool
    listed: int = 0
    problems: tuple[str, ...] = field(default=())


def _is_uidl(token: bytes) -> bool:
    return 0 < len(token) <= MAX_UIDL_LENGTH and all(0x21 <= b <= 0x7E for b in token)


def _message_number(token: bytes) -> int | None:
    if not token.isdigit() or len(token) > 9:
        return None
    number = int(token)
    if not 0 < number <= MAX_MESSAGE_NUMBER:
        return None
    return number


def parse_uidl_line(line: bytes) -> tuple[int, str] | None:
    """``msg-number SP unique-id`` (RFC 1939 §7) → (number, uidl), or None if malformed."""
    parts = line.split(b" ")
    if len(parts) != 2:
        return None
    number = _message_number(parts[0])
    if number is None or not _is_uidl(parts[1]):
        return None
    return number, parts[1].decode("ascii")


def parse_list_line(line: bytes) -> tuple[int, int] | None:
    """``msg-number SP size`` (RFC 1939 §5) → (number, size), or None if malformed.

    Anything after the size is ignored: "this memo makes no requirement on what follows
    the message size in the scan listing" (RFC 1939 §5, LIST).
    """
    parts = line.split(b" ", 2)
    if len(parts) < 2:
        return None
    number = _message_number(parts[0])
    if number is None or not parts[1].isdigit() or len(parts[1]) > 18:
        return None
    return number, int(parts[1])


def build_listing(
    uidl_lines: Iterable[bytes],
    list_lines: Iterable[bytes] | None,
    *,
    stat_count: int | None = None,
) -> Listing:
    """Join the UIDL and LIST answers into one listing, judging whether it is complete.

    A message number that the UIDL answer gives two different UIDLs is ambiguous and
    dropped (fetching it under the wrong key could duplicate or lose mail). ``list_lines``
    None means LIST was not available: sizes are unknown and the listing incomplete.
    """
    problems: list[str] = []

    def problem(text: str) -> None:
        if len(problems) < MAX_REPORTED_PROBLEMS:
            problems.append(text)

    complete = True
    uidls: dict[int, str] = {}
    ambiguous: set[int] = set()
    for line in uidl_lines:
        parsed = parse_uidl_line(line)
        if parsed is None:
            complete = False
            problem(f"malformed UIDL line {line[:80]!r}")
            continue
        number, uidl = parsed
        if number in uidls:
            complete = False
            if uidls[number] != uidl:
                ambiguous.add(number)
            problem(f"message {number} listed twice by UIDL")
            continue
        uidls[number] = uidl
    for number in ambiguous:
        del uidls[number]

    sizes: dict[int, int] = {}
    if list_lines is None:
        complete = False
        problem("no LIST sizes")
    else:
        for line in list_lines:
            parsed_size = parse_list_line(line)
            if parsed_size is None:
                complete = False
                problem(f"malformed LIST line {line[:80]!r}")
                continue
            number, size = parsed_size
            if number in sizes:
                complete = False
                problem(f"message {number} listed twice by LIST")
                continue
            sizes[number] = size
        if set(sizes) != set(uidls) or ambiguous:
            complete = False
            problem("UIDL and LIST disagree on message numbers")
    if stat_count is not None and stat_count != len(uidls):
        complete = False
        problem(f"STAT says {stat_count} messages, UIDL lists {len(uidls)}")

    messages = tuple(
        ListedMessage(number, uidl, sizes.get(number)) for number, uidl in sorted(uidls.items())
    )
    return Listing(messages, complete, tuple(problems))


def plan_sync(
    listing: Sequence[ListedMessage],
    known: AbstractSet[str],
    *,
    keep_on_server: bool,
    max_message_size: int,
    not_deletable: AbstractSet[str] = frozenset(),
    complete: bool = True,
    problems: Sequence[str] = (),
) -> SyncPlan:
    """Plan one pass over ``listing`` given the ledger's ``known`` UIDLs.

    ``known`` must come from the store (delivered or deliberately skipped UIDLs, read
    before this call); ``not_deletable`` names known UIDLs that were skipped rather than
    delivered, so deleting them would lose mail. The caller delivers ``fetch``, then
    re-plans with the refreshed ledger to learn what may be deleted: only what is
    already durable can ever appear in ``delete``.

    Deleting needs a ``complete`` listing (a garbled answer could pair a number with the
    wrong UIDL). Forgetting needs a trustworthy one: complete, no duplicate UIDLs, and not
    empty, because a server that briefly shows an empty maildrop (a lock, a failed
    mount) would otherwise make the ledger forget everything and re-fetch it all later.
    Keeping a stale entry a little longer costs a few bytes; forgetting one too early
    costs a duplicate message.

    The result depends only on the set of listed messages, never on the order the
    server sent them in.
    """
    ordered = sorted(listing, key=lambda m: (m.number, m.uidl))
    counts: dict[str, int] = {}
    for message in ordered:
        counts[message.uidl] = counts.get(message.uidl, 0) + 1
    duplicates = frozenset(uidl for uidl, n in counts.items() if n > 1)

    fetch: list[ListedMessage] = []
    too_large: list[ListedMessage] = []
    delete: list[ListedMessage] = []
    planned: set[str] = set()
    for message in ordered:
        uidl = message.uidl
        if uidl in known:
            if (
                not keep_on_server
                and complete
                and uidl not in duplicates
                and uidl not in not_deletable
            ):
                delete.append(message)
            continue
        if uidl in planned:
            continue  # a duplicate UIDL: only its first occurrence is fetched
        planned.add(uidl)
        if message.size is not None and message.size > max_message_size:
            too_large.append(message)
        else:
            fetch.append(message)

    trustworthy = complete and not duplicates and bool(ordered)
    listed_uidls = set(counts)
    forget = frozenset(known - listed_uidls) if trustworthy else frozenset()
    return SyncPlan(
        fetch=tuple(fetch),
        too_large=tuple(too_large),
        delete=tuple(delete),
        forget=forget,
        duplicates=duplicates,
        trustworthy=trustworthy,
        listed=len(ordered),
        problems=tuple(problems),
    )


# ---- identity without UIDL -----------------------------------------------------------

FALLBACK_UIDL_PREFIX = "popgate-h-"
"""Prefix of synthetic UIDLs, so they can never be mistaken for a server's own."""

FALLBACK_FIELDS = ("message-id", "date", "from", "subject")
"""Header fields (RFC 5322 §3.6) whose first occurrence identifies a message without UIDL."""

MAX_HEADER_LINES = 10_000
"""Header lines of one TOP answer considered; beyond that the rest is ignored."""


def header_fields(lines: Iterable[bytes]) -> dict[str, bytes]:
    """First occurrence of each field in ``lines`` (a header block, lines without CRLF,
    stopping at the empty line), unfolded (RFC 5322 §2.2.3), whitespace collapsed, keyed by
    lower-case name. Lines that are not fields are ignored."""
    fields: dict[str, bytes] = {}
    current: str | None = None
    parts: list[bytes] = []

    def close() -> None:
        if current is not None and current not in fields:
            fields[current] = b" ".join(b" ".join(parts).split())

    for count, line in enumerate(lines):
        if not line or count >= MAX_HEADER_LINES:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                parts.append(line)
            continue
        close()
        name, colon, value = line.partition(b":")
        if not colon or not name or b" " in name.strip():
            current, parts = None, []
            continue
        current, parts = name.strip().decode("ascii", "replace").lower(), [value]
    close()
    return fields


def fallback_uidl(header_lines: Iterable[bytes], size: int) -> str:
    """A stable stand-in for a UIDL: a hash of Message-ID, Date, From, Subject and the
    LIST size (see the module docstring for what this cannot tell apart)."""
    fields = header_fields(header_lines)
    digest = hashlib.sha256()
    for name in FALLBACK_FIELDS:
        digest.update(name.encode("ascii") + b"\0" + fields.get(name, b"") + b"\0")
    digest.update(b"size\0%d" % size)
    return FALLBACK_UIDL_PREFIX + digest.hexdigest()[:40]


# ---- deletion policies ---------------------------------------------------------------

POLICY_FETCHED = "keep_on_server=false"
POLICY_AGE = "delete_after"
POLICY_SIZE = "delete_when_over"
POLICY_IMAP = "deleted_in_imap"


@dataclass(frozen=True)
class DeletionPolicy:
    """When messages already delivered may be deleted upstream (config keys of the same
    names). The default keeps everything forever."""

    keep_on_server: bool = True
    delete_after: float | None = None  # seconds since the message was fetched
    delete_when_over: int | None = None  # octets the upstream maildrop may hold
    deleted_in_imap: str = "keep"  # "delete": DELE once no copy is left in the store

    @property
    def deletes_anything(self) -> bool:
        return (
            not self.keep_on_server
            or self.delete_after is not None
            or self.delete_when_over is not None
            or self.deleted_in_imap == "delete"
        )


@dataclass(frozen=True)
class LedgerFact:
    """What deletion planning needs to know of one ledger entry."""

    state: str  # "delivered" | "skipped" | "imported"
    fetched_at: float  # epoch seconds
    stored: bool | None = None  # delivered and still in some mailbox of the store


def plan_deletions(
    listing: Sequence[ListedMessage],
    ledger: Mapping[str, LedgerFact],
    policy: DeletionPolicy,
    *,
    now: float,
    complete: bool,
) -> tuple[tuple[ListedMessage, str], ...]:
    """Which listed messages to DELE now and under which policy, in message-number order.

    Only a message whose UIDL the ledger holds as "delivered" is ever chosen (skipped ones
    are not in the store; imported ones are in another fetcher's store, which popgate
    cannot vouch for), never one whose UIDL the server lists twice, and nothing at all
    from an incomplete listing. Policies, first match wins for the reported reason:
    keep_on_server=false (everything delivered), deleted_in_imap="delete" (delivered but
    no longer stored), delete_after (fetched at least that long ago), delete_when_over
    (oldest fetched first, until the listed sizes add up to no more than the limit).
    """
    if not complete or not policy.deletes_anything:
        return ()
    ordered = sorted(listing, key=lambda m: (m.number, m.uidl))
    counts: dict[str, int] = {}
    for message in ordered:
        counts[message.uidl] = counts.get(message.uidl, 0) + 1
    eligible = [
        m
        for m in ordered
        if counts[m.uidl] == 1 and (fact := ledger.get(m.uidl)) is not None
        if fact.state == "delivered"
    ]
    chosen: dict[int, str] = {}
    for message in eligible:
        fact = ledger[message.uidl]
        if not policy.keep_on_server:
            chosen[message.number] = POLICY_FETCHED
        elif policy.deleted_in_imap == "delete" and fact.stored is False:
            chosen[message.number] = POLICY_IMAP
        elif policy.delete_after is not None and now - fact.fetched_at >= policy.delete_after:
            chosen[message.number] = POLICY_AGE
    limit = policy.delete_when_over
    if limit is not None and all(m.size is not None for m in ordered):
        remaining = sum(m.size or 0 for m in ordered if m.number not in chosen)
        oldest_first = sorted(
            (m for m in eligible if m.number not in chosen),
            key=lambda m: (ledger[m.uidl].fetched_at, m.number),
        )
        for message in oldest_first:
            if remaining <= limit:
                break
            chosen[message.number] = POLICY_SIZE
            remaining -= message.size or 0
    return tuple((m, chosen[m.number]) for m in ordered if m.number in chosen)
