"""IMAP message commands: FETCH, STORE, COPY/MOVE, EXPUNGE, UID EXPUNGE and APPEND.

RFC 3501 §6.3.11 and §6.4, with RFC 4315 (UIDPLUS), RFC 6851 (MOVE), RFC 7162
(CONDSTORE/QRESYNC) and RFC 3502 (MULTIAPPEND); SEARCH is in :mod:`gateway.imap.searching`.
Each handler is a
generator per :mod:`gateway.imap.handler`: it yields untagged response bytes and returns
the tagged :class:`Reply`. Handlers keep the session's view of the selected mailbox in
step with what they tell the client (``note_flags``, removal of expunged UIDs), so the
session's catch-up after the command never repeats a response.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from gateway.core import criteria as c
from gateway.core.flags import RECENT, SEEN, SENT_USE, canonical_flag, is_system_flag
from gateway.imap import catenate, contexts, fetch_items, wire
from gateway.imap.capabilities import QRESYNC
from gateway.imap.command import Append, Copy, Fetch, Simple, UidExpunge
from gateway.imap.command import Store as StoreCmd
from gateway.imap.fetch_stored import fetch_stored
from gateway.imap.handler import BadCommand, Handler, Refused, Reply, ok
from gateway.imap.spool import BARE_LF, Spooled, crlf_spooled
from gateway.imap.view import expunge_responses
from gateway.message.binary import UnknownCte
from gateway.store.interfaces import MailboxNotFound, MessageFlags, MessageInfo, NewMessage
from gateway.store.objectid import thread_id
from gateway.store.rules import leading_uids

if TYPE_CHECKING:
    from gateway.imap.handler import SelectedView, Session
    from gateway.store.interfaces import Mailbox, Store

INFO_BATCH = 500
"""UIDs per ``store.message_info`` call: bounds the metadata held in memory at once."""

STORED_BATCH_THREADED = 5000
"""UIDs per batch of a FETCH of stored items only (:mod:`gateway.imap.fetch_stored`)
when the store does not run inline (PostgreSQL): each batch is one streamed statement
read to its end in one step on a store thread, so a larger batch spares statements,
hops between threads and the wait for each statement's first rows (10,000 messages: 2
batches instead of 20; against 2,000 a batch, ~10% less CPU in the node and in
PostgreSQL, half the backend's context switches), and the database works on a batch's
rows while they are formatted. What it holds at once is that batch's responses (~4 MB
for 5,000 typical messages, as :data:`BODY_BATCH_BYTES` bounds a body read); an inline
store keeps :data:`INFO_BATCH`, as its reads run on the reactor."""

BODY_BATCH_BYTES = 4 * 1024 * 1024
"""Message bytes FETCH reads from the store per query (at least one whole message):
bounds the bodies held at once while sparing a query per message."""

FLUSH_BYTES = 64 * 1024
"""Untagged responses are gathered up to about this size before being yielded."""

LITERAL_PIECE = 64 * 1024
"""A large literal is yielded in pieces of this size so the server can apply backpressure
(unless the connection takes whole literals, ``session.whole_literals``: it then bounds
what it copies itself, :mod:`gateway.serving.socketwrites`)."""

LITERAL_ALONE = 16 * 1024
"""With ``session.whole_literals``, a literal longer than this is yielded as its own chunk
(sent without a copy) instead of being joined into the flush buffer; joining shorter
ones costs less than the extra chunk."""


# ---- shared helpers --------------------------------------------------------------------


def selected_view(session: Session) -> SelectedView:
    """The selected mailbox's view. The session's state table makes this impossible to
    miss; a BAD (not a crash) if it ever is."""
    view = session.selected
    if view is None:
        raise BadCommand("no mailbox selected")
    return view


def _writable(view: SelectedView) -> None:
    """RFC 3501 §6.3.2: a mailbox opened with EXAMINE permits no change of state."""
    if view.readonly:
        raise Refused("mailbox is read-only", "READ-ONLY")


def clean_flags(flags: Iterable[str]) -> list[str]:
    """Flags a client may set: system flags in canonical case, keywords as given,
    duplicates and ``\\Recent`` dropped (RFC 3501 §2.3.2: only the server sets it).
    An unknown ``\\Name`` is refused (not in PERMANENTFLAGS)."""
    out: list[str] = []
    for flag in flags:
        if flag.startswith("\\"):
            if not is_system_flag(flag):
                raise BadCommand(f"unsupported system flag {flag}")
            flag = canonical_flag(flag)
            if flag == RECENT:
                continue
        if flag not in out:
            out.append(flag)
    return out


def _batches(uids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(uids), INFO_BATCH):
        yield uids[start : start + INFO_BATCH]


def message_infos(session: Session, mailbox_id: int, uids: Sequence[int]) -> Iterable[MessageFlags]:
    """Flags and modseqs of many messages (STORE's untouched ones, SEARCH's MODSEQ), read
    in batches through the flags read: the per-mailbox rows, no join to the message."""
    for batch in _batches(uids):
        yield from session.store.message_flags(mailbox_id, batch)


def thread_ids(store: Store, mailbox_id: int, criteria: c.Criteria) -> dict[int, str]:
    """RFC 8474 §5.2 THREADID of the messages matching ``criteria`` (as rewritten for the
    view), by UID: derived from the THREAD facts, and from the EMAILID of a message that
    names no msg-id at all (:func:`gateway.store.objectid.thread_id`)."""
    facts = store.thread_facts(mailbox_id, criteria)
    bare = [f.uid for f in facts if not f.message_id and not f.references]
    emailids: dict[int, str | None] = {}
    for batch in _batches(bare):
        emailids.update((i.uid, i.emailid) for i in store.message_info(mailbox_id, batch))
    out: dict[int, str] = {}
    for f in facts:
        tid = thread_id(f.message_id, f.references, emailids.get(f.uid))
        if tid is not None:
            out[f.uid] = tid
    return out


def _read_bodies(
    store: Store, mailbox_id: int, infos: Sequence[MessageInfo], start: int
) -> dict[int, bytes]:
    """The bytes of ``infos[start]`` and of the messages after it, as many as fit in
    :data:`BODY_BATCH_BYTES` (always at least one): one store query per batch instead of
    one per message, with the bytes held at once still bounded. A UID missing from the
    result was expunged meanwhile."""
    return store.message_bytes_batch(mailbox_id, leading_uids(infos[start:], BODY_BATCH_BYTES))


def _removed(session: Session, view: SelectedView, removed: Iterable[int]) -> Iterator[bytes]:
    """Messages this session just expunged: REMOVEFROM for its live search contexts while
    their sequence numbers still hold (RFC 5267 §4.3), then the EXPUNGE responses
    (highest sequence number first, RFC 3501 §7.4.1), or VANISHED under QRESYNC."""
    removed = list(removed)
    yield from contexts.leaving(view, removed)
    yield from expunge_responses(view.forget(removed), vanished=QRESYNC in session.enabled)


def _existing_mailbox(session: Session, raw_name: bytes) -> Mailbox:
    """The target of APPEND/COPY/MOVE; a missing one is ``NO [TRYCREATE]`` (RFC 3501
    §6.3.11, §6.4.7) so the client knows that CREATE would help."""
    name = session.mailbox_name(raw_name)
    if session.user is None:
        raise BadCommand("not authenticated")
    try:
        return session.store.get_mailbox(session.user, name)
    except MailboxNotFound:
        raise Refused("mailbox does not exist", "TRYCREATE") from None


# ---- FETCH ----------------------------------------------------------------------------


def fetch(session: Session, cmd: Fetch) -> Handler:
    """FETCH and UID FETCH, RFC 3501 §6.4.5/§6.4.8, with RFC 7162 §3.1.4 CHANGEDSINCE
    and §3.2.6 VANISHED. State: selected.

    Metadata comes from the store in batches of :data:`INFO_BATCH`; message bytes only
    when a body item needs them, up to :data:`BODY_BATCH_BYTES` per read, the first ones
    with the batch's metadata (one store round trip for a one-message FETCH, as mbsync
    sends). A non-PEEK body fetch in a read-write mailbox sets ``\\Seen`` and then
    reports FLAGS once.
    """
    view = selected_view(session)
    store = session.store
    mailbox_id = view.mailbox.id
    changedsince = cmd.changedsince
    if cmd.vanished:
        # RFC 7162 §3.2.6: VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled.
        if not cmd.uid or changedsince is None:
            raise BadCommand("VANISHED requires UID FETCH with CHANGEDSINCE")
        if QRESYNC not in session.enabled:
            raise BadCommand("VANISHED requires ENABLE QRESYNC")
    if changedsince is not None or fetch_items.asks_modseq(cmd.items):
        session.enable_condstore()
    condstore = session.condstore_active()
    plan = fetch_items.compiled_plan(cmd.items, cmd.uid, condstore or changedsince is not None)
    uids = view.resolve(cmd.sequence_set, cmd.uid)

    if cmd.vanished:
        assert changedsince is not None
        expunged = store.changes_since(mailbox_id, changedsince).expunged
        if expunged:
            # `*` is the largest UID known, expunged ones included, so that `1:*`
            # reports every removal even when the last messages went.
            largest = max(view.uids[-1] if view.uids else 0, expunged[-1])
            gone = [u for u in expunged if cmd.sequence_set.contains(u, largest)]
            if gone:
                yield b"* VANISHED (EARLIER) " + wire.sequence_set_text(gone) + b"\r\n"

    if plan.summary_picks is not None:  # stored items only, or a list view (issue 19)
        inline = getattr(store, "runs_inline", True)
        batch = INFO_BATCH if inline else STORED_BATCH_THREADED
        missing = yield from fetch_stored(store, view, plan, uids, changedsince, batch)
        return _fetched(missing, cmd.uid)
    # A literal longer than a piece is yielded in pieces (each a copy), unless the
    # connection sends chunks without copying them (session.whole_literals), where even
    # a middling one goes out as its own chunk rather than joined with its neighbours.
    whole = session.whole_literals
    alone = LITERAL_ALONE if whole else LITERAL_PIECE
    set_seen = plan.sets_seen and not view.readonly
    wants_thread = plan.has_threadid
    seq_of = view.seq_of
    out: list[bytes] = []
    size = 0
    missing = False
    next_slot = 0  # index in view.uids just after the last message rendered
    for batch in _batches(uids):
        bodies: dict[int, bytes] = {}
        if plan.needs_bytes:  # the first bodies come with the rows (one store round trip)
            infos, bodies = store.message_info_with_bytes(mailbox_id, batch, BODY_BATCH_BYTES)
        else:
            infos = store.message_info(mailbox_id, batch)
        if len(infos) != len(batch):
            missing = True
        if changedsince is not None:
            infos = [i for i in infos if i.modseq > changedsince]
        updated: dict[int, tuple[frozenset[str], int]] = {}
        if set_seen:
            unseen = [i.uid for i in infos if SEEN not in i.flags]
            if unseen:
                result = store.store_flags(mailbox_id, unseen, "+", [SEEN])
                updated = {row.uid: (row.flags, row.modseq) for row in result.updated}
        threads: dict[int, str] = {}
        if wants_thread and infos:
            ranges = tuple(c.SeqRange(i.uid, i.uid) for i in infos)
            threads = thread_ids(store, mailbox_id, c.Uid(c.SequenceSet(ranges)))
        for index, info in enumerate(infos):
            uid = info.uid
            # Ascending UIDs usually sit next to each other in the view: check the slot
            # after the last one before searching (one bisect per message was ~10%).
            view_uids = view.uids
            if next_slot < len(view_uids) and view_uids[next_slot] == uid:
                next_slot += 1
                seq: int | None = next_slot
            else:
                seq = seq_of(uid)
                if seq is None:  # pragma: no cover - resolve only returns UIDs of the view
                    continue
                next_slot = seq
            extra: tuple[int, ...] = ()
            if uid in updated:
                stored, modseq = updated[uid]
                flags: frozenset[str] | None = view.shown_flags(uid, stored)
                implied = []
                if not plan.has_flags:
                    implied.append(fetch_items.FLAGS)
                if condstore and not plan.has_uid:
                    # RFC 7162 §3.1: a FETCH caused by an implicit \Seen carries UID
                    # (and MODSEQ, which the plan has) once CONDSTORE is enabled.
                    implied.append(fetch_items.UID)
                extra = tuple(implied)
            else:
                modseq = info.modseq
                if not plan.has_flags:
                    flags = None
                elif view.recent or RECENT in info.flags:
                    flags = view.shown_flags(uid, info.flags)
                else:
                    flags = info.flags  # nothing \Recent to add or hide: shown as stored
            raw = None
            if plan.needs_bytes:
                if uid not in bodies:
                    bodies = _read_bodies(store, mailbox_id, infos, index)
                raw = bodies.pop(uid, None)
                if raw is None:
                    missing = True  # expunged by another session since message_info
                    continue
            try:
                chunks = fetch_items.render(
                    plan, seq, info, flags, modseq, raw, extra, threadid=threads.get(uid)
                )
            except UnknownCte:
                # RFC 3516 §4.3: the part's encoding cannot be undone here.
                raise Refused("unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
            if flags is not None and modseq > view.highestmodseq:
                view.note_flags(uid, flags, modseq)  # it keeps nothing at or below that
            for chunk in chunks:
                if len(chunk) > alone:
                    if out:
                        yield b"".join(out)
                        out = []
                        size = 0
                    if whole:
                        yield chunk
                        continue
                    for start in range(0, len(chunk), LITERAL_PIECE):
                        yield chunk[start : start + LITERAL_PIECE]
                else:
                    out.append(chunk)
                    size += len(chunk)
            if size >= FLUSH_BYTES:
                yield b"".join(out)
                out = []
                size = 0
    if out:
        yield b"".join(out)
    return _fetched(missing, cmd.uid)


def _fetched(missing: bool, uid_mode: bool) -> Reply:
    """FETCH's tagged reply once the data that exists was sent."""
    if missing and not uid_mode:
        # RFC 3501 §7.4.1 leaves this to the server. The data that exists was sent, so
        # OK with RFC 5530's code (as Dovecot does) rather than a NO that would make
        # clients discard it.
        return ok("some of the requested messages no longer exist", "EXPUNGEISSUED")
    return ok("FETCH completed")


