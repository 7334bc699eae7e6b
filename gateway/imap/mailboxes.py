"""IMAP mailbox commands: CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB STATUS NAMESPACE.

RFC 3501 §6.3, with RFC 5258 (LIST-EXTENDED), RFC 5819 (LIST-STATUS), RFC 6154
(SPECIAL-USE, CREATE-SPECIAL-USE), RFC 3348 (CHILDREN), RFC 8438 (STATUS=SIZE) and
RFC 2342 (NAMESPACE). Handlers follow :mod:`gateway.imap.handler`: they yield untagged
responses and return the tagged reply; store errors are mapped to response codes by the
session in one place.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import TYPE_CHECKING

from gateway.access.households import UserStore
from gateway.access.quota import KIB, storage_kib
from gateway.core.criteria import Flag
from gateway.core.flags import DELETED, SPECIAL_USES, VIRTUAL_SPECIAL_USES
from gateway.imap import acl, rev2
from gateway.imap.command import Create, List, MailboxCommand, Rename, Status
from gateway.imap.handler import BadCommand, Handler, Pause, Refused, ok
from gateway.imap.listpattern import WILDCARDS, PatternSet
from gateway.store.interfaces import DELIMITER, INBOX, Mailbox, MailboxCounts, MailboxNotFound
from gateway.store.objectid import mailbox_id_text
from gateway.store.rules import check_name_characters

if TYPE_CHECKING:
    from gateway.imap.handler import Session

MAX_PATTERN_STATES = 4096
"""Most automaton states the patterns of one LIST or LSUB may compile to (their normalised
lengths plus one each, :class:`PatternSet`); beyond, ``NO [LIMIT]`` (RFC 5530). Real
clients send one or two short patterns; the bound keeps each name's match cheap."""

PAUSE_STEPS = 20_000
"""Matcher work (:attr:`PatternSet.steps`) after which LIST lets the reactor serve other
connections before going on (a :class:`Pause`): a few tens of milliseconds."""

PAUSE_STATUS_LINES = 200
"""LIST-STATUS lookups (one store query each) between two pauses."""

CREATABLE_SPECIAL_USES = frozenset(SPECIAL_USES) - VIRTUAL_SPECIAL_USES
"""RFC 6154 §2 / RFC 8457 attributes CREATE may set (not the virtual ones)."""

STATUS_CONDSTORE_ITEM = "HIGHESTMODSEQ"


def _user(session: Session) -> str:
    if session.user is None:  # the state table makes this unreachable
        raise BadCommand("not authenticated")
    return session.user


def _refuse_wildcards(name: str) -> None:
    """A name with a LIST wildcard could never be listed alone (RFC 3501 §6.3.8), so no
    client may make one exist: neither as a mailbox nor as a subscription."""
    if any(c in name for c in WILDCARDS):
        raise Refused("Mailbox names may not contain % or *", "CANNOT")


def _new_name(session: Session, raw: bytes) -> str:
    """A name for a mailbox about to exist: a single trailing delimiter is dropped
    (RFC 3501 §6.3.3: it only says "I intend to create children") and wildcards are
    refused; the store applies the rest of the name rules (gateway.store.rules)."""
    name = session.mailbox_name(raw)
    if name.endswith(DELIMITER) and len(name) > 1:
        name = name[:-1]
    _refuse_wildcards(name)
    return name


# ---- CREATE / DELETE / RENAME -----------------------------------------------------------


def create(session: Session, cmd: Create) -> Handler:
    """CREATE, RFC 3501 §6.3.3, with ``USE (\\Sent)`` (RFC 6154 §3). Missing superior
    names are created too. State: authenticated or selected."""
    name = _new_name(session, cmd.mailbox)
    use = None
    if cmd.special_use:
        if len(cmd.special_use) > 1:
            raise Refused("Only one special-use attribute per mailbox", "USEATTR")
        use = cmd.special_use[0]
        if use not in CREATABLE_SPECIAL_USES:
            raise Refused(f"Special-use attribute {use} is not supported", "USEATTR")
    if name == INBOX:
        raise Refused("INBOX always exists", "ALREADYEXISTS")
    created = session.store.create_mailbox(_user(session), name, use)
    yield from ()
    # RFC 8474 §4.1: the new mailbox's id in the tagged OK.
    return ok("CREATE completed", f"MAILBOXID ({mailbox_id_text(created.id)})")


