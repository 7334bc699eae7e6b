"""Entering and leaving the selected state: SELECT, EXAMINE, CLOSE, UNSELECT.

RFC 3501 §6.3.1-2 and §6.4.2, RFC 3691 (UNSELECT), RFC 7162 §3.1.8 and §3.2.5
(CONDSTORE and QRESYNC parameters of SELECT). The handlers build the session's
:class:`~gateway.imap.view.View` of the mailbox and hand it over through the session's
transitions (``select``, ``deselect``).
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway.core.flags import SETTABLE_FLAGS
from gateway.imap import rev2, wire
from gateway.imap.capabilities import QRESYNC
from gateway.imap.command import Command, Select
from gateway.imap.handler import BadCommand, Handler, Session, ok
from gateway.imap.view import CATCH_UP_CHUNK, View, flag_list
from gateway.store.objectid import mailbox_id_text


def select(session: Session, cmd: Select) -> Handler:
    """SELECT and EXAMINE, RFC 3501 §6.3.1-2, with RFC 7162 §3.1.8 (CONDSTORE) and
    §3.2.5 (QRESYNC). Any previously selected mailbox is closed first, even when this
    one fails (§6.3.1), with ``* OK [CLOSED]`` (RFC 7162 §3.2.11).
    Only a read-write SELECT claims \\Recent (§2.3.2). State: authenticated or selected."""
    readonly = cmd.name.upper() == "EXAMINE"
    if cmd.qresync is not None and QRESYNC not in session.enabled:
        raise BadCommand("QRESYNC parameter requires ENABLE QRESYNC first")
    name = session.mailbox_name(cmd.mailbox)
    if session.selected is not None:
        session.deselect()
        yield b"* OK [CLOSED] Previous mailbox closed\r\n"
    if cmd.condstore:
        session.enable_condstore()
    assert session.user is not None
    store = session.store
    mailbox = store.get_mailbox(session.user, name)
    # Aggregates and the UID column only: no object per message (100,000-message
    # mailboxes, many sessions).
    cache = session.select_cache
    kept = cache.get(mailbox, session.user) if cache is not None else None
    if kept is not None:
        uids, summary = kept  # unchanged since it was last read (gateway/imap/selectcache.py)
    else:
        uids = store.message_uids(mailbox.id)
        summary = store.selection_summary(mailbox.id)
        if cache is not None:
            cache.put(mailbox, session.user, uids, summary)
    recent = summary.recent
    if not readonly and recent:
        # Only what this claim took is this session's \Recent: another session (a
        # store thread, another node) may have claimed some of them meanwhile.
        recent = store.clear_recent(mailbox.id, recent)
    view = View(mailbox, readonly, uids, mailbox.highestmodseq, recent)
    imap4rev2 = rev2.active(session)
    view.show_recent = not imap4rev2
    session.select(view)

    keywords = summary.keywords
    # RFC 3501 §7.2.6 / §7.1: system flags in the RFC's order, then keywords in use;
    # ``\\*`` says new keywords may be created. EXAMINE permits no change at all.
    flags = wire.flag_list([*SETTABLE_FLAGS, *keywords])
    permanent = b"()" if readonly else wire.flag_list([*SETTABLE_FLAGS, *keywords, "\\*"])
    uidnext = max(mailbox.uidnext, (uids[-1] + 1) if uids else 1)
    lines = [
        b"* FLAGS " + flags + b"\r\n",
        b"* OK [PERMANENTFLAGS "
        + permanent
        + b"] "
        # RFC 3501 §6.3.1's own example text for the read-write case.
        + (b"Read-only mailbox\r\n" if readonly else b"Limited\r\n"),
        b"* %d EXISTS\r\n" % len(uids),
    ]
    if not imap4rev2:  # RFC 9051 Appendix E: no RECENT, no [UNSEEN n]
        lines.append(b"* %d RECENT\r\n" % len(view.recent))
    unseen = None if summary.first_unseen_uid is None else view.seq_of(summary.first_unseen_uid)
    if unseen is not None and not imap4rev2:
        lines.append(b"* OK [UNSEEN %d] %s\r\n" % (unseen, wire.CODE_TEXT))
    lines.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mailbox.uidvalidity)
    lines.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % uidnext)
    # RFC 8474 §4.3
    lines.append(
        b"* OK [MAILBOXID (%s)] %s\r\n" % (mailbox_id_text(mailbox.id).encode(), wire.CODE_TEXT)
    )
    lines.append(wire.highestmodseq(view.highestmodseq))
    if imap4rev2:  # RFC 9051 §6.3.2: the mailbox's LIST response
        use = f" {mailbox.special_use}" if mailbox.special_use else ""
        lines.append(
            b"* LIST (" + use.strip().encode() + b') "/" ' + session.wire_name(name) + b"\r\n"
        )
    yield b"".join(lines)
    if cmd.qresync is not None and cmd.qresync.uidvalidity == mailbox.uidvalidity:
        yield from _qresync(session, view, cmd)
    if readonly:
        return ok("EXAMINE completed", "READ-ONLY")
    return ok("SELECT completed", "READ-WRITE")


def _qresync(session: Session, view: View, cmd: Select) -> Iterator[bytes]:
    """RFC 7162 §3.2.5.1: what changed since the client's modseq, right after SELECT's
    own responses: VANISHED (EARLIER) for expunged UIDs (limited to the client's known
    UIDs when given), then FETCH with UID, FLAGS and MODSEQ for changed messages."""
    qresync = cmd.qresync
    assert qresync is not None
    changes = session.store.changes_since(view.mailbox.id, qresync.modseq)
    gone = changes.expunged
    if qresync.known_uids is not None and gone:
        largest = max(gone[-1], view.uids[-1] if view.uids else 0)
        gone = [u for u in gone if qresync.known_uids.contains(u, largest)]
    if gone:
        yield b"* VANISHED (EARLIER) " + wire.sequence_set_text(gone) + b"\r\n"
    lines: list[bytes] = []
    for row in changes.changed:
        seq = view.seq_of(row.uid)
        if seq is None or row.modseq > view.highestmodseq:
            continue  # arrived after the view was taken: the catch-up reports it
        lines.append(
            b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
            % (seq, row.uid, flag_list(view.shown_flags(row.uid, row.flags)), row.modseq)
        )
        if len(lines) >= CATCH_UP_CHUNK:
            yield b"".join(lines)
            lines = []
    if lines:
        yield b"".join(lines)


def close(session: Session, cmd: Command) -> Handler:
    """CLOSE, RFC 3501 §6.4.2: expunge \\Deleted messages silently (no EXPUNGE
    responses) when read-write, then leave the selected state. State: selected."""
    view = session.selected
    assert view is not None
    if not view.readonly:
        session.store.expunge(view.mailbox.id)
    session.deselect()
    yield from ()
    return ok("CLOSE completed")


def unselect(session: Session, cmd: Command) -> Handler:
    """UNSELECT, RFC 3691 §2: like CLOSE without the expunge. State: selected."""
    session.deselect()
    yield from ()
    return ok("UNSELECT completed")
