"""The connection states and the command table: which command is legal in which state,
and which handler runs it (RFC 3501 §3 and §6; STYLE.md habit 3).

The table names each handler by its function object, so reading a row leads straight to
the code. Only :mod:`gateway.imap.session` changes the state; handlers ask it to
through the transitions of :class:`gateway.imap.handler.Session`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.imap import (
    acl,
    compress,
    connection,
    contexts,
    login,
    mailboxes,
    messages,
    notify,
    searching,
    selection,
    sorting,
)
from gateway.imap.command import Command, UidExpunge
from gateway.imap.handler import Handler


class State(enum.Enum):
    """RFC 3501 §3. The session moves only through the methods of
    :class:`gateway.imap.session.IMAPSession`."""

    NOT_AUTHENTICATED = "not authenticated"  # after the greeting, until LOGIN/AUTHENTICATE
    AUTHENTICATED = "authenticated"  # logged in, no mailbox selected
    SELECTED = "selected"  # a mailbox is selected (``session.selected`` is its view)
    LOGOUT = "logout"  # BYE sent; the connection is being closed


_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED})
_AUTHED = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})
_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})


@dataclass(frozen=True)
class CommandSpec:
    """One row of :data:`COMMANDS`.

    ``states``: where the command is legal (RFC 3501 §6). ``handler``: the generator
    function that runs it (:mod:`gateway.imap.handler`). ``defers_expunge``: in its
    non-UID form, untagged EXPUNGE must not be sent while it runs (RFC 3501 §7.4.1:
    FETCH, STORE, SEARCH).
    """

    states: frozenset[State]
    handler: Callable[[Any, Any], Handler]
    defers_expunge: bool = False


COMMANDS: dict[str, CommandSpec] = {
    # any state (RFC 3501 §6.1, RFC 2971)
    "CAPABILITY": CommandSpec(_ANY, connection.capability),
    "NOOP": CommandSpec(_ANY, connection.noop),
    "LOGOUT": CommandSpec(_ANY, connection.logout),
    "ID": CommandSpec(_ANY, connection.id_),
    # not authenticated (§6.2)
    "STARTTLS": CommandSpec(_NOT_AUTH, login.starttls),
    "LOGIN": CommandSpec(_NOT_AUTH, login.login),
    "AUTHENTICATE": CommandSpec(_NOT_AUTH, login.authenticate),
    # authenticated, before any SELECT (RFC 5161 §3.1)
    "ENABLE": CommandSpec(_AUTH, connection.enable),
    # authenticated or selected (§6.3, RFC 2177, RFC 2342, RFC 9208)
    "SELECT": CommandSpec(_AUTHED, selection.select),
    "EXAMINE": CommandSpec(_AUTHED, selection.select),
    "IDLE": CommandSpec(_AUTHED, connection.idle),
    "CREATE": CommandSpec(_AUTHED, mailboxes.create),
    "DELETE": CommandSpec(_AUTHED, mailboxes.delete),
    "RENAME": CommandSpec(_AUTHED, mailboxes.rename),
    "SUBSCRIBE": CommandSpec(_AUTHED, mailboxes.subscribe),
    "UNSUBSCRIBE": CommandSpec(_AUTHED, mailboxes.unsubscribe),
    "LIST": CommandSpec(_AUTHED, mailboxes.list_),
    "LSUB": CommandSpec(_AUTHED, mailboxes.list_),
    "STATUS": CommandSpec(_AUTHED, mailboxes.status),
    "NAMESPACE": CommandSpec(_AUTHED, mailboxes.namespace),
    "GETQUOTAROOT": CommandSpec(_AUTHED, mailboxes.getquotaroot),
    "GETQUOTA": CommandSpec(_AUTHED, mailboxes.getquota),
    "APPEND": CommandSpec(_AUTHED, messages.append),
    "NOTIFY": CommandSpec(_AUTHED, notify.notify),  # RFC 5465
    "MYRIGHTS": CommandSpec(_AUTHED, acl.myrights),  # RFC 4314 §3.8
    "GETACL": CommandSpec(_AUTHED, acl.getacl),  # RFC 4314 §3.3, read-only
    "LISTRIGHTS": CommandSpec(_AUTHED, acl.listrights),  # RFC 4314 §3.7
    "SETACL": CommandSpec(_AUTHED, acl.refuse_change),  # RFC 4314 §3.1: NO [NOPERM]
    "DELETEACL": CommandSpec(_AUTHED, acl.refuse_change),  # RFC 4314 §3.2: NO [NOPERM]
    "COMPRESS": CommandSpec(_AUTHED, compress.compress),  # RFC 4978 §3
    # selected (§6.4, RFC 3691, RFC 4315, RFC 6851)
    "CHECK": CommandSpec(_SELECTED, connection.noop),
    "CLOSE": CommandSpec(_SELECTED, selection.close),
    "UNSELECT": CommandSpec(_SELECTED, selection.unselect),
    "EXPUNGE": CommandSpec(_SELECTED, messages.expunge),
    "UID EXPUNGE": CommandSpec(_SELECTED, messages.uid_expunge),
    "FETCH": CommandSpec(_SELECTED, messages.fetch, defers_expunge=True),
    "STORE": CommandSpec(_SELECTED, messages.store, defers_expunge=True),
    "SEARCH": CommandSpec(_SELECTED, searching.search, defers_expunge=True),
    "SORT": CommandSpec(_SELECTED, sorting.sort, defers_expunge=True),  # RFC 5256
    "THREAD": CommandSpec(_SELECTED, sorting.thread, defers_expunge=True),  # RFC 5256
    "COPY": CommandSpec(_SELECTED, messages.copy),
    "MOVE": CommandSpec(_SELECTED, messages.copy),
    "CANCELUPDATE": CommandSpec(_SELECTED, contexts.cancelupdate),  # RFC 5267 §4.3
}
"""Which commands exist, in which states they are legal, and who handles them."""

ACTIVITY_COMMANDS = frozenset({"SELECT", "EXAMINE", "IDLE", "NOOP", "CHECK", "STATUS"})
"""A client looking at a mailbox with these is a good moment to fetch new upstream mail
for it (fetch on demand): the session's activity hook is told (user, mailbox name)."""

TRYCREATE_COMMANDS = frozenset({"APPEND", "COPY", "MOVE"})
"""Commands whose missing *target* mailbox is ``NO [TRYCREATE]`` (RFC 3501 §6.3.11, §6.4.7)."""


def table_key(cmd: Command) -> str:
    """The :data:`COMMANDS` row of a parsed command."""
    return "UID EXPUNGE" if isinstance(cmd, UidExpunge) else cmd.name.upper()