def delete(session: Session, cmd: MailboxCommand) -> Handler:
    """DELETE, RFC 3501 §6.3.4. INBOX cannot be deleted; children stay (the parent then
    shows as \\NonExistent). Deleting the selected mailbox first closes it, with
    ``* OK [CLOSED]`` (RFC 7162 §3.2.11). State: authenticated or selected."""
    name = session.mailbox_name(cmd.mailbox)
    if name == INBOX:
        raise Refused("INBOX cannot be deleted", "CANNOT")
    user = _user(session)
    mailbox = session.store.get_mailbox(user, name)
    view = session.selected
    if view is not None and view.mailbox.id == mailbox.id:
        session.deselect()
        yield b"* OK [CLOSED] Mailbox closed\r\n"
    session.store.delete_mailbox(user, name)
    return ok("DELETE completed")


def rename(session: Session, cmd: Rename) -> Handler:
    """RENAME, RFC 3501 §6.3.5: children move along; renaming INBOX moves its messages
    to the new mailbox and leaves INBOX empty. State: authenticated or selected."""
    old = session.mailbox_name(cmd.old)
    new = _new_name(session, cmd.new)
    if new == INBOX or old == new:
        raise Refused("Target mailbox already exists", "ALREADYEXISTS")
    if new.startswith(old + DELIMITER):
        raise Refused("Cannot rename a mailbox into its own child", "CANNOT")
    session.store.rename_mailbox(_user(session), old, new)
    yield from ()
    return ok("RENAME completed")


# ---- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------


def subscribe(session: Session, cmd: MailboxCommand) -> Handler:
    """SUBSCRIBE, RFC 3501 §6.3.6. Names without a mailbox may be subscribed too (the
    RFC allows it, and subscriptions outlive deletions), but only names a mailbox could
    have: no wildcards, no control or format characters, as for CREATE (Dovecot goes
    further and refuses any name without a mailbox). State: authenticated or selected."""
    name = session.mailbox_name(cmd.mailbox)
    _refuse_wildcards(name)
    check_name_characters(name)
    session.store.set_subscribed(_user(session), name, True)
    yield from ()
    return ok("SUBSCRIBE completed")


def unsubscribe(session: Session, cmd: MailboxCommand) -> Handler:
    """UNSUBSCRIBE, RFC 3501 §6.3.7; unsubscribing a name that is not subscribed is a
    harmless no-op. State: authenticated or selected."""
    session.store.set_subscribed(_user(session), session.mailbox_name(cmd.mailbox), False)
    yield from ()
    return ok("UNSUBSCRIBE completed")


# ---- LIST / LSUB ------------------------------------------------------------------------


def _ancestors(name: str) -> Iterator[str]:
    """``a/b/c`` → ``a``, ``a/b``."""
    index = name.find(DELIMITER)
    while index >= 0:
        yield name[:index]
        index = name.find(DELIMITER, index + 1)


def _full_pattern(reference: str, pattern: str) -> str:
    """RFC 3501 §6.3.8: the pattern is read in the context of the reference; a
    reference not ending with the delimiter is joined to the pattern with one."""
    if not reference:
        return pattern
    if reference.endswith(DELIMITER) or pattern.startswith(DELIMITER):
        return reference + pattern
    return reference + DELIMITER + pattern


def _in_order(names: Iterable[str]) -> list[str]:
    """INBOX first, then by name (what clients show)."""
    return sorted(set(names), key=lambda n: (n != INBOX, n))


def _root_line(verb: bytes) -> bytes:
    """``LIST "" ""``: the hierarchy delimiter and the (empty) root (RFC 3501 §6.3.8)."""
    return b"* " + verb + b' (\\Noselect) "/" ""\r\n'


