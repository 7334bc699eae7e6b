"""The IMAP session core: the connection's state and its transitions, running one command
through the command table, and catch-up of concurrent changes (the one mapping from
errors to tagged responses is its mixin :class:`gateway.imap.errors.ErrorReplies`).

Sans-I/O (STYLE.md habit 1): :meth:`IMAPSession.execute` turns one parsed command into a
generator of output. It yields ``bytes`` to write and, where the session needs the outside
world, an *action* (:mod:`gateway.imap.handler`: :class:`RunBlocking`, :class:`ReadLine`,
:class:`WaitIdle`, :class:`StartTLS`, :class:`Close`) that the transport glue in
:mod:`gateway.imap.server` performs before resuming the generator with the outcome. So
this module can be read and tested without a reactor, and it is the only module that
changes the session state (RFC 3501 §3, STYLE.md habit 3): handlers (listed in
:mod:`gateway.imap.states`) call its transitions.

Access is checked per command against the current config (issue 20): before each
command, :meth:`IMAPSession.check_access` asks whether the user still has an account
(the :class:`~gateway.security.auth.UserDirectory`) and whether the selected mailbox is
still theirs to use (:meth:`~gateway.access.households.UserStore.may_use`, the current
household membership); IDLE asks again when a reload happens. When the answer is no,
the session says ``* BYE`` and closes, before the command does anything. Why BYE rather
than deselecting with ``* OK [CLOSED]`` (RFC 7162 §3.2.11) or a tagged NO: IMAP has no
way for a server to leave the selected state on its own; ``[CLOSED]`` is defined only
for the SELECT/EXAMINE that replaces a mailbox, so a client told it unasked would still
believe its mailbox selected and send FETCH/STORE against sequence numbers of nothing,
and a NO per command would leave it retrying forever. A BYE is understood by every
client, which reconnects and sees the mailbox list as it now is; Dovecot does the same
when a selected mailbox is deleted under a session ("Selected mailbox was deleted, have
to disconnect"), and so does popgate (:meth:`IMAPSession._selected_mailbox_gone`). A
member removed from a household whose session has no shared mailbox selected keeps the
session; only the shared names stop resolving (``NO [NONEXISTENT]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import structlog

from gateway.access.households import Households, UserStore
from gateway.access.quota import Quotas
from gateway.imap import catchup, mutf7, wire
from gateway.imap.capabilities import (
    CONDSTORE,
    IMAP4REV2,
    QRESYNC,
    SERVER_NAME,
    UTF8_ACCEPT,
    Situation,
    capability_text,
)
from gateway.imap.capabilities import capabilities as capabilities_of
from gateway.imap.command import Command, Select, Status
from gateway.imap.errors import ErrorReplies
from gateway.imap.handler import (
    Action,
    Close,
    Output,
    Refused,
    Reply,
    Run,
    SessionRevoked,
    StartCompress,
    StartTLS,
)
from gateway.imap.notify import Notifier
from gateway.imap.replies import tagged
from gateway.imap.selectcache import SelectCache
from gateway.imap.states import ACTIVITY_COMMANDS, COMMANDS, State, table_key
from gateway.imap.view import View
from gateway.security.auth import Authenticator, UserDirectory
from gateway.store.interfaces import (
    DELIMITER,
    INBOX,
    MailboxNotFound,
    Store,
)

log = structlog.get_logger(__name__)

NOTHING_ENABLED: frozenset[str] = frozenset()
"""A fresh session's enabled capabilities (one object for all: ``frozenset()`` makes a
new 216-byte set each time)."""

_UTF8_NAMES = frozenset({UTF8_ACCEPT, IMAP4REV2.upper()})
"""Enabled capabilities that make mailbox names UTF-8 (:meth:`IMAPSession.utf8_enabled`)."""

ActivityHook = Callable[[str, str], None]
"""Told (user, mailbox name) when a client looks at a mailbox (states.ACTIVITY_COMMANDS)."""


class SentAppendHook(Protocol):
    """Keeps one copy of a sent message in ``\\Sent`` (issue 15): when the server has
    filed the Sent copy of a submission and the client APPENDs its own as well (what
    Thunderbird and iOS do), the APPEND is answered with the kept copy. Injected by the
    service (the submission relay); IMAP knows nothing about submission."""

    def kept_copy(self, user: str, mailbox_id: int, raw: bytes) -> int | None:
        """The UID of the same message already filed in this mailbox, or None."""

    def filed(self, user: str, mailbox_id: int, raw: bytes, uid: int) -> None:
        """The client's own copy was appended as ``uid`` (a later server copy is skipped)."""