# ---- STORE ----------------------------------------------------------------------------


def store(session: Session, cmd: StoreCmd) -> Handler:
    """STORE and UID STORE, RFC 3501 §6.4.6, with RFC 7162 §3.1.3 UNCHANGEDSINCE.
    State: selected, read-write.

    Unless ``.SILENT``, every message of the set gets ``* n FETCH (FLAGS (...))`` with
    its flags as they now are (UID for UID STORE; UID and MODSEQ under CONDSTORE). With
    ``.SILENT`` only what the client cannot infer is reported: MODSEQ of the messages
    changed (RFC 7162 §3.1.3 example), or full FLAGS where another session changed
    flags meanwhile. Messages refused by UNCHANGEDSINCE go in ``OK [MODIFIED set]``.
    """
    view = selected_view(session)
    _writable(view)
    if cmd.mode not in ("", "+", "-"):
        raise BadCommand("bad STORE mode")
    flags = clean_flags(cmd.flags)
    uids = view.resolve(cmd.sequence_set, cmd.uid)
    mailbox_id = view.mailbox.id
    store_ = session.store
    if cmd.unchangedsince is not None:
        session.enable_condstore()
    condstore = session.condstore_active()
    with_modseq = condstore or cmd.unchangedsince is not None
    with_uid = cmd.uid or condstore
    surprises: set[int] = set()
    if cmd.silent and uids:
        # .SILENT leaves the client to predict the result from what it knows; where
        # another session changed a message since the client was last told, it cannot,
        # so those messages get their FLAGS in full (RFC 3501 §6.4.6).
        wanted = set(uids)
        surprises = {
            row.uid
            for row in store_.changes_since(mailbox_id, view.highestmodseq).changed
            if row.uid in wanted and not view.knows(row.uid, row.modseq)
        }
    unchanged = None
    if uids:
        result = store_.store_flags(mailbox_id, uids, cmd.mode, flags, cmd.unchangedsince)
        updated = {row.uid: row for row in result.updated}
        modified = set(result.modified)
        unchanged = result.unchanged
    else:
        updated, modified = {}, set()

    def line(seq: int, uid: int, shown: frozenset[str] | None, modseq: int) -> bytes:
        items = []
        if shown is not None:
            items.append(fetch_items.flags_item(shown))
        if with_uid:
            items.append(b"UID %d" % uid)
        if with_modseq:
            items.append(b"MODSEQ (%d)" % modseq)
        return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))

    out: list[bytes] = []
    if cmd.silent:
        for uid in uids:
            row = updated.get(uid)
            seq = view.seq_of(uid)
            if row is None or seq is None:
                continue
            shown = view.shown_flags(uid, row.flags)
            if uid not in surprises:
                if with_modseq:
                    out.append(line(seq, uid, None, row.modseq))
            else:
                out.append(line(seq, uid, shown, row.modseq))
            view.note_flags(uid, shown, row.modseq)
            if len(out) >= INFO_BATCH:
                yield b"".join(out)
                out = []
    else:
        # Messages the store did not touch still get their current flags; their rows
        # come from the store in batches, since another session may have changed them.
        untouched = [u for u in uids if u not in updated and u not in modified]
        current: dict[int, tuple[frozenset[str], int]] = {}
        pending = iter(
            unchanged if unchanged is not None else message_infos(session, mailbox_id, untouched)
        )
        for uid in uids:
            if uid in modified:
                continue
            row = updated.get(uid)
            if row is not None:
                stored, modseq = row.flags, row.modseq
            else:
                if uid not in current:
                    for info in pending:
                        current[info.uid] = (info.flags, info.modseq)
                        if info.uid >= uid:
                            break
                got = current.pop(uid, None)
                if got is None:
                    continue  # expunged meanwhile
                stored, modseq = got
            seq = view.seq_of(uid)
            if seq is None:  # pragma: no cover - resolve only returns UIDs of the view
                continue
            shown = view.shown_flags(uid, stored)
            out.append(line(seq, uid, shown, modseq))
            view.note_flags(uid, shown, modseq)
            if len(out) >= INFO_BATCH:
                yield b"".join(out)
                out = []
    if out:
        yield b"".join(out)
    if modified:
        numbers = sorted(modified) if cmd.uid else sorted(_seqs(view, modified))
        return ok(
            "Conditional STORE failed", "MODIFIED " + wire.sequence_set_text(numbers).decode()
        )
    return ok("STORE completed")