def _line(session: Session, verb: bytes, attrs: list[str], name: str, extra: bytes = b"") -> bytes:
    return (
        b"* "
        + verb
        + b" ("
        + " ".join(attrs).encode("ascii")
        + b') "/" '
        + session.wire_name(name)
        + extra
        + b"\r\n"
    )


def _check_status_items(session: Session, items: Iterable[str]) -> None:
    """RFC 9051 §6.3.11: RECENT is not a status item for an IMAP4rev2 client."""
    if rev2.active(session) and rev2.REV1_ONLY_STATUS_ITEMS.intersection(items):
        raise BadCommand("STATUS RECENT is not part of IMAP4rev2")


def _deleted(session: Session, mailbox_id: int) -> int:
    """RFC 9051 §6.3.11 STATUS DELETED: the messages with \\Deleted (one store search)."""
    return len(session.store.search(mailbox_id, Flag(DELETED)))


def _status_line(
    session: Session,
    name: str,
    counts: MailboxCounts,
    items: Iterable[str],
    mailbox_id: int,
    deleted: int | None = None,
) -> bytes:
    values: dict[str, object] = {
        "MAILBOXID": f"({mailbox_id_text(mailbox_id)})",  # RFC 8474 §4.2
        "MESSAGES": counts.messages,
        "RECENT": counts.recent,
        "UIDNEXT": counts.uidnext,
        "UIDVALIDITY": counts.uidvalidity,
        "UNSEEN": counts.unseen,
        "HIGHESTMODSEQ": counts.highestmodseq,
        "SIZE": counts.size,
        "DELETED": deleted,
    }
    body = " ".join(f"{item} {values[item]}" for item in items)
    return b"* STATUS " + session.wire_name(name) + b" (" + body.encode("ascii") + b")\r\n"


def _compile(reference: str, patterns: list[str]) -> PatternSet:
    """The command's patterns, each read in the context of the reference (RFC 3501
    §6.3.8), compiled into one linear-time automaton (:mod:`gateway.imap.listpattern`);
    more than :data:`MAX_PATTERN_STATES` states is refused."""
    compiled = PatternSet(
        (_full_pattern(reference, p) for p in patterns if p != ""), delimiter=DELIMITER
    )
    if compiled.states > MAX_PATTERN_STATES:
        raise Refused("LIST patterns too long", "LIMIT")
    return compiled


def _scan(
    patterns: PatternSet, names: Iterable[str]
) -> Generator[Pause, object, dict[str, list[str]]]:
    """Each name → the names among it and its superiors that match, shortest first
    (:meth:`PatternSet.matching_levels`), for names with any. The work is bounded per
    name and the reactor gets a turn every :data:`PAUSE_STEPS` of it, so no LIST holds
    the gateway however many mailboxes a user has (issue 20)."""
    found: dict[str, list[str]] = {}
    pause_at = patterns.steps + PAUSE_STEPS
    for name in names:
        levels = patterns.matching_levels(name)
        if levels:
            found[name] = levels
        if patterns.steps >= pause_at:
            yield Pause()
            pause_at = patterns.steps + PAUSE_STEPS
    return found


