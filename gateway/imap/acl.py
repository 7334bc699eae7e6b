"""The read side of IMAP ACLs: MYRIGHTS, GETACL, LISTRIGHTS, and SETACL/DELETEACL refused.

RFC 4314 (ACL) and RFC 8440 (LIST-MYRIGHTS). popgate has no per-mailbox access lists
to edit: who may reach what is fixed by the configuration (a user's own tree, and the
shared trees of the households the user is a member of; see
:mod:`gateway.access.households`). These commands tell a client exactly the rights popgate
enforces, so it can grey out what would fail (a phone hides "delete folder" on the
household's shared root, which nobody may delete):

========================  =============  ==========================================
mailbox                   rights         why a right is missing
========================  =============  ==========================================
personal INBOX            ``lrswikte``   ``x``: INBOX cannot be deleted (RFC 3501 §6.3.4)
other personal mailbox    ``lrswikxte``
shared root (Shared/g)    ``lrswikte``   ``x``: the shared mailbox itself cannot be
                                         deleted or renamed by a member
shared folder below it    ``lrswikxte``
========================  =============  ==========================================

Never granted: ``p`` (RFC 4314 §2.1: posting to a per-mailbox submission address;
popgate has none) and ``a`` (administer: the lists are not editable over IMAP). So SETACL
and DELETEACL are ``NO [NOPERM]`` with the reason, and GETACL/LISTRIGHTS, which RFC 4314
§4 reserves for holders of ``a``, are answered anyway, read-only, to anyone who may
look up the mailbox: what they disclose is the household membership, which members
know already. Mailboxes the user may not reach answer ``NO [NONEXISTENT]`` exactly as a
missing name does (RFC 4314 §6: no probing by ACL commands). Dovecot's acl plugin, the
differential reference, gives an owner every right including ``a``; the table above is
popgate's on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.access.households import UserStore
from gateway.imap import wire
from gateway.imap.command import Command
from gateway.imap.handler import BadCommand, Handler, Refused, ok
from gateway.imap.reader import Reader
from gateway.store.interfaces import INBOX

if TYPE_CHECKING:
    from gateway.imap.handler import Session


RIGHTS_WITH_DELETE = "lrswikxte"
"""RFC 4314 §2.1 rights on a mailbox its user may also delete or rename."""

RIGHTS_WITHOUT_DELETE = "lrswikte"
"""The same without ``x``: a personal INBOX, a household's shared root."""

_RIGHTS_RE = re.compile(rb"[+-]?[a-z0-9]*")


@dataclass(frozen=True)
class AclCommand(Command):
    """MYRIGHTS GETACL (mailbox), LISTRIGHTS DELETEACL (mailbox identifier), SETACL
    (mailbox identifier rights), RFC 4314 §3."""

    mailbox: bytes = b""
    identifier: bytes | None = None
    rights: bytes | None = None


_ARGUMENTS = {"MYRIGHTS": 1, "GETACL": 1, "LISTRIGHTS": 2, "DELETEACL": 2, "SETACL": 3}
ACL_COMMANDS = frozenset(_ARGUMENTS)


def cmd_acl(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """The RFC 4314 §7 grammar: ``mailbox [SP identifier [SP mod-rights]]`` (astrings)."""
    count = _ARGUMENTS[name]
    r.sp("a mailbox name")
    mailbox = r.mailbox("a mailbox name")
    identifier = rights = None
    if count >= 2:
        r.sp("an identifier")
        identifier = r.astring("an identifier")
    if count == 3:
        r.sp("a rights string")
        rights = r.astring("a rights string")
        if _RIGHTS_RE.fullmatch(rights) is None:
            r.fail("rights as lower-case letters and digits (RFC 4314 §7)")
    r.finish()
    return AclCommand(tag=tag, name=name, mailbox=mailbox, identifier=identifier, rights=rights)


def mailbox_rights(store: object, name: str) -> str:
    """The rights the logged-in user holds on ``name`` (an existing mailbox they may
    reach), from the table in the module docstring."""
    # A shared tree's root is its store INBOX: both cannot be deleted, nothing else differs.
    root = store.resolve(name).name == INBOX if isinstance(store, UserStore) else name == INBOX
    return RIGHTS_WITHOUT_DELETE if root else RIGHTS_WITH_DELETE


def _holders(store: object, user: str, name: str) -> list[str]:
    """Who holds rights on ``name``: the owner of a personal mailbox, every member of a
    household for its shared tree (sorted)."""
    if isinstance(store, UserStore):
        where = store.resolve(name)
        if where.shared is not None:
            members = store.households.groups.get(where.shared, frozenset())
            return sorted(members)
        assert where.owner == user
    return [user]


def _user(session: Session) -> str:
    if session.user is None:  # the state table makes this unreachable
        raise BadCommand("not authenticated")
    return session.user


def _existing(session: Session, cmd: AclCommand) -> str:
    """The mailbox's store-side name after checking it exists and is reachable
    (``NO [NONEXISTENT]`` otherwise, the same answer for both)."""
    name = session.mailbox_name(cmd.mailbox)
    session.store.get_mailbox(_user(session), name)
    return name


def myrights(session: Session, cmd: AclCommand) -> Handler:
    """MYRIGHTS, RFC 4314 §3.8. State: authenticated or selected."""
    name = _existing(session, cmd)
    rights = mailbox_rights(session.store, name)
    yield b"* MYRIGHTS " + session.wire_name(name) + b" " + rights.encode() + b"\r\n"
    return ok("MYRIGHTS completed")


def getacl(session: Session, cmd: AclCommand) -> Handler:
    """GETACL, RFC 4314 §3.3: one identifier per user who holds rights, read-only (see
    the module docstring). State: authenticated or selected."""
    name = _existing(session, cmd)
    rights = mailbox_rights(session.store, name).encode()
    pairs = b"".join(
        b" " + wire.quote(holder.encode("utf-8")) + b" " + rights
        for holder in _holders(session.store, _user(session), name)
    )
    yield b"* ACL " + session.wire_name(name) + pairs + b"\r\n"
    return ok("GETACL completed")


def listrights(session: Session, cmd: AclCommand) -> Handler:
    """LISTRIGHTS, RFC 4314 §3.7: the rights an identifier always has, and no optional
    ones (nothing can be granted). Someone without access has none: ``""``."""
    name = _existing(session, cmd)
    identifier = (cmd.identifier or b"").decode("utf-8", "replace")
    holders = _holders(session.store, _user(session), name)
    rights = mailbox_rights(session.store, name) if identifier in holders else ""
    yield (
        b"* LISTRIGHTS "
        + session.wire_name(name)
        + b" "
        + wire.quote(identifier.encode("utf-8"))
        + b" "
        + (rights.encode() if rights else b'""')
        + b"\r\n"
    )
    return ok("LISTRIGHTS completed")


def refuse_change(session: Session, cmd: AclCommand) -> Handler:
    """SETACL (RFC 4314 §3.1) and DELETEACL (§3.2): access is the configuration's to
    decide (households in popgate.toml), so nobody holds ``a``: ``NO [NOPERM]``."""
    _existing(session, cmd)
    yield from ()
    raise Refused(
        "Access rights are fixed by the gateway configuration (households), not by ACLs",
        "NOPERM",
    )


def myrights_line(session: Session, name: str) -> bytes:
    """RFC 8440 §3: the ``* MYRIGHTS`` line LIST RETURN (MYRIGHTS) gives after a name."""
    rights = mailbox_rights(session.store, name)
    return b"* MYRIGHTS " + session.wire_name(name) + b" " + rights.encode() + b"\r\n"