def _seqs(view: SelectedView, uids: Iterable[int]) -> list[int]:
    return [s for s in (view.seq_of(u) for u in uids) if s is not None]


# ---- COPY / MOVE ----------------------------------------------------------------------


def copy(session: Session, cmd: Copy) -> Handler:
    """COPY/UID COPY (RFC 3501 §6.4.7, RFC 4315 COPYUID) and MOVE/UID MOVE (RFC 6851).

    MOVE sends ``* OK [COPYUID ...]`` first, then the expunges of the moved messages
    (``* n EXPUNGE`` or ``* VANISHED`` under QRESYNC), then the tagged OK (RFC 6851 §3.3).
    """
    view = selected_view(session)
    move = cmd.name.upper() == "MOVE"
    if move:
        _writable(view)  # RFC 6851 §3.3: MOVE needs the right to expunge
    target = _existing_mailbox(session, cmd.mailbox)
    uids = view.resolve(cmd.sequence_set, cmd.uid)
    verb = "MOVE" if move else "COPY"
    if not uids:
        return ok(f"{verb} completed, no messages")
    pairs = sorted(session.store.copy(view.mailbox.id, uids, target.id, move=move))
    if not pairs:
        return ok(f"{verb} completed, no messages")
    code = b"COPYUID %d %s %s" % (
        target.uidvalidity,
        wire.sequence_set_text([src for src, _dst in pairs]),
        wire.sequence_set_text([dst for _src, dst in pairs]),
    )
    if not move:
        return ok("COPY completed", code.decode())
    yield b"* OK [" + code + b"] moved\r\n"
    yield from _removed(session, view, [src for src, _dst in pairs])
    return ok("MOVE completed")


