"""The IMAP session core: connection states, the command table, the selected-mailbox view,
catch-up of concurrent changes, and the one mapping from errors to tagged responses.

Sans-I/O (STYLE.md habit 1): :meth:`IMAPSession.execute` turns one parsed command into a
generator of output. It yields ``bytes`` to write and, where the session needs the outside
world, an *action* (:class:`RunBlocking`, :class:`ReadLine`, :class:`WaitIdle`,
:class:`StartTLS`, :class:`Close`) that the transport glue in :mod:`gateway.imap.server`
performs before resuming the generator with the outcome. So this module can be read and
tested without a reactor, and it is the only module that changes the session state
(RFC 3501 §3, STYLE.md habit 3).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import enum
import importlib
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from gateway.access.households import Households, UserStore
from gateway.access.quota import Quotas
from gateway.core.criteria import SequenceSet
from gateway.imap import mutf7, wire
from gateway.imap.capabilities import (
    UTF8_ACCEPT,
    Situation,
    capability_text,
    login_permitted,
)
from gateway.imap.command import (
    Authenticate,
    Command,
    Enable,
    Id,
    Login,
    ParseError,
    Select,
    Status,
    UidExpunge,
)
from gateway.imap.handler import BadCommand, Refused, Reply, ok
from gateway.security.auth import Authenticator
from gateway.store.interfaces import (
    DELIMITER,
    INBOX,
    Mailbox,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageTooLarge,
    OverQuota,
    SearchTooComplex,
    Store,
    StoreError,
)

log = structlog.get_logger(__name__)

SERVER_NAME = "popgate"

MAX_LOGGED_NAME = 128
"""A user name (chosen by the client) is cut to this many characters in log events."""

MAX_RESPONSE_TEXT = 200
"""Human-readable response text longer than this is shortened (it may echo client input)."""

FORGET_IN_PLACE = 64
"""Up to this many expunged UIDs are deleted from a view's UID array one by one; more
rebuild the array in one pass (each deletion moves the rest of the array)."""

CATCH_UP_CHUNK = 500
"""Untagged catch-up responses are yielded in groups of this many lines, so a flood of
changes (10,000 new flags) streams with backpressure instead of building one string."""

SYSTEM_FLAGS: tuple[str, ...] = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
"""The flags a client may set (RFC 3501 §2.3.2), as announced by FLAGS and PERMANENTFLAGS."""

RECENT = "\\Recent"
SEEN = "\\Seen"

CONDSTORE = "CONDSTORE"
QRESYNC = "QRESYNC"


class State(enum.Enum):
    """RFC 3501 §3. The session moves only through the methods of :class:`IMAPSession`."""

    NOT_AUTHENTICATED = "not authenticated"  # after the greeting, until LOGIN/AUTHENTICATE
    AUTHENTICATED = "authenticated"  # logged in, no mailbox selected
    SELECTED = "selected"  # a mailbox is selected (``session.selected`` is its view)
    LOGOUT = "logout"  # BYE sent; the connection is being closed


# ---- actions: what the session asks the transport glue to do ---------------------------


@dataclass(frozen=True)
class RunBlocking:
    """Run ``call`` off the reactor thread (password hashing); the generator is resumed
    with its result, or the exception is thrown into it."""

    call: Callable[[], Any]
    login: str | None = None
    """Set (to the user name given) when ``call`` checks a password: the glue then
    applies the login penalty, failure budgets and connection limit around it."""


@dataclass(frozen=True)
class ReadLine:
    """Write ``prompt`` (a continuation request) and resume with the client's next line,
    read raw (RFC 3501 §6.2.2 AUTHENTICATE responses)."""

    prompt: bytes


class IdleEvent(enum.Enum):
    """What may end a :class:`WaitIdle` besides a line from the client."""

    CHANGED = "changed"  # the selected mailbox changed (RFC 2177: tell the client now)
    KEEPALIVE = "keepalive"  # time for ``* OK Still here``


@dataclass(frozen=True)
class WaitIdle:
    """IDLE waits: resume with the client's next raw line (``bytes``) or an IdleEvent."""


@dataclass(frozen=True)
class StartTLS:
    """Discard buffered plaintext input and start TLS (RFC 3501 §6.2.1)."""


@dataclass(frozen=True)
class Close:
    """Close the connection once everything written so far has been sent."""


Action = RunBlocking | ReadLine | WaitIdle | StartTLS | Close
Output = bytes | Action
Run = Generator[Output, Any, None]
SessionHandler = Generator[Output, Any, Reply]


# ---- the command table ------------------------------------------------------------------

_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED})
_AUTHED = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})
_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})


@dataclass(frozen=True)
class CommandSpec:
    """One row of :data:`COMMANDS`.

    ``states``: where the command is legal (RFC 3501 §6). ``module``/``function``: the
    handler, resolved on first use so that the handler modules stay independent of this
    one. ``defers_expunge``: in its non-UID form, untagged EXPUNGE must not be sent while
    it runs (RFC 3501 §7.4.1: FETCH, STORE, SEARCH).
    """

    states: frozenset[State]
    module: str
    function: str
    defers_expunge: bool = False