def normalise_inbox(name: str) -> str:
    """``INBOX`` is case-insensitive, also as the first level of a name (RFC 3501 §5.1)."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == INBOX and head != INBOX:
        return INBOX + sep + rest
    return name


# ---- the session ------------------------------------------------------------------------


class IMAPSession(ErrorReplies):
    """One client connection's IMAP state (:class:`handler.Session` for the handlers).

    Every change of ``state``, ``user``, ``selected`` and the enabled capabilities
    happens in the transitions below, whether a handler or the glue asks for it.
    """

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
        directory: UserDirectory | None = None,
        sent_append: SentAppendHook | None = None,
        select_cache: SelectCache | None = None,
    ) -> None:
        self.store = store
        self.select_cache = select_cache
        """SELECT results of unchanged mailboxes, shared by the server's sessions."""
        self.sent_append = sent_append
        """One copy of a sent message in \\Sent (see :class:`SentAppendHook`); None: off."""
        """Before login the raw store; after it the user's :class:`UserStore` view."""
        self.base_store = store
        self.households = households if households is not None else Households()
        self.quotas = quotas if quotas is not None else Quotas()
        self.authenticator = authenticator
        self.directory = directory
        """Who still has an account (None: no check, e.g. tests of other features)."""
        self._user_store: UserStore | None = None
        self.activity = activity
        self.peer = peer
        self.tls_active = tls_active
        self.tls_available = tls_available
        self.plaintext_auth_allowed = plaintext_auth_allowed
        self.utf8_available = utf8_available
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.selected: View | None = None
        self._enabled: frozenset[str] = NOTHING_ENABLED
        """Replaced, never changed in place, so the empty one is shared (issue 19)."""
        self.compress_active = False
        self.whole_literals = False
        """The connection sends a handler's chunks without copying them (straight to its
        socket): FETCH may then yield a long literal whole (set by the server)."""
        self.last_reply: Reply | None = None
        """The tagged reply of the last command run (None when it ended the connection
        without one, e.g. BYE); the transport glue reports it to its observer."""
        self._after_reply: Action | None = None
        self.notifier: Notifier | None = None
        """NOTIFY (RFC 5465): what this connection asked to hear about, or None."""
        self.notifier_changed: Callable[[], None] | None = None
        """Told when NOTIFY is set or dropped: the transport glue indexes which
        connections a store change may concern (gateway.imap.factory)."""

    # -- facts for the transport glue and the handlers --

    def situation(self) -> Situation:
        return Situation(
            authenticated=self.user is not None,
            tls_active=self.tls_active,
            tls_available=self.tls_available,
            plaintext_auth_allowed=self.plaintext_auth_allowed,
            utf8_accept=self.utf8_available,
            compress_active=self.compress_active,
        )

    def capability_text(self) -> str:
        return capability_text(self.situation())

    def greeting(self) -> bytes:
        """RFC 3501 §7.1.1 greeting with the capabilities up front (saves a round trip)."""
        return f"* OK [CAPABILITY {self.capability_text()}] {SERVER_NAME} ready\r\n".encode()

    @property
    def enabled(self) -> frozenset[str]:
        """Capabilities on for this session (ENABLE, RFC 5161; or implied, RFC 7162 §3.1)."""
        return self._enabled

    def condstore_active(self) -> bool:
        return CONDSTORE in self._enabled

    def utf8_enabled(self) -> bool:
        """UTF-8 mailbox names: UTF8=ACCEPT (RFC 6855) or IMAP4rev2 (RFC 9051 §5.1)."""
        return not self._enabled.isdisjoint(_UTF8_NAMES)

    def mailbox_name(self, raw: bytes) -> str:
        """The mailbox name a command gave, decoded.

        A name that is not valid modified UTF-7 (RFC 3501 §5.1.3) is well-formed IMAP but
        names a mailbox that cannot exist: NO [CANNOT], not BAD (RFC 3501 §6.3.1, and as
        Dovecot answers), and the session goes on. So is an 8-bit name that is not UTF-8
        (the reader keeps its octets, :meth:`gateway.imap.reader.Reader.mailbox`), with
        or without UTF8=ACCEPT (RFC 6855 §3 allows only UTF-8 names).
        """
        if self.utf8_enabled():
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused("mailbox name is not valid UTF-8", "CANNOT") from None
        else:
            try:
                name = mutf7.decode(raw)
            except ValueError:
                raise Refused("mailbox name is not valid modified UTF-7", "CANNOT") from None
        return normalise_inbox(name)

    def wire_name(self, name: str) -> bytes:
        if self.utf8_enabled():
            return wire.quote_utf8(name.encode("utf-8"))  # RFC 6855 §3
        return wire.quote(mutf7.encode(name))

    # -- state transitions (the only place the state changes) --

    def user_store(self, user: str) -> UserStore:
        """The store as ``user`` sees it (personal and shared namespaces, own \\Seen)."""
        return UserStore(self.base_store, user, self.households, self.quotas)

    def log_in(self, user: str) -> None:
        """LOGIN or AUTHENTICATE succeeded: authenticated as ``user`` (RFC 3501 §3.2)."""
        self.store = self._user_store = self.user_store(user)
        self.user = user
        self.state = State.AUTHENTICATED

    def check_access(self) -> None:
        """Raise :class:`SessionRevoked` when the user's account is gone or the selected
        mailbox is no longer theirs to use, by the config as it is now (see the module
        docstring for why the answer is BYE)."""
        user = self.user
        if user is None:
            return
        if self.directory is not None and not self.directory.knows(user):
            raise SessionRevoked("Your account was removed")
        view = self.selected
        users = self._user_store
        if view is not None and users is not None and not users.may_use(view.mailbox.id):
            raise SessionRevoked("Access to the selected mailbox was withdrawn", "NOPERM")

    def select(self, view: View) -> None:
        """SELECT or EXAMINE succeeded: ``view`` is the selected mailbox (§3.3)."""
        self.selected = view
        self.state = State.SELECTED

    def deselect(self) -> None:
        """Leave the selected state without expunging (UNSELECT, CLOSE, a new SELECT, or
        the deletion of the selected mailbox by this session)."""
        if self.state is State.SELECTED:
            self.selected = None
            self.state = State.AUTHENTICATED

    def log_out(self) -> None:
        """LOGOUT (RFC 3501 §6.1.3): the logout state; the connection closes once the
        tagged reply has been sent."""
        self._enter_logout()
        self._after_reply = Close()

    def begin_tls(self) -> None:
        """STARTTLS accepted: the glue starts TLS right after the tagged OK (§6.2.1)."""
        self._after_reply = StartTLS()

    def begin_compress(self) -> None:
        """COMPRESS accepted (RFC 4978 §3): the glue compresses from the octet after the
        tagged OK; from then on the capability is no longer announced."""
        self.compress_active = True
        self._after_reply = StartCompress()

    def enable(self, capabilities: Iterable[str]) -> list[str]:
        """ENABLE, RFC 5161 §3.1: the known capabilities among ``capabilities`` are on
        from now; returns those newly enabled (what ``* ENABLED`` reports). QRESYNC
        implies CONDSTORE (RFC 7162 §3.2.3)."""
        known = {CONDSTORE, QRESYNC}
        if self.utf8_available:
            known.add(UTF8_ACCEPT)
        if IMAP4REV2 in capabilities_of(self.situation()):
            known.add(IMAP4REV2.upper())  # RFC 9051 §6.3.1
        newly: list[str] = []
        for capability in capabilities:
            capability = capability.upper()
            if capability in known and capability not in self._enabled:
                self._enabled |= {capability}
                newly.append(IMAP4REV2 if capability == IMAP4REV2.upper() else capability)
            if capability == QRESYNC:
                self._enabled |= {CONDSTORE}
        return newly

    def set_notifier(self, notifier: Notifier | None) -> None:
        """NOTIFY SET / NOTIFY NONE, or NOTIFICATIONOVERFLOW turning it off (RFC 5465)."""
        self.notifier = notifier
        if self.notifier_changed is not None:
            self.notifier_changed()

    def notifications(self, *, idling: bool = False) -> Iterator[Output]:
        """What changed, told without a command (RFC 5465 between commands; RFC 2177
        while idling, where the selected mailbox is always caught up)."""
        notifier = self.notifier
        try:
            if idling and self.selected is not None:
                if notifier is not None and notifier.handles_selected():
                    notifier.selected_pending = True  # told below, with MessageNew's items
                else:
                    yield from self.catch_up(allow_expunge=True)
            if notifier is not None:
                yield from notifier.deliver(self, between_commands=True, idling=idling)
        except MailboxNotFound:
            yield from self._selected_mailbox_gone()

    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command ran (RFC 7162 §3.1: FETCH MODSEQ, CHANGEDSINCE,
        UNCHANGEDSINCE, SEARCH MODSEQ, SELECT (CONDSTORE), STATUS HIGHESTMODSEQ)."""
        self._enabled |= {CONDSTORE}

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
        key = table_key(cmd)
        spec = COMMANDS.get(key)
        self.last_reply = None
        try:
            self.check_access()
        except SessionRevoked as revoked:
            yield from self._revoked(revoked)
            return
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
        condstore_before = CONDSTORE in self._enabled
        self._after_reply = None
        mid_line = False
        reply: Reply
        handler = None
        try:
            handler = spec.handler(self, cmd)
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
        except SessionRevoked as revoked:  # IDLE heard of a reload that ended access
            yield from self._revoked(revoked, mid_line=mid_line)
            return
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
                try:
                    self.check_access()  # access may have ended while the command ran
                except SessionRevoked as revoked:
                    yield from self._revoked(revoked, mid_line=mid_line)
                    return
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
                yield wire.highestmodseq(self.selected.highestmodseq)
        if self.notifier is not None and self.state is not State.LOGOUT:
            yield from self.notifier.deliver(self, between_commands=False)
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

    def _tagged(self, tag: str, reply: Reply) -> bytes:
        self.last_reply = reply
        return tagged(tag, reply)

    # -- catch-up (gateway.imap.catchup) --

    def catch_up(self, *, allow_expunge: bool, uid_form: bool = False) -> Iterable[bytes]:
        """Tell the client what changed in the selected mailbox since it was last told
        (RFC 3501 §7; :func:`gateway.imap.catchup.catch_up`). Nothing to tell (the
        usual answer after a command) costs the store's read and no generator
        (:func:`gateway.imap.catchup.nothing_to_tell`)."""
        view = self.selected
        if view is None:
            return ()
        cache = self.select_cache
        changes = catchup.changes_for(self, view, cache)
        if catchup.nothing_to_tell(view, changes, allow_expunge):
            return ()
        return catchup.catch_up(
            self, view, cache, allow_expunge=allow_expunge, uid_form=uid_form, changes=changes
        )

    def idle_push(self) -> bytes | None:
        """An IDLE push's untagged responses written without stepping the IDLE command,
        or None when the push needs the command's path (:func:`gateway.imap.catchup.idle_push`)."""
        return catchup.idle_push(self, self.selected, self.select_cache)