# ---- EXPUNGE --------------------------------------------------------------------------


def expunge(session: Session, cmd: Simple) -> Handler:
    """EXPUNGE, RFC 3501 §6.4.3; ``* VANISHED`` instead under QRESYNC (RFC 7162 §3.2.10).
    State: selected, read-write."""
    view = selected_view(session)
    _writable(view)
    removed = session.store.expunge(view.mailbox.id)
    yield from _removed(session, view, removed)
    return ok("EXPUNGE completed")


def uid_expunge(session: Session, cmd: UidExpunge) -> Handler:
    """UID EXPUNGE, RFC 4315 §2.1: only ``\\Deleted`` messages among the given UIDs."""
    view = selected_view(session)
    _writable(view)
    uids = view.resolve(cmd.sequence_set, True)
    if not uids:
        return ok("EXPUNGE completed")
    removed = session.store.expunge(view.mailbox.id, uids)
    yield from _removed(session, view, removed)
    return ok("EXPUNGE completed")


# ---- APPEND ---------------------------------------------------------------------------


def crlf_lines(data: bytes) -> bytes:
    """``data`` with every bare LF turned into CRLF (existing CRLFs kept as they are).

    RFC 3501 §6.3.11 (the APPEND literal is an RFC 5322 message) and RFC 5322 §2.1: a
    message's lines end in CRLF, and every size and offset popgate reports (RFC822.SIZE,
    BODY[]<partial>, BODYSTRUCTURE octets and lines) counts CRLF. Scripts and some clients
    (imaplib users, mail filters) APPEND Unix text with bare LFs; served as sent, other
    clients would split its lines wrongly. Like Dovecot, popgate serves such mail with
    CRLF; it converts once, at APPEND time.
    """
    if b"\n" not in data or data.count(b"\n") == data.count(b"\r\n"):
        return data
    return BARE_LF.sub(b"\r\n", data)