def _spec(states: frozenset[State], where: str, defers_expunge: bool = False) -> CommandSpec:
    module, function = where.split(":")
    return CommandSpec(states, module, function, defers_expunge)


# A client looking at a mailbox with these is a good moment to fetch new upstream mail
# for it (fetch on demand): the activity hook is called with (user, mailbox name).
ActivityHook = Callable[[str, str], None]
ACTIVITY_COMMANDS = frozenset({"SELECT", "EXAMINE", "IDLE", "NOOP", "CHECK", "STATUS"})

COMMANDS: dict[str, CommandSpec] = {
    # any state (RFC 3501 §6.1, RFC 2971)
    "CAPABILITY": _spec(_ANY, "session:_capability"),
    "NOOP": _spec(_ANY, "session:_noop"),
    "LOGOUT": _spec(_ANY, "session:_logout"),
    "ID": _spec(_ANY, "session:_id"),
    # not authenticated (§6.2)
    "STARTTLS": _spec(_NOT_AUTH, "session:_starttls"),
    "LOGIN": _spec(_NOT_AUTH, "session:_login"),
    "AUTHENTICATE": _spec(_NOT_AUTH, "session:_authenticate"),
    # authenticated, before any SELECT (RFC 5161 §3.1)
    "ENABLE": _spec(_AUTH, "session:_enable"),
    # authenticated or selected (§6.3, RFC 2177, RFC 2342)
    "SELECT": _spec(_AUTHED, "session:_select"),
    "EXAMINE": _spec(_AUTHED, "session:_select"),
    "IDLE": _spec(_AUTHED, "session:_idle"),
    "CREATE": _spec(_AUTHED, "mailboxes:create"),
    "DELETE": _spec(_AUTHED, "mailboxes:delete"),
    "RENAME": _spec(_AUTHED, "mailboxes:rename"),
    "SUBSCRIBE": _spec(_AUTHED, "mailboxes:subscribe"),
    "UNSUBSCRIBE": _spec(_AUTHED, "mailboxes:unsubscribe"),
    "LIST": _spec(_AUTHED, "mailboxes:list_"),
    "LSUB": _spec(_AUTHED, "mailboxes:list_"),
    "STATUS": _spec(_AUTHED, "mailboxes:status"),
    "NAMESPACE": _spec(_AUTHED, "mailboxes:namespace"),
    "GETQUOTAROOT": _spec(_AUTHED, "mailboxes:getquotaroot"),
    "GETQUOTA": _spec(_AUTHED, "mailboxes:getquota"),
    "APPEND": _spec(_AUTHED, "messages:append"),
    # selected (§6.4, RFC 3691, RFC 4315, RFC 6851)
    "CHECK": _spec(_SELECTED, "session:_noop"),
    "CLOSE": _spec(_SELECTED, "session:_close"),
    "UNSELECT": _spec(_SELECTED, "session:_unselect"),
    "EXPUNGE": _spec(_SELECTED, "messages:expunge"),
    "UID EXPUNGE": _spec(_SELECTED, "messages:uid_expunge"),
    "FETCH": _spec(_SELECTED, "messages:fetch", defers_expunge=True),
    "STORE": _spec(_SELECTED, "messages:store", defers_expunge=True),
    "SEARCH": _spec(_SELECTED, "messages:search", defers_expunge=True),
    "COPY": _spec(_SELECTED, "messages:copy"),
    "MOVE": _spec(_SELECTED, "messages:copy"),
}
"""Which commands exist, in which states they are legal, and who handles them."""

_TRYCREATE_COMMANDS = frozenset({"APPEND", "COPY", "MOVE"})
"""Commands whose missing *target* mailbox is ``NO [TRYCREATE]`` (RFC 3501 §6.3.11, §6.4.7)."""

_handler_cache: dict[str, Callable[..., Any]] = {}


def _table_key(cmd: Command) -> str:
    return "UID EXPUNGE" if isinstance(cmd, UidExpunge) else cmd.name.upper()


def _resolve(spec: CommandSpec) -> Callable[..., Any]:
    key = f"{spec.module}:{spec.function}"
    handler = _handler_cache.get(key)
    if handler is None:
        module = importlib.import_module(f"gateway.imap.{spec.module}")
        handler = _handler_cache[key] = getattr(module, spec.function)
    return handler


# ---- the selected mailbox ---------------------------------------------------------------


