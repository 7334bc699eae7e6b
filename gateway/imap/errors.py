"""How an IMAP session answers what went wrong: the one mapping from exceptions to tagged
replies (STYLE.md habit 4), commands that could not be parsed, and the ``* BYE`` that ends
a session whose access was revoked or whose selected mailbox was deleted.

A mixin of :class:`gateway.imap.session.IMAPSession`, which stays the only module that
changes the session state: these methods call its transitions (``_enter_logout``) and its
tagged-reply writer (``_tagged``).
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from gateway.imap.command import Command, ParseError
from gateway.imap.handler import (
    BadCommand,
    Close,
    Output,
    Refused,
    Reply,
    Run,
    SessionRevoked,
)
from gateway.imap.replies import clean_code, clean_text, store_error_reply
from gateway.imap.states import table_key
from gateway.store.interfaces import StoreError

log = structlog.get_logger(__name__)


class ErrorReplies:
    """The session's answers to failures (a mixin of
    :class:`~gateway.imap.session.IMAPSession`). It shares the session's state and calls
    back into its transitions (``_enter_logout``) and ``_tagged``."""

    last_reply: Reply | None
    user: str | None
    peer: str

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
            code = f"[{clean_code(error.code)}] " if error.code else ""
            yield f"* BYE {code}{clean_text(error.message)}\r\n".encode("ascii")
            yield Close()
            return
        yield self._tagged(error.tag or "*", Reply(error.status, error.message, error.code))

    def reply_for_error(self, exc: Exception, cmd: Command) -> Reply:
        """The one mapping from an exception to a tagged reply (STYLE.md habit 4).

        Client text never carries exception details except for our own Refused and
        BadCommand messages; anything unexpected is logged with its traceback and
        answered ``NO [SERVERBUG]`` (RFC 5530).
        """
        command = table_key(cmd)
        if isinstance(exc, Refused):
            log.info("imap.command_error", command=command, kind="refused", code=exc.code)
            return Reply("NO", exc.text, exc.code)
        if isinstance(exc, BadCommand):
            log.info("imap.command_error", command=command, kind="bad")
            return Reply("BAD", exc.text, exc.code)
        if isinstance(exc, StoreError):
            reply = store_error_reply(exc, command)
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

    def _revoked(self, revoked: SessionRevoked, *, mid_line: bool = False) -> Iterator[Output]:
        """The account or the selected mailbox's household membership is gone: ``* BYE``
        (RFC 3501 §7.1.5) and close, as for a deleted selected mailbox."""
        log.info("imap.access_revoked", user=self.user, peer=self.peer, reason=revoked.text)
        self._enter_logout()
        if not mid_line:
            code = f"[{clean_code(revoked.code)}] " if revoked.code else ""
            yield f"* BYE {code}{clean_text(revoked.text)}\r\n".encode("ascii")
        yield Close()