SENT_HEADER_LIMIT = 64 * 1024
"""Octets of an APPEND to ``\\Sent`` read for the Sent-copy comparison (its header section)."""


def _header_section(raw: bytes | mmap.mmap) -> bytes:
    """The header section of a message (RFC 5322 §2.1), which is all the Sent-copy
    comparison reads; a spooled message is not read whole."""
    end = raw.find(b"\r\n\r\n", 0, SENT_HEADER_LIMIT)
    return bytes(raw[: end + 4 if end >= 0 else SENT_HEADER_LIMIT])


def append(session: Session, cmd: Append) -> Handler:
    """APPEND, RFC 3501 §6.3.11, MULTIAPPEND (RFC 3502), APPENDUID (RFC 4315 §3),
    CATENATE (RFC 4469, :mod:`gateway.imap.catenate`) and RFC 6855 §4 ``UTF8 (~{n})`` data.

    A missing mailbox is ``NO [TRYCREATE]``. MULTIAPPEND is all-or-nothing (RFC 3502
    §6.3.11): the messages go to the store in one transaction (``append_many``), so a
    refused one leaves no trace of the others, not even a modseq or UID. Bare LF line
    endings are stored as CRLF (:func:`crlf_lines`). New messages in the selected
    mailbox are announced by the session's catch-up (EXISTS), not here. A large
    message arrives spooled (:mod:`gateway.imap.spool`) and goes to the store as a map of
    its file; the server deletes the file when the command ends.

    One message APPENDed to the ``\\Sent`` mailbox goes through the session's
    ``sent_append`` hook: a copy the submission relay filed already is kept instead
    (OK with its APPENDUID), so a client saving its own Sent copy makes no second one.
    """
    target = _existing_mailbox(session, cmd.mailbox)
    if not cmd.messages:
        raise BadCommand("no message to append")
    prepared = []
    for message in cmd.messages:
        if message.catenate is not None:
            # RFC 4469 §5: the parts are resolved before anything is stored.
            raw = crlf_lines(catenate.assemble(session, message.catenate))
            if not raw:
                raise BadCommand("empty message")
            prepared.append(NewMessage(raw, tuple(clean_flags(message.flags)), message.date))
            continue
        if not message.data:
            raise BadCommand("empty message")
        if isinstance(message.data, Spooled):
            raw: bytes | mmap.mmap = crlf_spooled(message.data).buffer
        else:
            raw = crlf_lines(message.data)
        prepared.append(NewMessage(raw, tuple(clean_flags(message.flags)), message.date))
    hook = session.sent_append if target.special_use == SENT_USE and len(prepared) == 1 else None
    one = _header_section(prepared[0].raw) if hook is not None else b""
    user = session.user or ""
    if hook is not None:
        kept = hook.kept_copy(user, target.id, one)
        if kept is not None:  # the server filed this message already: one copy (issue 15)
            yield from ()
            return ok("APPEND completed", f"APPENDUID {target.uidvalidity} {kept}")
    view = session.selected
    # Appending to the mailbox this session has selected read-write: its catch-up at
    # the end of this command is the first to tell of the new messages, so it takes
    # their \Recent (RFC 3501 §2.3.2) in the APPEND's own transaction instead of with
    # a second write from the catch-up (issue 19, session 7).
    claim = view is not None and not view.readonly and view.mailbox.id == target.id
    done = session.store.append_many(target.id, prepared, claim_recent=claim)
    if claim:
        view.claimed.update(done)
    if hook is not None:
        hook.filed(user, target.id, one, done[0])
    yield from ()  # a handler is a generator even when it has no untagged data
    code = f"APPENDUID {target.uidvalidity} {wire.sequence_set_text(sorted(done)).decode()}"
    return ok("APPEND completed", code)
