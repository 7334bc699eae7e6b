"""Catch-up: telling a session's client what changed in its selected mailbox since it was
last told (RFC 3501 §7, RFC 7162 §3.2.10), after every command and as IDLE pushes.

:func:`catch_up` is the one place that turns a store's ``changes_since`` answer into a
view's untagged responses; :meth:`gateway.imap.session.IMAPSession.catch_up` runs it.

:func:`idle_push` is its short path for IDLE (issue 19): one APPEND to a household's
INBOX wakes its 500 idling phones in one reactor turn, and stepping each one's command
driver and generator chain (``_run`` → ``execute`` → ``idle`` → ``notifications`` →
``catch_up``) was most of the fan-out's Python work. When a push needs nothing but this
session's catch-up lines (no NOTIFY, no live search contexts, no \\Recent to claim, a
bounded change list), the transport glue writes them straight from here and the IDLE
command's generator stays where it is, waiting. The bytes are exactly those the IDLE
handler would have yielded (RFC 2177: the same untagged responses, by the same code),
and every session's own view (its sequence numbers, its \\Recent, CONDSTORE/QRESYNC
items) is kept as before. Sessions woken in one fan-out share one ``changes_since``
read per (mailbox, modseq, viewer) (:meth:`gateway.imap.selectcache.SelectCache.fanout`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from functools import lru_cache

from gateway.core.flags import RECENT
from gateway.imap import contexts
from gateway.imap.capabilities import QRESYNC
from gateway.imap.handler import Session
from gateway.imap.searching import context_updates
from gateway.imap.selectcache import SelectCache
from gateway.imap.view import CATCH_UP_CHUNK, View, expunge_responses, flag_list
from gateway.store.interfaces import Changes, MessageRow, StoreError

PUSH_MAX_CHANGES = CATCH_UP_CHUNK
"""An IDLE push about more rows than this (new, re-flagged and expunged messages) takes
the IDLE generator's path, which streams the lines with backpressure; the short path
builds its output in one piece."""


@lru_cache(maxsize=512)
def _shown_flags_item(flags: frozenset[str]) -> bytes:
    """``FLAGS (...)`` for a flag set: formatted once per distinct set, not once per
    session and line (a flag change pushed to 500 sessions is 500 identical sets)."""
    return b"FLAGS " + flag_list(flags)


def changes_for(session: Session, view: View, cache: SelectCache | None) -> Changes:
    """``changes_since`` the view's HIGHESTMODSEQ, shared with the other sessions woken
    in the same fan-out that see the mailbox as the same viewer from the same point."""
    shared = cache.shared_changes if cache is not None else None
    if shared is None:
        return session.store.changes_since(view.mailbox.id, view.highestmodseq)
    key = (view.mailbox.id, view.highestmodseq, session.user or "")
    changes = shared.get(key)
    if changes is None:
        changes = session.store.changes_since(view.mailbox.id, view.highestmodseq)
        shared[key] = changes  # the sessions woken next read it from here
    return changes


def nothing_to_tell(view: View, changes: Changes, allow_expunge: bool) -> bool:
    """True, with the view marked caught up, when :func:`catch_up` of ``changes`` would
    yield nothing and change nothing else: no changed or expunged rows and no removal
    waiting to be told now. The common case after a command (issue 19)."""
    if changes.changed or changes.expunged or (allow_expunge and view.pending_expunge):
        return False
    view.caught_up(changes.highestmodseq)
    return True


def catch_up(
    session: Session,
    view: View,
    cache: SelectCache | None,
    *,
    allow_expunge: bool,
    uid_form: bool = False,
    changes: Changes | None = None,
) -> Iterator[bytes]:
    """Tell the client what changed in the selected mailbox since it was last told.

    RFC 3501 §7.3.1/§7.4.1: EXPUNGE first (sequence numbers valid as each line is
    read), then EXISTS/RECENT for new messages, then FETCH FLAGS for flag changes
    the client has not seen (changes this session told itself were recorded by
    ``note_flags`` and are skipped). Under QRESYNC, ``* VANISHED`` replaces EXPUNGE
    (RFC 7162 §3.2.10); UID and MODSEQ go into the FETCH once CONDSTORE is on (§3.1).
    When ``allow_expunge`` is false the removals wait for a later command. ``changes``:
    already read (by :func:`idle_push`) for this view's HIGHESTMODSEQ.
    """
    if changes is None:
        changes = changes_for(session, view, cache)
    seq_of = view.seq_of
    for uid in changes.expunged:
        if seq_of(uid) is not None:
            view.pending_expunge.add(uid)
    last = view.uids[-1] if view.uids else 0
    new_rows = [row for row in changes.changed if row.uid > last]
    # \Recent goes to the first session told of a message (RFC 3501 §2.3.2): claim
    # it before anything is yielded, since another session may run while this one
    # waits for its client to read.
    claim = [row.uid for row in new_rows if RECENT in row.flags and not view.readonly]
    claimed: Collection[int] = ()
    if claim:
        claimed = set(session.store.clear_recent(view.mailbox.id, claim))
        if cache is not None:
            cache.recent_claimed(view.mailbox.id, claim)
    if allow_expunge and view.pending_expunge:
        yield from _report_expunges(session, view)
    if new_rows:
        yield _told_new(view, new_rows, claimed)
    yield from _flag_changes(session, view, changes.changed, last, uid_form)
    view.caught_up(changes.highestmodseq)
    if view.contexts and (changes.changed or changes.expunged):
        # RFC 5267 §4.3: live SEARCH/SORT results follow, once the client knows the
        # messages they name.
        yield from context_updates(session, view)


def _flag_changes(
    session: Session, view: View, changed: list[MessageRow], last: int, uid_form: bool
) -> Iterator[bytes]:
    """``* n FETCH (FLAGS ...)`` for the rows of messages the client knows (UID up to
    ``last``) whose change it has not been told, :data:`CATCH_UP_CHUNK` lines a piece.
    UID and MODSEQ join FLAGS once CONDSTORE is on (RFC 7162 §3.1)."""
    condstore = session.condstore_active()
    with_uid = uid_form or condstore
    reported = view.reported
    pending = view.pending_expunge
    seq_of = view.seq_of
    lines: list[bytes] = []
    for row in changed:
        uid = row.uid
        if uid > last:
            break
        if uid in pending:
            continue
        if reported.get(uid, 0) >= row.modseq:
            continue  # this session already told its client (note_flags)
        seq = seq_of(uid)
        if seq is None:
            continue
        items = [_shown_flags_item(view.shown_flags(uid, row.flags))]
        if with_uid:
            items.append(b"UID %d" % uid)
        if condstore:
            items.append(b"MODSEQ (%d)" % row.modseq)
        lines.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items)))
        if len(lines) >= CATCH_UP_CHUNK:
            yield b"".join(lines)
            lines = []
    if lines:
        yield b"".join(lines)


def _told_new(view: View, rows: list[MessageRow], claimed: Collection[int] = ()) -> bytes:
    """New messages join the view: ``* n EXISTS`` and ``* n RECENT`` (RFC 3501 §7.3.1,
    §7.3.2; no RECENT under IMAP4rev2, RFC 9051), one write for both (an IDLE push to
    500 phones is 500 writes). A \\Recent message shows as recent in a read-only view
    (which claims nothing) and in a read-write one only if this session's claim took it
    (``claimed``): RFC 3501 §2.3.2 gives it to one session."""
    readonly = view.readonly
    for row in rows:
        view.add(row.uid, RECENT in row.flags and (readonly or row.uid in claimed))
    exists = b"* %d EXISTS\r\n" % len(view.uids)
    if view.show_recent:
        exists += b"* %d RECENT\r\n" % len(view.recent)
    return exists


def _report_expunges(session: Session, view: View) -> Iterator[bytes]:
    gone = sorted(view.pending_expunge)
    view.pending_expunge.clear()
    yield from contexts.leaving(view, gone)  # RFC 5267 §4.3, while numbers still hold
    yield from expunge_responses(view.forget(gone), vanished=QRESYNC in session.enabled)


def idle_push(session: Session, view: View | None, cache: SelectCache | None) -> bytes | None:
    """What an idling session without NOTIFY tells its client about a change to its
    selected mailbox (RFC 2177), or None when the push must take the IDLE generator's
    path: NOTIFY on (RFC 5465 decides what is told), live search contexts (RFC 5267
    updates run searches), a \\Recent message to claim (a store write, which with group
    commit holds the output until it is on disk), more than :data:`PUSH_MAX_CHANGES`
    rows, or a failed read (the generator's path says BYE for a deleted mailbox).
    Never writes to the store."""
    if view is None or session.notifier is not None or view.contexts:
        return None
    try:
        changes = changes_for(session, view, cache)
    except StoreError:
        return None
    changed = changes.changed
    if len(changed) + len(changes.expunged) > PUSH_MAX_CHANGES:
        return None
    last = view.uids[-1] if view.uids else 0
    if not view.readonly:
        for row in reversed(changed):  # ascending UIDs: the new ones are at the end
            if row.uid <= last:
                break
            if RECENT in row.flags:
                return None
    if not changes.expunged and not view.pending_expunge:
        # What catch_up would yield, without its generators: only new messages (a
        # delivery), or only flag changes of messages the client knows (a STORE by
        # another session), the two usual pushes.
        if changed and changed[0].uid > last:
            out = _told_new(view, changed)
            view.caught_up(changes.highestmodseq)
            return out
        if not changed or changed[-1].uid <= last:
            out = b"".join(_flag_changes(session, view, changed, last, False))
            view.caught_up(changes.highestmodseq)
            return out
    return b"".join(catch_up(session, view, cache, allow_expunge=True, changes=changes))