def list_(session: Session, cmd: List) -> Handler:
    """LIST (RFC 3501 §6.3.8, RFC 5258, RFC 5819, RFC 6154) and LSUB (§6.3.9).

    Every name matching a pattern is returned once, INBOX first. Superior names that do
    not exist themselves (left behind by DELETE) appear as ``\\Noselect`` (plain LIST)
    or ``\\NonExistent`` (LIST-EXTENDED) with ``\\HasChildren``. \\HasChildren /
    \\HasNoChildren and special-use attributes are always given (RFC 5258 §4, RFC 6154
    §2 allow it). Each name is read once by the pattern automaton, in linear time, with
    pauses for the reactor between chunks. State: authenticated or selected.
    """
    user = _user(session)
    lsub = cmd.name.upper() == "LSUB"
    verb = b"LSUB" if lsub else b"LIST"
    try:
        reference = session.mailbox_name(cmd.reference)
        names = [session.mailbox_name(p) for p in cmd.patterns]
    except Refused:
        # A pattern no mailbox name can have (not modified UTF-7) matches none: OK, empty.
        return ok(f"{verb.decode()} completed")
    if len(names) == 1 and names[0] == "":
        yield _root_line(verb)
        return ok(f"{verb.decode()} completed")
    patterns = _compile(reference, names)

    store = session.store
    if lsub:
        yield from _lsub(session, store.subscriptions(user), store.list_mailboxes(user), patterns)
        return ok("LSUB completed")

    mailboxes = {m.name: m for m in store.list_mailboxes(user)}
    subscribed = set(store.subscriptions(user))
    parents: set[str] = set()
    for name in mailboxes:
        parents.update(_ancestors(name))
    selection = set(cmd.selection)
    want_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in cmd.returns
    status_items = list(cmd.status_items)
    imap4rev2 = rev2.active(session)
    _check_status_items(session, status_items)
    if STATUS_CONDSTORE_ITEM in status_items:
        session.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command

    def attributes(name: str) -> list[str]:
        mailbox = mailboxes.get(name)
        attrs: list[str] = []
        if mailbox is None:
            # RFC 9051 §6.3.9: \\NonExistent (implying \\Noselect) for rev2 clients too
            attrs.append("\\NonExistent" if cmd.extended or imap4rev2 else "\\Noselect")
        if name in parents:
            attrs.append("\\HasChildren")
        elif mailbox is not None:
            attrs.append("\\HasNoChildren")
        if want_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        if mailbox is not None and mailbox.special_use:
            attrs.append(mailbox.special_use)
        return attrs

    # Which names to report, and which get RFC 5258 §3.5 CHILDINFO instead.
    childinfo: set[str] = set()
    if "SUBSCRIBED" in selection:
        found = yield from _scan(patterns, subscribed)
        chosen = {name for name, levels in found.items() if levels[-1] == name}
        if "RECURSIVEMATCH" in selection:
            # RFC 5258 §3.5: a matching name whose subscribed descendant does not match
            # itself carries CHILDINFO, so the client learns where subscriptions hide.
            for name, levels in found.items():
                if levels[-1] != name:
                    childinfo.update(levels)
    else:
        # The superiors that match are exactly the matching names in ``parents``.
        found = yield from _scan(patterns, mailboxes)
        chosen = {level for levels in found.values() for level in levels}
    if "SPECIAL-USE" in selection:
        chosen = {n for n in chosen if n in mailboxes and mailboxes[n].special_use}

    lookups = 0
    for name in _in_order(chosen | childinfo):
        extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if name in childinfo else b""
        yield _line(session, verb, attributes(name), name, extra)
        mailbox = mailboxes.get(name)
        if "MYRIGHTS" in cmd.returns and mailbox is not None:
            yield acl.myrights_line(session, name)  # RFC 8440 §3
        if status_items and mailbox is not None:
            # RFC 5819 §2: STATUS right after the LIST line of each selectable mailbox.
            try:
                counts = store.counts(mailbox.id)
            except MailboxNotFound:
                continue  # deleted by another session during a pause
            deleted = _deleted(session, mailbox.id) if "DELETED" in status_items else None
            yield _status_line(session, name, counts, status_items, mailbox.id, deleted)
            lookups += 1
            if lookups % PAUSE_STATUS_LINES == 0:
                yield Pause()
    return ok("LIST completed")


