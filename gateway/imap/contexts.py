"""Live SEARCH and SORT results: RFC 5267 §4 (CONTEXT=SEARCH, CONTEXT=SORT).

A ``SEARCH`` or ``SORT`` with ``RETURN (UPDATE)`` leaves a *context* behind in the
selected mailbox's view: the command's criteria (its sequence numbers and ``$`` frozen to
the messages they named), its sort program, and the result the client holds. Whenever
the session tells its client about changes (the catch-up after a command, IDLE, NOTIFY),
each context is searched again and the difference is sent unsolicited as
``* ESEARCH (TAG "t") [UID] REMOVEFROM (...)`` then ``ADDTO (...)`` (§4.3). Messages
being expunged leave their contexts *before* the EXPUNGE responses, while their sequence
numbers still hold (as Dovecot does). ``CANCELUPDATE "t"`` ends a context; so does leaving
the mailbox, since contexts live in the view.

Positions (§4.3 ``context-position``): 0 in a SEARCH context, whose result has no order;
in a SORT context the 1-based place in the sorted result, one pair per message. The pairs
are applied in the order sent: removals from the highest old position down (each
position is still valid when it is applied), additions at their final positions from
the lowest up (each lands where it belongs). Dovecot 2.3 announces only CONTEXT=SEARCH
and sends position 0 for SORT contexts too; RFC 5267 forbids 0 there.

This module owns the contexts and the responses; searching them again is
:func:`gateway.imap.searching.context_updates` (this module imports no handler module,
so the message handlers can call :func:`leaving` without an import cycle).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.core import criteria as c
from gateway.core.sorting import SortCriterion
from gateway.imap import wire
from gateway.imap.command import Command
from gateway.imap.handler import Handler, Refused, ok
from gateway.imap.reader import Reader, Syntax

if TYPE_CHECKING:
    from gateway.imap.handler import SelectedView, Session

MAX_CONTEXTS = 16
"""Live contexts per selected mailbox; one more is refused with ``NO [NOUPDATE "tag"]``
(RFC 5267 §4.3): each is searched again whenever the mailbox changes."""


@dataclass
class SearchContext:
    """One ``RETURN (UPDATE)`` result the client keeps current (RFC 5267 §4.3).

    ``criteria`` are the command's, with sequence numbers and ``$`` already turned into
    the UIDs they named (a context follows messages, not numbers); ``program`` is the
    SORT program, or None for a SEARCH context; ``result`` holds UIDs as the client has
    them: ascending for SEARCH, in sort order for SORT."""

    tag: str
    uid: bool
    criteria: c.Criteria
    program: tuple[SortCriterion, ...] | None
    result: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CancelUpdate(Command):
    """``CANCELUPDATE 1*(SP quoted)``, RFC 5267 §4.3: the tags of contexts to end."""

    tags: tuple[str, ...] = ()


def cmd_cancelupdate(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """``CANCELUPDATE "tag" ["tag" ...]`` (RFC 5267 §5 ``command-select =/``)."""
    tags: list[str] = []
    while not r.at_end():
        r.sp("a context tag")
        tags.append(r.quoted().decode("utf-8", "replace"))
    if not tags:
        raise Syntax("CANCELUPDATE needs the tag of a search context")
    return CancelUpdate(tag=tag, name=name, tags=tuple(tags))


def cancelupdate(session: Session, cmd: CancelUpdate) -> Handler:
    """CANCELUPDATE, RFC 5267 §4.3: no more updates for these contexts. A tag that names
    no live context is NO, and then no context is ended (as Dovecot answers)."""
    view = session.selected
    assert view is not None
    contexts = view.contexts
    unknown = [t for t in cmd.tags if t not in contexts]
    if unknown:
        raise Refused(f"no search context has the tag {unknown[0]!r}")
    for t in cmd.tags:
        del contexts[t]
    return ok("CANCELUPDATE completed")
    yield  # a generator handler (gateway.imap.handler)


def keep(view: SelectedView, context: SearchContext) -> bytes:
    """Register ``context`` after its command's ESEARCH response. The untagged
    ``NO [NOUPDATE "tag"]`` that refuses one beyond :data:`MAX_CONTEXTS`, else b""."""
    contexts = view.contexts
    if context.tag not in contexts and len(contexts) >= MAX_CONTEXTS:
        return b"* NO [NOUPDATE " + wire.quote(context.tag.encode()) + b"] Too many contexts\r\n"
    contexts[context.tag] = context
    return b""


def _head(context: SearchContext) -> bytes:
    head = b"* ESEARCH (TAG " + wire.quote(context.tag.encode()) + b")"
    return head + b" UID" if context.uid else head


def _pairs(view: SelectedView, context: SearchContext, placed: list[tuple[int, int]]) -> bytes:
    """``(pos n pos n ...)`` for a SORT context, one pair per message in the given order;
    ``(0 set)`` for a SEARCH context; b"" when no message has a number to give. A context
    holds only messages the view shows (they leave it, :func:`leaving`, before the view
    forgets them), so a sequence number is always there; a UID is skipped otherwise."""
    numbered: list[tuple[int, int]] = []
    for pos, uid in placed:
        number = uid if context.uid else view.seq_of(uid)
        if number is not None:
            numbered.append((pos, number))
    if not numbered:
        return b""
    if context.program is None:
        numbers = sorted(n for _pos, n in numbered)
        return b"(0 " + wire.sequence_set_text(numbers) + b")"
    return b"(" + b" ".join(b"%d %d" % pair for pair in numbered) + b")"


def _removefrom(view: SelectedView, context: SearchContext, gone: set[int]) -> bytes:
    """REMOVEFROM for the ``gone`` UIDs of ``context`` (b"" when none are in it), and the
    context's result without them. Positions are the old ones, highest first."""
    old = context.result
    placed = [(pos, uid) for pos, uid in enumerate(old, 1) if uid in gone]
    if not placed:
        return b""
    context.result = [uid for uid in old if uid not in gone]
    placed.reverse()
    pairs = _pairs(view, context, placed)
    return _head(context) + b" REMOVEFROM " + pairs + b"\r\n" if pairs else b""


def leaving(view: SelectedView, uids: Iterable[int]) -> Iterator[bytes]:
    """REMOVEFROM for messages about to be expunged from the view, sent before their
    EXPUNGE (or VANISHED) responses so that sequence numbers still name them."""
    if not view.contexts:
        return
    gone = set(uids)
    for context in view.contexts.values():
        line = _removefrom(view, context, gone)
        if line:
            yield line


def changed(view: SelectedView, context: SearchContext, found: list[int]) -> Iterator[bytes]:
    """The REMOVEFROM and ADDTO responses that turn the client's result into ``found``
    (UIDs the view shows: ascending for SEARCH, in sort order for SORT)."""
    now = set(found)
    before = set(context.result)
    line = _removefrom(view, context, before - now)
    if line:
        yield line
    added = now - before
    if not added:
        return
    context.result = list(found)
    placed = [(pos, uid) for pos, uid in enumerate(found, 1) if uid in added]
    pairs = _pairs(view, context, placed)
    if pairs:
        yield _head(context) + b" ADDTO " + pairs + b"\r\n"