def _flag_order(flag: str) -> tuple[bool, str]:
    return (not flag.startswith("\\"), flag)


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Label)`` with system flags first, in a stable order."""
    return wire.flag_list(sorted(flags, key=_flag_order))


class View:
    """This session's picture of its selected mailbox (:class:`handler.SelectedView`).

    It holds only what belongs to this session, so that 100 sessions on a 100,000-message
    mailbox stay small: ``uids`` (``array('I')``, ascending) maps sequence numbers to
    UIDs and changes only as the client is told (EXISTS, EXPUNGE, VANISHED);
    ``recent`` holds the UIDs this session shows as \\Recent (RFC 3501 §2.3.2: it
    belongs to one session); ``highestmodseq`` is the point up to which the client has
    been told every flag change. Flags and modseqs themselves stay in the store: a
    catch-up reads ``changes_since(highestmodseq)``. ``reported`` remembers the changes
    this session told its client itself after that point (uid → modseq), so they are
    not told twice; each catch-up prunes it. ``pending_expunge`` holds UIDs gone from
    the store whose EXPUNGE could not be sent yet (RFC 3501 §7.4.1), so they keep
    their sequence numbers meanwhile.
    """

    def __init__(
        self,
        mailbox: Mailbox,
        readonly: bool,
        uids: Iterable[int],
        highestmodseq: int,
        recent: Iterable[int] = (),
    ) -> None:
        self.mailbox = mailbox
        self.readonly = readonly
        self.uids: array[int] = uids if isinstance(uids, array) else array("I", uids)
        self.recent: array[int] = recent if isinstance(recent, array) else array("I", recent)
        self.highestmodseq = highestmodseq
        self.reported: dict[int, int] = {}
        self.pending_expunge: set[int] = set()

    def resolve(self, seqset: SequenceSet, uid_mode: bool) -> list[int]:
        """UIDs (ascending, in the view) named by ``seqset``; RFC 3501 §6.4.8 and §9.

        UID mode: ``*`` is the largest UID, non-existent UIDs are ignored. Sequence mode:
        a number beyond the view is BAD; in an empty mailbox a set using ``*`` names
        nothing (clients routinely send ``1:*``) while an explicit number is BAD.
        """
        uids = self.uids
        if uid_mode:
            largest = uids[-1] if uids else 0
            ranges = seqset.resolve(largest)
            if len(ranges) == 1:
                low, high = ranges[0]
                return uids[
                    bisect.bisect_left(uids, low) : bisect.bisect_right(uids, high)
                ].tolist()
            picked: set[int] = set()
            for low, high in ranges:
                picked.update(uids[bisect.bisect_left(uids, low) : bisect.bisect_right(uids, high)])
            return sorted(picked)
        count = len(uids)
        if count == 0:
            if any(r.start is None or r.end is None for r in seqset.ranges):
                return []
            raise BadCommand("invalid message sequence number (the mailbox is empty)")
        ranges = seqset.resolve(count)
        for low, high in ranges:
            if low < 1 or high > count:
                raise BadCommand("invalid message sequence number")
        if len(ranges) == 1:
            low, high = ranges[0]
            return uids[low - 1 : high].tolist()
        seqs: set[int] = set()
        for low, high in ranges:
            seqs.update(range(low, high + 1))
        return [uids[s - 1] for s in sorted(seqs)]

    def seq_of(self, uid: int) -> int | None:
        uids = self.uids
        i = bisect.bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            return i + 1
        return None

    def is_recent(self, uid: int) -> bool:
        recent = self.recent
        if not recent:
            return False
        i = bisect.bisect_left(recent, uid)
        return i < len(recent) and recent[i] == uid

    def shown_flags(self, uid: int, stored: frozenset[str]) -> frozenset[str]:
        """The store's flags as this session shows them, with its own \\Recent."""
        recent = self.is_recent(uid)
        if (RECENT in stored) == recent:
            return stored
        return stored | {RECENT} if recent else stored - {RECENT}

    def knows(self, uid: int, modseq: int) -> bool:
        """Whether the client has been told this message's flags as of ``modseq``."""
        return modseq <= self.highestmodseq or self.reported.get(uid, 0) >= modseq

    def note_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        # Only a change the next catch-up would report needs remembering; anything at
        # or below highestmodseq is never read again.
        if modseq > self.highestmodseq and modseq > self.reported.get(uid, 0):
            if self.seq_of(uid) is not None:
                self.reported[uid] = modseq

    def caught_up(self, highestmodseq: int) -> None:
        """Every change up to ``highestmodseq`` has been told: forget what is covered."""
        if highestmodseq > self.highestmodseq:
            self.highestmodseq = highestmodseq
        if self.reported:
            top = self.highestmodseq
            self.reported = {u: m for u, m in self.reported.items() if m > top}

    def add(self, uid: int, recent: bool) -> None:
        """A new message told to the client (EXISTS); UIDs only ever grow."""
        self.uids.append(uid)
        if recent:
            self.recent.append(uid)

    def forget(self, gone: Iterable[int]) -> list[tuple[int, int]]:
        """Remove UIDs; ``(seq, uid)`` pairs highest sequence number first, the order in
        which ``* n EXPUNGE`` lines stay correct as each one is read (RFC 3501 §7.4.1)."""
        hits: list[tuple[int, int]] = []
        for uid in sorted(set(gone)):
            seq = self.seq_of(uid)
            if seq is not None:
                hits.append((seq, uid))
        if not hits:
            return []
        drop = {uid for _seq, uid in hits}
        if len(hits) <= FORGET_IN_PLACE:
            for seq, _uid in reversed(hits):
                del self.uids[seq - 1]
        else:
            self.uids = array("I", [u for u in self.uids if u not in drop])
        if self.recent:
            self.recent = array("I", [u for u in self.recent if u not in drop])
        for uid in drop:
            self.reported.pop(uid, None)
        hits.reverse()
        return hits