def _lsub(
    session: Session,
    subscriptions: list[str],
    mailboxes: list[Mailbox],
    patterns: PatternSet,
) -> Generator[bytes | Pause, object, None]:
    """LSUB, RFC 3501 §6.3.9: subscribed names matching the pattern; a subscribed name
    whose mailbox is gone is ``\\Noselect``. A superior name that is not subscribed but
    has subscribed inferiors is returned ``\\Noselect`` when the pattern matches it but
    none of those inferiors (the ``%`` case of the RFC). Linear in the names: each is
    read once by the automaton."""
    existing = {m.name for m in mailboxes}
    subscribed = set(subscriptions)
    found = yield from _scan(patterns, subscribed)
    chosen = {name for name, levels in found.items() if levels[-1] == name}
    # Superiors of a matching subscribed name are never stand-ins.
    covered = {ancestor for name in chosen for ancestor in _ancestors(name)}
    stand_ins = {
        level
        for name, levels in found.items()
        for level in levels
        if level != name and level not in subscribed and level not in covered
    }
    for name in _in_order(chosen | stand_ins):
        attrs = [] if name in chosen and name in existing else ["\\Noselect"]
        yield _line(session, b"LSUB", attrs, name)


# ---- STATUS / NAMESPACE -----------------------------------------------------------------


def status(session: Session, cmd: Status) -> Handler:
    """STATUS, RFC 3501 §6.3.10 (with HIGHESTMODSEQ, RFC 7162 §3.1.8, and SIZE, RFC 8438).
    Figures always come from the store, never from a session's view, so STATUS of the
    selected mailbox is as fresh as any other. State: authenticated or selected."""
    name = session.mailbox_name(cmd.mailbox)
    _check_status_items(session, cmd.items)
    mailbox = session.store.get_mailbox(_user(session), name)
    if STATUS_CONDSTORE_ITEM in cmd.items:
        session.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
    counts = session.store.counts(mailbox.id)
    deleted = _deleted(session, mailbox.id) if "DELETED" in cmd.items else None
    yield _status_line(session, name, counts, cmd.items, mailbox.id, deleted)
    return ok("STATUS completed")


def _quota_line(session: Session, root: str, used: int, limit: int) -> bytes:
    """RFC 9208 §7.1 ``* QUOTA root (STORAGE used limit)``, in units of 1024 octets."""
    body = f"STORAGE {storage_kib(used)} {limit // KIB}".encode("ascii")
    return b"* QUOTA " + session.wire_name(root) + b" (" + body + b")\r\n"


def getquotaroot(session: Session, cmd: MailboxCommand) -> Handler:
    """GETQUOTAROOT, RFC 9208 §4.3: the mailbox's quota roots (its owner's: ``""`` for
    the personal tree, ``Shared/NAME`` for a household's), each with its QUOTA
    response. State: authenticated or selected."""
    name = session.mailbox_name(cmd.mailbox)
    _user(session)
    roots = session.store.quota_roots(name)
    yield (
        b"* QUOTAROOT "
        + session.wire_name(name)
        + b"".join(b" " + session.wire_name(root) for root in roots)
        + b"\r\n"
    )
    for root in roots:
        used, limit = session.store.quota(root)
        yield _quota_line(session, root, used, limit)
    return ok("GETQUOTAROOT completed")


def getquota(session: Session, cmd: MailboxCommand) -> Handler:
    """GETQUOTA, RFC 9208 §4.2: usage and limit of a quota root the user may see; any
    other root is ``NO [NONEXISTENT]``. State: authenticated or selected."""
    root = session.mailbox_name(cmd.mailbox)
    _user(session)
    used, limit = session.store.quota(root)
    yield _quota_line(session, root, used, limit)
    return ok("GETQUOTA completed")


def namespace(session: Session, cmd: object) -> Handler:
    """NAMESPACE, RFC 2342 §5: the personal namespace (prefix "", delimiter "/"), no
    other users' namespace, and the shared namespace ``Shared/`` for a member of a
    household (:mod:`gateway.access.households`). State: authenticated or selected."""
    shared = session.store.shared_namespace() if isinstance(session.store, UserStore) else None
    personal = b'(("" "/"))'
    others = b"NIL"
    shared_ns = b'(("' + shared.encode() + b'" "/"))' if shared else b"NIL"
    body = personal + b" " + others + b" " + shared_ns
    yield b"* NAMESPACE " + body + b"\r\n"
    return ok("NAMESPACE completed")
