"""NOTIFY (RFC 5465): telling one connection about every mailbox it cares about.

A client (FairEmail, for one) sends ``NOTIFY SET STATUS (SELECTED (MessageNew (UID)
MessageExpunge FlagChange)) (PERSONAL (MessageNew MessageExpunge))`` and from then on
hears, without polling, about:

* the selected mailbox (``SELECTED``): EXISTS, EXPUNGE and FETCH FLAGS as they happen,
  between commands and while idling, with the ``MessageNew`` fetch attributes sent for
  each new message; ``SELECTED-DELAYED`` keeps expunges for the moments RFC 3501 §7.4.1
  allows them (the end of a command that is not FETCH, STORE or SEARCH);
* other mailboxes matched by ``INBOXES``, ``PERSONAL``, ``SUBSCRIBED``, ``SUBTREE`` or
  ``MAILBOXES`` (RFC 5465 §6): a ``* STATUS`` when their message count or UIDNEXT
  moved (MESSAGES, UIDNEXT, UNSEEN; UIDVALIDITY too for new mail) or, with
  ``FlagChange``, their flags (UNSEEN if it moved; under CONDSTORE any flag change), plus
  HIGHESTMODSEQ once CONDSTORE is on (§5.1-5.3; ``NOTIFY SET STATUS`` turns it on, as in Dovecot): the forms Dovecot 2.3
  sends (``tests/test_imap_acl_notify_dovecot.py``); never for the selected mailbox (§5:
  it has its own events);
* ``MailboxName`` (§5.4): ``* LIST`` for a name that appeared, ``* LIST (\\NonExistent)``
  for one that went, ``OLDNAME`` for a rename; ``SubscriptionChange`` (§5.5): ``* LIST``
  with or without ``\\Subscribed``.

Where the events come from: the store's change listeners (what IDLE uses), handed to
each connection by :class:`gateway.imap.factory.IMAPServerFactory`; a POP3 delivery, a
Sieve filing, another session's APPEND/STORE/EXPUNGE/DELETE/RENAME all fire them. The
store does not announce a CREATE or a subscription, so name and subscription changes
made elsewhere are noticed at the next event or command of this connection (the list of
names is compared with the last one told). Mailboxes outside the user's reach never
match: ids are mapped to names through the user's own mailbox list.

Bounds: at most :data:`MAX_PENDING` mailboxes may have undelivered events (a client not
reading its socket); beyond, the server says ``* OK [NOTIFICATIONOVERFLOW]`` and turns
NOTIFY off (RFC 5465 §5.8), and the client re-synchronises as after a reconnect.

Not supported (``NO [BADEVENT ...]``, §3.2): AnnotationChange (no ANNOTATE),
MailboxMetadataChange and ServerMetadataChange (no METADATA).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.core.criteria import SeqRange, SequenceSet
from gateway.imap.command import Command, Fetch, FetchItem
from gateway.imap.fetch_grammar import fetch_att
from gateway.imap.handler import BadCommand, Handler, Output, Refused, ok
from gateway.imap.messages import fetch as run_fetch
from gateway.imap.reader import LPAREN, Reader, Syntax, show
from gateway.store.interfaces import DELIMITER, INBOX, MailboxCounts, MailboxNotFound

if TYPE_CHECKING:
    from gateway.imap.handler import Session

NOTIFY_CAPABILITY = "NOTIFY"

MAX_PENDING = 256
"""Most mailboxes with undelivered events before ``NOTIFICATIONOVERFLOW`` (RFC 5465 §5.8)."""

MESSAGE_NEW = "MESSAGENEW"
MESSAGE_EXPUNGE = "MESSAGEEXPUNGE"
FLAG_CHANGE = "FLAGCHANGE"
MAILBOX_NAME = "MAILBOXNAME"
SUBSCRIPTION_CHANGE = "SUBSCRIPTIONCHANGE"
SUPPORTED_EVENTS = {
    MESSAGE_NEW: "MessageNew",
    MESSAGE_EXPUNGE: "MessageExpunge",
    FLAG_CHANGE: "FlagChange",
    MAILBOX_NAME: "MailboxName",
    SUBSCRIPTION_CHANGE: "SubscriptionChange",
}
"""RFC 5465 §5 events popgate delivers (upper case → the RFC's spelling)."""

_MESSAGE_EVENTS = frozenset((MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, "ANNOTATIONCHANGE"))
_SELECTED_FILTERS = frozenset(("SELECTED", "SELECTED-DELAYED"))
_OTHER_FILTERS = frozenset(("INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"))


# ---- the command --------------------------------------------------------------------


@dataclass(frozen=True)
class EventGroup:
    """One ``(filter events)`` of NOTIFY SET: the filter word, its mailbox names (SUBTREE,
    MAILBOXES), the upper-case event names and the MessageNew fetch attributes."""

    filter: str
    mailboxes: tuple[bytes, ...] = ()
    events: frozenset[str] = frozenset()
    fetch_items: tuple[FetchItem, ...] = ()


@dataclass(frozen=True)
class Notify(Command):
    """NOTIFY NONE (``groups`` empty, ``none``) or NOTIFY SET [STATUS] groups."""

    none: bool = False
    status: bool = False
    groups: tuple[EventGroup, ...] = ()


def cmd_notify(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """RFC 5465 §8: ``NOTIFY NONE`` / ``NOTIFY SET [STATUS] event-group...``."""
    r.sp("SET or NONE")
    word = r.word("SET or NONE")
    if word == "NONE":
        r.finish()
        return Notify(tag=tag, name=name, none=True)
    if word != "SET":
        r.fail("SET or NONE")
    r.sp("event groups")
    status = False
    if r.peek() != LPAREN:
        if r.word("STATUS or an event group") != "STATUS":
            r.fail("STATUS or an event group")
        status = True
        r.sp("event groups")
    groups = [_event_group(r)]
    while not r.at_end():
        r.sp("an event group")
        groups.append(_event_group(r))
    r.finish()
    return Notify(tag=tag, name=name, status=status, groups=tuple(groups))


def _event_group(r: Reader) -> EventGroup:
    r.open("an event group")
    kind = r.word("a mailbox filter")
    mailboxes: tuple[bytes, ...] = ()
    if kind in ("SUBTREE", "MAILBOXES"):
        r.sp("mailbox names")
        if r.peek() == LPAREN:
            mailboxes = tuple(r.paren_list(lambda: r.astring("a mailbox"), "mailbox names"))
        else:
            mailboxes = (r.astring("a mailbox"),)
    elif kind not in _SELECTED_FILTERS | _OTHER_FILTERS:
        raise Syntax(f"unknown mailbox filter {show(kind.encode())}")
    r.sp("events")
    events: set[str] = set()
    items: list[FetchItem] = []
    if r.peek() == LPAREN:

        def event() -> None:
            word = r.word("an event")
            events.add(word)
            if word == MESSAGE_NEW and r.text[r.pos : r.pos + 2] == b" (":
                if kind not in _SELECTED_FILTERS:
                    raise Syntax("MessageNew fetch attributes are for the selected mailbox")
                r.sp("fetch attributes")
                r.paren_list(lambda: fetch_att(r, items, macro_ok=False), "fetch attributes")

        r.paren_list(event, "events")
    elif r.word("events or NONE") != "NONE":
        r.fail("a list of events or NONE")
    r.close()
    _check_events(kind, events)
    return EventGroup(kind, mailboxes, frozenset(events), tuple(items))


def _check_events(kind: str, events: set[str]) -> None:
    """RFC 5465 §5: MessageNew and MessageExpunge come together; FlagChange and
    AnnotationChange need both; the selected filters take message events only."""
    if (MESSAGE_NEW in events) != (MESSAGE_EXPUNGE in events):
        raise Syntax("MessageNew and MessageExpunge must be requested together")
    if events & {FLAG_CHANGE, "ANNOTATIONCHANGE"} and MESSAGE_NEW not in events:
        raise Syntax("FlagChange and AnnotationChange need MessageNew and MessageExpunge")
    if kind in _SELECTED_FILTERS and events - _MESSAGE_EVENTS:
        raise Syntax("the selected mailbox takes message events only")


# ---- the handler ----------------------------------------------------------------------


def notify(session: Session, cmd: Notify) -> Handler:
    """NOTIFY, RFC 5465 §3. State: authenticated or selected."""
    if cmd.none:
        session.set_notifier(None)
        yield from ()
        return ok("NOTIFY completed")
    unsupported = {e for g in cmd.groups for e in g.events} - set(SUPPORTED_EVENTS)
    if unsupported:
        names = " ".join(SUPPORTED_EVENTS.values())
        raise Refused("Event not supported", f"BADEVENT ({names})")
    user = session.user
    if user is None:  # the state table makes this unreachable
        raise BadCommand("not authenticated")
    groups = []
    for group in cmd.groups:
        names = tuple(session.mailbox_name(m) for m in group.mailboxes)
        groups.append((group, names))
    notifier = Notifier(user, groups)
    notifier.start(session)
    session.set_notifier(notifier)
    if cmd.status:
        # RFC 5465 §3: the STATUS option reports where the watched mailboxes stand now,
        # with HIGHESTMODSEQ, which makes it a CONDSTORE enabling command (RFC 7162 §3.1),
        # as in Dovecot 2.3.
        session.enable_condstore()
        yield from notifier.initial_status(session)
    return ok("NOTIFY completed")


# ---- the per-connection state ---------------------------------------------------------


def _status_line(
    session: Session,
    name: str,
    counts: MailboxCounts,
    *,
    messages: bool,
    new: bool,
    unseen: bool = True,
) -> bytes:
    """``* STATUS`` as Dovecot 2.3 sends it for NOTIFY (RFC 5465 §3, §5.1-5.3): MESSAGES,
    UIDNEXT and UNSEEN when messages came or went, UNSEEN for a flag change that moved it
    (``unseen``); with ``new`` (new mail, or NOTIFY SET STATUS's first report) also
    UIDVALIDITY; HIGHESTMODSEQ whenever CONDSTORE is on."""
    items = []
    if messages:
        items += [f"MESSAGES {counts.messages}", f"UIDNEXT {counts.uidnext}"]
    if new:
        items.append(f"UIDVALIDITY {counts.uidvalidity}")
    if unseen:
        items.append(f"UNSEEN {counts.unseen}")
    if session.condstore_active():
        items.append(f"HIGHESTMODSEQ {counts.highestmodseq}")
    return b"* STATUS " + session.wire_name(name) + b" (" + " ".join(items).encode() + b")\r\n"


class Notifier:
    """What one connection asked to hear about, and what it has been told (RFC 5465).

    The transport glue calls :meth:`changed` with every store event; the session calls
    :meth:`deliver` after each command, while idling and between commands, to render the
    pending events. Per watched mailbox the last counts told are kept, so one STATUS is
    sent per mailbox however many changes happened in between.
    """

    def __init__(self, user: str, groups: list[tuple[EventGroup, tuple[str, ...]]]) -> None:
        self.user = user
        self.groups = groups
        self.selected_group = next((g for g, _ in groups if g.filter in _SELECTED_FILTERS), None)
        self.names: dict[int, str] = {}  # mailbox id → name, of the mailboxes the user reaches
        self.subscribed: set[str] = set()
        self.told: dict[int, MailboxCounts] = {}
        self.pending: set[int] = set()
        self.selected_pending = False
        self.names_stale = False
        self.overflowed = False
        self._largest_id = 0
        self._shared_prefix: str | None = None  # "Shared/" for a household member
        self._wants_names = any(g.events & {MAILBOX_NAME, SUBSCRIPTION_CHANGE} for g, _ in groups)

    # -- which mailboxes --

    def _group_for(self, name: str) -> EventGroup | None:
        """The first non-selected group whose filter matches ``name`` (RFC 5465 §6)."""
        for group, names in self.groups:
            kind = group.filter
            if kind == "INBOXES":
                hit = name == INBOX
            elif kind == "PERSONAL":
                hit = not self._is_shared(name)
            elif kind == "SUBSCRIBED":
                hit = name in self.subscribed
            elif kind == "MAILBOXES":
                hit = name in names
            elif kind == "SUBTREE":
                hit = any(name == n or name.startswith(n + DELIMITER) for n in names)
            else:
                continue
            if hit:
                return group
        return None

    def _is_shared(self, name: str) -> bool:
        return self._shared_prefix is not None and name.startswith(self._shared_prefix)

    def _watches_messages(self, name: str) -> EventGroup | None:
        group = self._group_for(name)
        return group if group is not None and MESSAGE_NEW in group.events else None

    def _refresh(self, session: Session) -> list[bytes]:
        """Re-read the user's names and subscriptions; the LIST lines MailboxName and
        SubscriptionChange call for (RFC 5465 §5.4-5.5)."""
        store = session.store
        mailboxes = store.list_mailboxes(self.user)
        shared = getattr(store, "shared_namespace", None)
        self._shared_prefix = shared() if callable(shared) else None
        subscribed = set(store.subscriptions(self.user))
        names = {m.id: m.name for m in mailboxes}
        out: list[bytes] = []
        if self.names or self.subscribed:
            out.extend(self._name_changes(session, names, subscribed))
        self.names, self.subscribed = names, subscribed
        self._largest_id = max([self._largest_id, *names])
        self.names_stale = False
        return out

    def _name_changes(
        self, session: Session, names: dict[int, str], subscribed: set[str]
    ) -> Iterator[bytes]:
        def wants(name: str, event: str) -> bool:
            group = self._group_for(name)
            return group is not None and event in group.events

        wire = session.wire_name
        for mailbox_id, old in self.names.items():
            new = names.get(mailbox_id)
            if new is None and wants(old, MAILBOX_NAME):
                yield b'* LIST (\\NonExistent) "/" ' + wire(old) + b"\r\n"
            elif new is not None and new != old and wants(new, MAILBOX_NAME):
                yield (b'* LIST () "/" ' + wire(new) + b' ("OLDNAME" (' + wire(old) + b"))\r\n")
        for mailbox_id, new in names.items():
            if mailbox_id not in self.names and wants(new, MAILBOX_NAME):
                yield b'* LIST () "/" ' + wire(new) + b"\r\n"
        for name in sorted(subscribed ^ self.subscribed):
            if wants(name, SUBSCRIPTION_CHANGE):
                attrs = b"(\\Subscribed)" if name in subscribed else b"()"
                yield b"* LIST " + attrs + b' "/" ' + wire(name) + b"\r\n"

    # -- lifecycle --

    def start(self, session: Session) -> None:
        """NOTIFY SET: learn the names and where each watched mailbox stands now."""
        self._refresh(session)
        selected = session.selected.mailbox.id if session.selected is not None else None
        for mailbox_id, name in self.names.items():
            if mailbox_id != selected and self._watches_messages(name) is not None:
                try:
                    self.told[mailbox_id] = session.store.counts(mailbox_id)
                except MailboxNotFound:
                    continue

    def initial_status(self, session: Session) -> Iterator[bytes]:
        selected = session.selected.mailbox.id if session.selected is not None else None
        for mailbox_id, counts in sorted(self.told.items(), key=lambda kv: self.names[kv[0]]):
            if mailbox_id != selected:
                name = self.names[mailbox_id]
                yield _status_line(session, name, counts, messages=True, new=True)

    def changed(self, mailbox_id: int, selected_id: int | None) -> bool:
        """A store event; True when this connection has something new to deliver."""
        if self.overflowed:
            return False
        if mailbox_id == selected_id:
            if self.selected_group is None or not self.selected_group.events:
                return False
            self.selected_pending = True
            return True
        if mailbox_id in self.names:
            if self._wants_names:
                self.names_stale = True
        elif mailbox_id > self._largest_id:
            self._largest_id = mailbox_id  # maybe a new mailbox of this user's
            self.names_stale = True
        else:
            return False  # someone else's mailbox
        self.pending.add(mailbox_id)
        if len(self.pending) > MAX_PENDING:
            self.overflowed = True
        return True

    # -- delivery --

    def has_pending(self) -> bool:
        return self.overflowed or self.selected_pending or bool(self.pending)

    def handles_selected(self) -> bool:
        """Whether the selected mailbox's events are this notifier's to send."""
        return self.selected_group is not None and bool(self.selected_group.events)

    def deliver(
        self, session: Session, *, between_commands: bool, idling: bool = False
    ) -> Iterator[Output]:
        """The responses for everything pending. ``between_commands``: no command is
        running (or IDLE is), so the selected mailbox's events go out too; after a
        command its catch-up has told them already."""
        if self.overflowed:
            session.set_notifier(None)
            yield b"* OK [NOTIFICATIONOVERFLOW] Too many changes; NOTIFY is off\r\n"
            return
        was_pending, self.selected_pending = self.selected_pending, False
        if between_commands and was_pending:
            yield from self._selected(session, idling=idling)
        pending, self.pending = self.pending, set()
        if self.names_stale or (self._wants_names and not between_commands):
            yield from self._refresh(session)
        selected = session.selected.mailbox.id if session.selected is not None else None
        for mailbox_id in sorted(pending):
            name = self.names.get(mailbox_id)
            if name is None or mailbox_id == selected:
                continue
            group = self._watches_messages(name)
            if group is None:
                continue
            try:
                counts = session.store.counts(mailbox_id)
            except MailboxNotFound:
                self.told.pop(mailbox_id, None)
                continue
            before = self.told.get(mailbox_id)
            self.told[mailbox_id] = counts
            moved = before is None or (before.messages, before.uidnext) != (
                counts.messages,
                counts.uidnext,
            )
            flags = FLAG_CHANGE in group.events and _flags_moved(
                before, counts, session.condstore_active()
            )
            if moved or flags:
                new = before is None or before.uidnext != counts.uidnext
                unseen = moved or before is None or before.unseen != counts.unseen
                yield _status_line(session, name, counts, messages=moved, new=new, unseen=unseen)

    def _selected(self, session: Session, *, idling: bool) -> Iterator[Output]:
        """SELECTED events between commands: the catch-up IDLE would send (EXPUNGE held
        back for SELECTED-DELAYED), then the MessageNew fetch attributes of new mail."""
        view = session.selected
        group = self.selected_group
        if view is None or group is None:
            return
        last = view.uids[-1] if view.uids else 0
        delayed = group.filter == "SELECTED-DELAYED" and not idling
        yield from session.catch_up(allow_expunge=not delayed)
        uids = view.uids
        first = bisect.bisect_right(uids, last)
        if first < len(uids) and group.fetch_items:
            new = SequenceSet((SeqRange(uids[first], uids[-1]),))
            yield from run_fetch(
                session,
                Fetch(tag="*", name="FETCH", uid=True, sequence_set=new, items=group.fetch_items),
            )


def _flags_moved(before: MailboxCounts | None, after: MailboxCounts, condstore: bool) -> bool:
    """Whether a flag change is news: the unseen count moved, or under CONDSTORE the
    modseq (without it Dovecot says nothing of a \\Deleted or \\Flagged, nor do we)."""
    if before is None or before.unseen != after.unseen:
        return True
    return condstore and before.highestmodseq != after.highestmodseq