# ---- helpers ----------------------------------------------------------------------------


def _clean_text(text: str) -> str:
    """Response text: printable ASCII only, bounded (it may echo client input)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(cleaned) > MAX_RESPONSE_TEXT:
        cleaned = cleaned[: MAX_RESPONSE_TEXT - 3] + "..."
    return cleaned or "done"


def _clean_code(code: str) -> str:
    return "".join(c if " " <= c <= "~" and c not in "[]" else "?" for c in code)


def tagged(tag: str, reply: Reply) -> bytes:
    """``tag STATUS [code] text`` CRLF (RFC 3501 §7.1)."""
    code = f"[{_clean_code(reply.code)}] " if reply.code else ""
    return f"{tag} {reply.status} {code}{_clean_text(reply.text)}\r\n".encode("ascii")


def normalise_inbox(name: str) -> str:
    """``INBOX`` is case-insensitive, also as the first level of a name (RFC 3501 §5.1)."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == INBOX and head != INBOX:
        return INBOX + sep + rest
    return name


def _logged(name: str) -> str:
    return name[:MAX_LOGGED_NAME]


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("popgate")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


# ---- the session ------------------------------------------------------------------------


class IMAPSession:
    """One client connection's IMAP state (:class:`handler.Session` for the handlers)."""

    def __init__(
        self,
        store: Store,
        authenticator: Authenticator,
        *,
        peer: str = "",
        tls_active: bool = False,
        tls_available: bool = False,
        plaintext_auth_allowed: bool = True,
        utf8_available: bool = False,
        activity: ActivityHook | None = None,
        households: Households | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.store = store
        """Before login the raw store; after it the user's :class:`UserStore` view."""
        self.base_store = store
        self.households = households if households is not None else Households()
        self.quotas = quotas if quotas is not None else Quotas()
        self.authenticator = authenticator
        self.activity = activity
        self.peer = peer
        self.tls_active = tls_active
        self.tls_available = tls_available
        self.plaintext_auth_allowed = plaintext_auth_allowed
        self.utf8_available = utf8_available
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.selected: View | None = None
        self.enabled: set[str] = set()
        self.last_reply: Reply | None = None
        """The tagged reply of the last command run (None when it ended the connection
        without one, e.g. BYE); the transport glue reports it to its observer."""
        self._after_reply: Action | None = None

    # -- facts for the transport glue and the handlers --

    def situation(self) -> Situation:
        return Situation(
            authenticated=self.user is not None,
            tls_active=self.tls_active,
            tls_available=self.tls_available,
            plaintext_auth_allowed=self.plaintext_auth_allowed,
            utf8_accept=self.utf8_available,
        )

    def capability_text(self) -> str:
        return capability_text(self.situation())

    def greeting(self) -> bytes:
        """RFC 3501 §7.1.1 greeting with the capabilities up front (saves a round trip)."""
        return f"* OK [CAPABILITY {self.capability_text()}] {SERVER_NAME} ready\r\n".encode()

    def condstore_active(self) -> bool:
        return CONDSTORE in self.enabled

    def utf8_enabled(self) -> bool:
        return UTF8_ACCEPT in self.enabled

    def mailbox_name(self, raw: bytes) -> str:
        if self.utf8_enabled():
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadCommand("mailbox name is not valid UTF-8") from None
        else:
            try:
                name = mutf7.decode(raw)
            except ValueError:
                raise BadCommand("mailbox name is not valid modified UTF-7") from None
        return normalise_inbox(name)

    def wire_name(self, name: str) -> bytes:
        encoded = name.encode("utf-8") if self.utf8_enabled() else mutf7.encode(name)
        return wire.quote(encoded)

    # -- state transitions (the only place the state changes) --

    def user_store(self, user: str) -> UserStore:
        """The store as ``user`` sees it (personal and shared namespaces, own \\Seen)."""
        return UserStore(self.base_store, user, self.households, self.quotas)

    def _logged_in(self, user: str) -> None:
        self.store = self.user_store(user)
        self.user = user
        self.state = State.AUTHENTICATED

    def _enter(self, view: View) -> None:
        self.selected = view
        self.state = State.SELECTED

    def deselect(self) -> None:
        """Leave the selected state without expunging (UNSELECT, a new SELECT, or the
        deletion of the selected mailbox by this session)."""
        if self.state is State.SELECTED:
            self.selected = None
            self.state = State.AUTHENTICATED

    def _enter_logout(self) -> None:
        self.selected = None
        self.state = State.LOGOUT

    def tls_started(self) -> None:
        self.tls_active = True

    def autologout(self) -> bytes:
        """The inactivity timer fired (RFC 3501 §5.4): the BYE to send before closing."""
        self._enter_logout()
        return b"* BYE Autologout; idle for too long\r\n"

    # -- running commands --

    def execute(self, cmd: Command) -> Run:
        """Run one command: its untagged responses, the catch-up of changes made by
        others (RFC 3501 §5.2, §7), then the tagged completion."""
        key = _table_key(cmd)
        spec = COMMANDS.get(key)
        self.last_reply = None
        if spec is not None and key in ACTIVITY_COMMANDS and self.state in spec.states:
            self._note_activity(cmd)
        if spec is None:
            log.info("imap.command_error", command=key, kind="unsupported")
            yield self._tagged(cmd.tag, Reply("BAD", f"{key} is not supported"))
            return
        if self.state not in spec.states:
            log.info("imap.command_error", command=key, kind="state", state=self.state.value)
            yield self._tagged(cmd.tag, Reply("BAD", f"{key} not allowed in this state"))
            return
        condstore_before = self.condstore_active()
        self._after_reply = None
        mid_line = False
        reply: Reply
        handler = None
        try:
            handler = _resolve(spec)(self, cmd)
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    if thrown is not None:
                        item, thrown = handler.throw(thrown), None
                    else:
                        item = handler.send(sent)
                except StopIteration as stop:
                    reply = stop.value
                    break
                sent = None
                if isinstance(item, bytes):
                    if item:
                        mid_line = not item.endswith(b"\r\n")
                        yield item
                else:
                    try:
                        sent = yield item
                    except Exception as exc:  # a failed blocking call
                        thrown = exc
            if not isinstance(reply, Reply):
                raise TypeError(f"handler for {key} returned {type(reply).__name__}")
        except Exception as exc:
            reply = self.reply_for_error(exc, cmd)
            if mid_line:
                # The response stream stops mid-line (maybe mid-literal): no tagged reply
                # can follow it intelligibly. Drop the connection instead.
                log.warning("imap.command_error", command=key, kind="aborted_mid_response")
                self._enter_logout()
                yield Close()
                return
        finally:
            if handler is not None:
                handler.close()
        if reply.status != "BAD" and self.selected is not None:
            allow_expunge = not (spec.defers_expunge and not cmd.uid)
            try:
                yield from self.catch_up(allow_expunge=allow_expunge, uid_form=cmd.uid)
            except MailboxNotFound:
                yield from self._selected_mailbox_gone()
                return
            except Exception as exc:
                reply = self.reply_for_error(exc, cmd)
            if (
                not condstore_before
                and self.condstore_active()
                and self.selected is not None
                and not isinstance(cmd, Select)
                and not self.selected.pending_expunge
            ):
                # RFC 7162 §3.1: the first CONDSTORE enabling command run while a mailbox
                # is selected tells the client where modseqs stand.
                yield b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % self.selected.highestmodseq
        yield self._tagged(cmd.tag, reply)
        after, self._after_reply = self._after_reply, None
        if after is not None:
            yield after

    def _note_activity(self, cmd: Command) -> None:
        """Tell the activity hook which mailbox a client is looking at, so the POP3
        side can fetch on demand. A hook failure never affects the command."""
        if self.activity is None or self.user is None:
            return
        if isinstance(cmd, Select | Status):
            try:
                name = self.mailbox_name(cmd.mailbox)
            except Exception:
                return
        elif self.selected is not None:
            name = self.selected.mailbox.name
        else:
            return
        try:
            self.activity(self.user, name)
        except Exception:
            log.exception("imap.activity_hook_failed", user=self.user, mailbox=name)

    def parse_error(self, error: ParseError) -> Run:
        """RFC 3501 §7.1.3/§7.1.5: BAD (or NO for a refused size) for a command that
        could not be parsed; ``* BYE`` and close when the stream cannot be resynchronised."""
        self.last_reply = None
        log.info(
            "imap.command_error",
            command=None,
            kind="parse_fatal" if error.fatal else "parse",
            code=error.code,
        )
        if error.fatal:
            self._enter_logout()
            code = f"[{_clean_code(error.code)}] " if error.code else ""
            yield f"* BYE {code}{_clean_text(error.message)}\r\n".encode("ascii")
            yield Close()
            return
        yield self._tagged(error.tag or "*", Reply(error.status, error.message, error.code))

    def _tagged(self, tag: str, reply: Reply) -> bytes:
        self.last_reply = reply
        return tagged(tag, reply)

    def reply_for_error(self, exc: Exception, cmd: Command) -> Reply:
        """The one mapping from an exception to a tagged reply (STYLE.md habit 4).

        Client text never carries exception details except for our own Refused and
        BadCommand messages; anything unexpected is logged with its traceback and
        answered ``NO [SERVERBUG]`` (RFC 5530).
        """
        command = _table_key(cmd)
        if isinstance(exc, Refused):
            log.info("imap.command_error", command=command, kind="refused", code=exc.code)
            return Reply("NO", exc.text, exc.code)
        if isinstance(exc, BadCommand):
            log.info("imap.command_error", command=command, kind="bad")
            return Reply("BAD", exc.text, exc.code)
        if isinstance(exc, SearchTooComplex):
            # The store's bound on a search program (RFC 5530 LIMIT), not a server bug.
            log.info("imap.command_error", command=command, kind="limit", code="LIMIT")
            return Reply("NO", "Search program too complex", "LIMIT")
        if isinstance(exc, StoreError):
            reply = _store_error_reply(exc, command)
            if reply is not None:
                log.info(
                    "imap.command_error",
                    command=command,
                    kind="store",
                    error=type(exc).__name__,
                    code=reply.code,
                )
                return reply
        log.exception("imap.command_error", command=command, kind="internal")
        return Reply("NO", "Internal error, see server log", "SERVERBUG")

    def _selected_mailbox_gone(self) -> Iterator[Output]:
        """Another session deleted the selected mailbox: the view cannot be reconciled
        with anything, so say BYE (RFC 3501 §7.1.5), as Dovecot does."""
        log.info("imap.selected_mailbox_deleted", user=self.user, peer=self.peer)
        self._enter_logout()
        yield b"* BYE Selected mailbox was deleted, have to disconnect\r\n"
        yield Close()

    # -- catch-up --

    def catch_up(self, *, allow_expunge: bool, uid_form: bool = False) -> Iterator[bytes]:
        """Tell the client what changed in the selected mailbox since it was last told.

        RFC 3501 §7.3.1/§7.4.1: EXPUNGE first (sequence numbers valid as each line is
        read), then EXISTS/RECENT for new messages, then FETCH FLAGS for flag changes
        the client has not seen (changes this session told itself were recorded by
        ``note_flags`` and are skipped). Under QRESYNC, ``* VANISHED`` replaces EXPUNGE
        (RFC 7162 §3.2.10); UID and MODSEQ go into the FETCH once CONDSTORE is on (§3.1).
        When ``allow_expunge`` is false the removals wait for a later command.
        """
        view = self.selected
        if view is None:
            return
        changes = self.store.changes_since(view.mailbox.id, view.highestmodseq)
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
        if claim:
            self.store.clear_recent(view.mailbox.id, claim)
        if allow_expunge and view.pending_expunge:
            yield from self._report_expunges(view)
        if new_rows:
            for row in new_rows:
                view.add(row.uid, RECENT in row.flags)
            yield b"* %d EXISTS\r\n* %d RECENT\r\n" % (len(view.uids), len(view.recent))
        condstore = self.condstore_active()
        with_uid = uid_form or condstore
        reported = view.reported
        pending = view.pending_expunge
        lines: list[bytes] = []
        for row in changes.changed:
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
            shown = view.shown_flags(uid, row.flags)
            items = [b"FLAGS " + flag_list(shown)]
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
        view.caught_up(changes.highestmodseq)

    def _report_expunges(self, view: View) -> Iterator[bytes]:
        gone = sorted(view.pending_expunge)
        view.pending_expunge.clear()
        hits = view.forget(gone)
        if not hits:
            return
        if QRESYNC in self.enabled:
            yield b"* VANISHED " + wire.sequence_set_text(sorted(u for _s, u in hits)) + b"\r\n"
            return
        for start in range(0, len(hits), CATCH_UP_CHUNK):
            yield b"".join(
                b"* %d EXPUNGE\r\n" % seq for seq, _u in hits[start : start + CATCH_UP_CHUNK]
            )


def _store_error_reply(exc: StoreError, command: str) -> Reply | None:
    """StoreError subclasses → response codes (RFC 5530, RFC 3501 §6.3.11)."""
    if isinstance(exc, MailboxNotFound):
        if command in _TRYCREATE_COMMANDS:
            return Reply("NO", "Mailbox does not exist", "TRYCREATE")
        return Reply("NO", "Mailbox does not exist", "NONEXISTENT")
    if isinstance(exc, MailboxExists):
        return Reply("NO", "Mailbox already exists", "ALREADYEXISTS")
    if isinstance(exc, MailboxNotAllowed):
        return Reply("NO", "Operation not allowed on this mailbox", "CANNOT")
    if isinstance(exc, OverQuota):
        return Reply("NO", "Quota exceeded", "OVERQUOTA")
    if isinstance(exc, MessageTooLarge):
        return Reply("NO", "Message too large", "TOOBIG")
    return None


# ---- handlers owned by the session core --------------------------------------------------
# They may yield actions as well as bytes; mailbox and message commands live in
# ``mailboxes`` and ``messages``.


def _capability(session: IMAPSession, cmd: Command) -> SessionHandler:
    """CAPABILITY, RFC 3501 §6.1.1. State: any."""
    yield f"* CAPABILITY {session.capability_text()}\r\n".encode()
    return ok("CAPABILITY completed")


def _noop(session: IMAPSession, cmd: Command) -> SessionHandler:
    """NOOP (RFC 3501 §6.1.2) and CHECK (§6.4.1): nothing to do here; the catch-up that
    follows every command reports what changed. State: any / selected."""
    yield from ()
    return ok(f"{cmd.name.upper()} completed")


def _logout(session: IMAPSession, cmd: Command) -> SessionHandler:
    """LOGOUT, RFC 3501 §6.1.3: BYE, tagged OK, close. State: any."""
    session._enter_logout()
    session._after_reply = Close()
    yield b"* BYE IMAP4rev1 Server logging out\r\n"
    return ok("LOGOUT completed")


def _id(session: IMAPSession, cmd: Id) -> SessionHandler:
    """ID, RFC 2971 §3.1: who we are. The client's name and version are logged (handy
    when a client misbehaves), nothing else of its list. State: any."""
    if cmd.params:
        given = {k.lower(): v for k, v in cmd.params if v is not None}
        log.info(
            "imap.client_id",
            peer=session.peer,
            name=_logged(given.get("name", "")),
            version=_logged(given.get("version", "")),
        )
    fields = (("name", SERVER_NAME), ("version", _server_version()))
    body = b" ".join(wire.quote(k.encode()) + b" " + wire.quote(v.encode()) for k, v in fields)
    yield b"* ID (" + body + b")\r\n"
    return ok("ID completed")


def _starttls(session: IMAPSession, cmd: Command) -> SessionHandler:
    """STARTTLS, RFC 3501 §6.2.1. The TLS handshake starts right after the tagged OK;
    the glue discards whatever plaintext the client pipelined behind the command
    (RFC 2595 §3.1, CVE-2011-0411). State: not authenticated."""
    if session.tls_active:
        raise BadCommand("TLS is already active")
    if not session.tls_available:
        raise BadCommand("STARTTLS is not available on this listener")
    session._after_reply = StartTLS()
    yield from ()
    return ok("Begin TLS negotiation now")


def _check_login_allowed(session: IMAPSession) -> None:
    if not login_permitted(session.situation()):
        raise Refused(
            "Plaintext authentication disallowed on non-secure connections", "PRIVACYREQUIRED"
        )


def _finish_login(session: IMAPSession, user: str, canonical: str | None) -> Reply:
    if canonical is None:
        log.warning("imap.auth_failed", user=_logged(user), peer=session.peer)
        raise Refused("Authentication failed.", "AUTHENTICATIONFAILED")
    session.user_store(canonical).ensure_user(canonical)
    session._logged_in(canonical)
    log.info("imap.login", user=canonical, peer=session.peer)
    return ok("Logged in", "CAPABILITY " + session.capability_text())


def _login(session: IMAPSession, cmd: Login) -> SessionHandler:
    """LOGIN, RFC 3501 §6.2.3. The password check (scrypt) runs off the reactor thread.
    State: not authenticated."""
    _check_login_allowed(session)
    try:
        user = cmd.user.decode("utf-8")
    except UnicodeDecodeError:
        user = cmd.user.decode("utf-8", "replace")
        canonical = None
    else:
        canonical = yield RunBlocking(
            partial(session.authenticator.authenticate, user, cmd.password), login=user
        )
    return _finish_login(session, user, canonical)


def _authenticate(session: IMAPSession, cmd: Authenticate) -> SessionHandler:
    """AUTHENTICATE PLAIN, RFC 3501 §6.2.2 with RFC 4616 and RFC 4959 (SASL-IR).
    State: not authenticated."""
    if cmd.mechanism.upper() != "PLAIN":
        raise Refused("Unsupported authentication mechanism")
    _check_login_allowed(session)
    if cmd.initial_response is None:
        response = yield ReadLine(b"+ \r\n")
    elif cmd.initial_response == b"=":
        response = b""
    else:
        response = cmd.initial_response
    if response.strip() == b"*":
        raise BadCommand("Authentication cancelled")
    try:
        message = base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise BadCommand("Invalid base64 in the SASL response") from None
    parts = message.split(b"\0")
    if len(parts) != 3:
        log.warning("imap.auth_failed", user="", peer=session.peer, reason="malformed")
        raise Refused("Authentication failed.", "AUTHENTICATIONFAILED")
    authzid, authcid, password = parts
    try:
        user = authcid.decode("utf-8")
        proxy = authzid.decode("utf-8")
    except UnicodeDecodeError:
        return _finish_login(session, authcid.decode("utf-8", "replace"), None)
    canonical = yield RunBlocking(
        partial(session.authenticator.authenticate, user, password), login=user
    )
    if proxy and proxy not in (user, canonical):
        # RFC 4616 §2: acting as another user (authzid) is not supported.
        canonical = None
    return _finish_login(session, user, canonical)


def _enable(session: IMAPSession, cmd: Enable) -> SessionHandler:
    """ENABLE, RFC 5161 §3.1: reports only what this command newly enabled.
    QRESYNC implies CONDSTORE (RFC 7162 §3.2.3). State: authenticated."""
    known = {CONDSTORE, QRESYNC}
    if session.utf8_available:
        known.add(UTF8_ACCEPT)
    newly: list[str] = []
    for capability in cmd.capabilities:
        capability = capability.upper()
        if capability in known and capability not in session.enabled:
            session.enabled.add(capability)
            newly.append(capability)
        if capability == QRESYNC:
            session.enabled.add(CONDSTORE)
    yield ("* ENABLED" + "".join(" " + c for c in newly) + "\r\n").encode("ascii")
    return ok("ENABLE completed")


def _select(session: IMAPSession, cmd: Select) -> SessionHandler:
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
        session.enabled.add(CONDSTORE)
    assert session.user is not None
    store = session.store
    mailbox = store.get_mailbox(session.user, name)
    # Aggregates and the UID column only: no object per message (100,000-message
    # mailboxes, many sessions).
    uids = store.message_uids(mailbox.id)
    summary = store.selection_summary(mailbox.id)
    view = View(mailbox, readonly, uids, mailbox.highestmodseq, summary.recent)
    if not readonly and summary.recent:
        store.clear_recent(mailbox.id, summary.recent)
    session._enter(view)

    keywords = summary.keywords
    # RFC 3501 §7.2.6 / §7.1: system flags in the RFC's order, then keywords in use;
    # ``\\*`` says new keywords may be created. EXAMINE permits no change at all.
    flags = wire.flag_list([*SYSTEM_FLAGS, *keywords])
    permanent = b"()" if readonly else wire.flag_list([*SYSTEM_FLAGS, *keywords, "\\*"])
    uidnext = max(mailbox.uidnext, (uids[-1] + 1) if uids else 1)
    lines = [
        b"* FLAGS " + flags + b"\r\n",
        b"* OK [PERMANENTFLAGS "
        + permanent
        + b"] "
        + (b"Read-only mailbox\r\n" if readonly else b"Flags permitted\r\n"),
        b"* %d EXISTS\r\n" % len(uids),
        b"* %d RECENT\r\n" % len(view.recent),
    ]
    unseen = None if summary.first_unseen_uid is None else view.seq_of(summary.first_unseen_uid)
    if unseen is not None:
        lines.append(b"* OK [UNSEEN %d] First unseen\r\n" % unseen)
    lines.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mailbox.uidvalidity)
    lines.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % uidnext)
    lines.append(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % view.highestmodseq)
    yield b"".join(lines)
    if cmd.qresync is not None and cmd.qresync.uidvalidity == mailbox.uidvalidity:
        yield from _qresync(session, view, cmd)
    if readonly:
        return ok("EXAMINE completed", "READ-ONLY")
    return ok("SELECT completed", "READ-WRITE")


def _qresync(session: IMAPSession, view: View, cmd: Select) -> Iterator[bytes]:
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


def _close(session: IMAPSession, cmd: Command) -> SessionHandler:
    """CLOSE, RFC 3501 §6.4.2: expunge \\Deleted messages silently (no EXPUNGE
    responses) when read-write, then leave the selected state. State: selected."""
    view = session.selected
    assert view is not None
    if not view.readonly:
        session.store.expunge(view.mailbox.id)
    session.deselect()
    yield from ()
    return ok("CLOSE completed")


def _unselect(session: IMAPSession, cmd: Command) -> SessionHandler:
    """UNSELECT, RFC 3691 §2: like CLOSE without the expunge. State: selected."""
    session.deselect()
    yield from ()
    return ok("UNSELECT completed")


def _idle(session: IMAPSession, cmd: Command) -> SessionHandler:
    """IDLE, RFC 2177: ``+ idling``, then push changes to the selected mailbox as they
    happen, ``* OK Still here`` on each keep-alive tick, until the client sends ``DONE``
    (anything else is BAD and ends the IDLE). State: authenticated or selected."""
    yield b"+ idling\r\n"
    if session.selected is not None:
        yield from session.catch_up(allow_expunge=True)
    while True:
        event = yield WaitIdle()
        if isinstance(event, bytes):
            if event.strip().upper() == b"DONE":
                return ok("IDLE terminated")
            raise BadCommand("Expected DONE to end IDLE")
        if event is IdleEvent.KEEPALIVE:
            yield b"* OK Still here\r\n"
        elif event is IdleEvent.CHANGED and session.selected is not None:
            yield from session.catch_up(allow_expunge=True)
