"""The IMAP command grammar: one function per command (RFC 3501 §6 and the extensions).

Each ``_cmd_*`` function reads one complete command with a :class:`~gateway.imap.reader.Reader`
into the dataclasses of :mod:`gateway.imap.command`; :func:`read_command` reads the tag
and the command word and dispatches. FETCH and SEARCH have their own
modules (:mod:`gateway.imap.fetch_grammar`, :mod:`gateway.imap.search_grammar`). There is no backtracking: IMAP's grammar decides
every alternative on its next character or word.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway.core.criteria import SequenceSet
from gateway.core.flags import canonical_special_use
from gateway.imap.acl import ACL_COMMANDS, cmd_acl
from gateway.imap.command import (
    Append,
    AppendMessage,
    Authenticate,
    CatenatePart,
    Command,
    Copy,
    Create,
    Enable,
    Id,
    List,
    Login,
    MailboxCommand,
    QResync,
    Rename,
    Select,
    SetQuota,
    Simple,
    Status,
    Store,
    UidExpunge,
)
from gateway.imap.compress import cmd_compress
from gateway.imap.contexts import cmd_cancelupdate
from gateway.imap.fetch_grammar import cmd_fetch
from gateway.imap.notify import cmd_notify
from gateway.imap.reader import DQ, LPAREN, NUMBER64_MAX, TAG_RE, Reader, Syntax, show
from gateway.imap.search_grammar import cmd_search
from gateway.imap.sort_grammar import cmd_sort, cmd_thread
from gateway.imap.spool import Spooled

_BASE64_RE = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")


# ---- command-word tables ---------------------------------------------------------------

_SIMPLE_COMMANDS = frozenset(
    "CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE NAMESPACE IDLE".split()
)
_MAILBOX_COMMANDS = frozenset("DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT GETQUOTA".split())

STATUS_ITEMS = frozenset(
    "MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE DELETED MAILBOXID".split()
)
"""RFC 3501 §6.3.10, RFC 7162 §3.1.8 (HIGHESTMODSEQ), RFC 8438 (SIZE), RFC 9051 §6.3.11
(DELETED), RFC 8474 (MAILBOXID)."""

LIST_SELECTION_OPTIONS = frozenset(("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"))
"""RFC 5258 §3.1 and RFC 6154 §5.1 LIST selection options."""

LIST_RETURN_OPTIONS = frozenset(("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "MYRIGHTS"))
"""RFC 5258 §3.2, RFC 6154 §5.1 and RFC 8440 LIST return options; STATUS (RFC 5819) is separate."""


_STORE_ACTIONS = {
    f"{mode}FLAGS{silent}": (mode, bool(silent))
    for mode in ("", "+", "-")
    for silent in ("", ".SILENT")
}


# ---- one function per command (RFC 3501 §6 and the extensions) ------------------------


def _cmd_simple(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE NAMESPACE IDLE: no
    arguments (RFC 3501 §6.1, §6.4; RFC 3691; RFC 2342; RFC 2177)."""
    r.finish()
    return Simple(tag=tag, name=name)


def _cmd_login(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """LOGIN userid password, RFC 3501 §6.2.3."""
    r.sp("a user name")
    user = r.astring("a user name")
    r.sp("a password")
    password = r.astring("a password")
    r.finish()
    return Login(tag=tag, name=name, user=user, password=password)


def _cmd_authenticate(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """AUTHENTICATE mechanism [initial-response], RFC 3501 §6.2.2 and RFC 4959."""
    r.sp("a SASL mechanism name")
    mechanism = r.word("a SASL mechanism name")
    initial = None
    if not r.at_end():
        r.sp("a base64 initial response")
        m = _BASE64_RE.match(r.text, r.pos)
        if m is None:
            r.fail('a base64 initial response (or "=" for an empty one)')
        r.pos = m.end()
        initial = m.group()
    r.finish()
    return Authenticate(tag=tag, name=name, mechanism=mechanism, initial_response=initial)


def _cmd_select(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """SELECT / EXAMINE mailbox [(CONDSTORE) / (QRESYNC (...))], RFC 3501 §6.3.1,
    RFC 7162 §3.1.8 and §3.2.5."""
    r.sp("a mailbox name")
    mailbox = r.mailbox("a mailbox name")
    condstore = False
    qresync = None
    if not r.at_end():
        r.sp("select parameters")
        r.open("a parenthesised list of select parameters")
        while True:
            param = r.word("a select parameter")
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                r.sp("QRESYNC parameters")
                qresync = _qresync(r)
            else:
                raise Syntax(f"unknown select parameter {show(param.encode())}")
            if r.take_close():
                break
            r.sp("a select parameter")
    r.finish()
    return Select(tag=tag, name=name, mailbox=mailbox, condstore=condstore, qresync=qresync)


def _qresync(r: Reader) -> QResync:
    """``(uidvalidity modseq [known-uids] [(seq-match-seqs seq-match-uids)])``, RFC 7162 §3.2.5."""
    r.open("a parenthesised list of QRESYNC parameters")
    uidvalidity = r.nz_number("a UIDVALIDITY")
    r.sp("a mod-sequence")
    modseq = r.modseq("a mod-sequence", zero_ok=False)
    known = None
    match = None
    if not r.take_close():
        r.sp("known UIDs")
        if r.peek() != LPAREN:
            known = r.seqset("known UIDs")
            if not r.take_close():
                r.sp("sequence match data")
                match = _seq_match(r)
                r.close()
        else:
            match = _seq_match(r)
            r.close()
    return QResync(uidvalidity=uidvalidity, modseq=modseq, known_uids=known, seq_match=match)


def _seq_match(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    r.open("sequence match data")
    seqs = r.seqset("known sequence numbers")
    r.sp("known UIDs")
    uids = r.seqset("known UIDs")
    r.close()
    return seqs, uids


def _cmd_create(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """CREATE mailbox [(USE (attrs))], RFC 3501 §6.3.3 and RFC 6154 §3."""
    r.sp("a mailbox name")
    mailbox = r.mailbox("a mailbox name")
    uses: tuple[str, ...] = ()
    if not r.at_end():
        r.sp("create parameters")
        r.open("a parenthesised list of create parameters")
        while True:
            param = r.word("a create parameter")
            if param != "USE":
                raise Syntax(f"unknown create parameter {show(param.encode())}")
            r.sp("special-use attributes")
            uses += tuple(
                r.paren_list(lambda: _use_attr(r), "special-use attributes", empty_ok=True)
            )
            if r.take_close():
                break
            r.sp("a create parameter")
    r.finish()
    return Create(tag=tag, name=name, mailbox=mailbox, special_use=uses)


def _use_attr(r: Reader) -> str:
    attr = r.flag("a special-use attribute")
    if not attr.startswith("\\"):
        r.fail("a special-use attribute such as \\Sent")
    return canonical_special_use(attr)


def _cmd_mailbox(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """One mailbox (or quota root) argument: DELETE SUBSCRIBE UNSUBSCRIBE (RFC 3501
    §6.3.4, §6.3.6-7), GETQUOTA and GETQUOTAROOT (RFC 9208 §4.2-3)."""
    what = "a quota root" if name == "GETQUOTA" else "a mailbox name"
    r.sp(what)
    mailbox = r.mailbox(what)
    r.finish()
    return MailboxCommand(tag=tag, name=name, mailbox=mailbox)


def _cmd_rename(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """RENAME existing new, RFC 3501 §6.3.5."""
    r.sp("the existing mailbox name")
    old = r.mailbox("the existing mailbox name")
    r.sp("the new mailbox name")
    new = r.mailbox("the new mailbox name")
    r.finish()
    return Rename(tag=tag, name=name, old=old, new=new)


def _cmd_list(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """LIST / LSUB, RFC 3501 §6.3.8-9, with RFC 5258 LIST-EXTENDED (selection options,
    several patterns, RETURN options), RFC 6154 SPECIAL-USE and RFC 5819 RETURN STATUS."""
    extended = name == "LIST"
    is_extended = False
    selection: tuple[str, ...] = ()
    r.sp("a reference name")
    if extended and r.peek() == LPAREN:
        is_extended = True
        selection = tuple(
            r.paren_list(lambda: r.word("a selection option"), "selection options", empty_ok=True)
        )
        for option in selection:
            if option not in LIST_SELECTION_OPTIONS:
                raise Syntax(f"unknown selection option {show(option.encode())}")
        if "RECURSIVEMATCH" in selection and not {"SUBSCRIBED", "SPECIAL-USE"} & set(selection):
            raise Syntax("RECURSIVEMATCH needs another selection option (RFC 5258 §3)")
        r.sp("a reference name")
    reference = r.mailbox("a reference name")
    r.sp("a mailbox pattern")
    if extended and r.peek() == LPAREN:
        is_extended = True
        patterns = tuple(r.paren_list(r.list_mailbox, "mailbox patterns"))
    else:
        patterns = (r.list_mailbox(),)
    returns: list[str] = []
    status_items: list[str] = []
    if extended and not r.at_end():
        r.sp("RETURN")
        if r.word("RETURN") != "RETURN":
            r.fail("RETURN options")
        is_extended = True
        r.sp("return options")

        def option() -> None:
            word = r.word("a return option")
            if word == "STATUS":
                r.sp("status items")
                status_items.extend(r.paren_list(lambda: _status_item(r), "status items"))
            elif word in LIST_RETURN_OPTIONS:
                returns.append(word)
            else:
                raise Syntax(f"unknown return option {show(word.encode())}")

        r.paren_list(option, "return options", empty_ok=True)
    r.finish()
    return List(
        tag=tag,
        name=name,
        reference=reference,
        patterns=patterns,
        selection=selection,
        returns=tuple(returns),
        status_items=tuple(status_items),
        extended=is_extended,
    )


def _status_item(r: Reader) -> str:
    item = r.word("a status item")
    if item not in STATUS_ITEMS:
        raise Syntax(f"unknown status item {show(item.encode())}")
    return item


def _cmd_status(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """STATUS mailbox (items), RFC 3501 §6.3.10."""
    r.sp("a mailbox name")
    mailbox = r.mailbox("a mailbox name")
    r.sp("status items")
    items = tuple(r.paren_list(lambda: _status_item(r), "status items"))
    r.finish()
    return Status(tag=tag, name=name, mailbox=mailbox, items=items)


def _cmd_append(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """APPEND mailbox [flags] [date-time] literal, repeated for MULTIAPPEND (RFC 3501
    §6.3.11, RFC 3502 §6); the data may be a literal8 (RFC 3516 §4.4), ``UTF8 (~{n})``
    (RFC 6855 §4) or ``CATENATE (...)`` (RFC 4469 §5)."""
    r.sp("a mailbox name")
    mailbox = r.mailbox("a mailbox name")
    messages = []
    while True:
        r.sp("a message literal")
        flags: tuple[str, ...] = ()
        date = None
        if r.peek() == LPAREN:
            flags = tuple(r.paren_list(r.flag, "flags", empty_ok=True))
            r.sp("a message literal")
        if r.peek() == DQ:
            date = r.date_time()
            r.sp("a message literal")
        if not r.at_literal():
            word = r.peek_word()
            if word == "CATENATE":
                r.pos += len(word)
                r.sp("CATENATE parts")
                parts = tuple(r.paren_list(lambda: _cat_part(r), "CATENATE parts"))
                messages.append(AppendMessage(flags, date, b"", catenate=parts))
                if r.at_end():
                    break
                continue
            if word != "UTF8":
                r.fail("a message literal")
            r.pos += len(word)
            data = _utf8_literal(r)
            messages.append(AppendMessage(flags=flags, date=date, data=data, utf8=True))
            if r.at_end():
                break
            continue
        data = r.message_literal(binary_ok=True)
        messages.append(AppendMessage(flags=flags, date=date, data=data))
        if r.at_end():
            break
    return Append(tag=tag, name=name, mailbox=mailbox, messages=tuple(messages))


def _utf8_literal(r: Reader) -> bytes | Spooled:
    """``UTF8 SP "(" literal8 ")"`` after the word UTF8, RFC 6855 §4."""
    r.sp('"(" and a literal8')
    r.open('"(" and a literal8')
    if not r.at_literal():
        r.fail("a literal8 (~{n}) inside UTF8 (...)")
    data = r.message_literal(binary_ok=True)
    r.close('")" after the UTF8 literal')
    return data


def _cat_part(r: Reader) -> CatenatePart:
    """``TEXT SP literal`` / ``UTF8 SP "(" literal8 ")"`` / ``URL SP astring``, RFC 4469 §5
    and RFC 6855 §4."""
    word = r.word("TEXT or URL")
    if word == "URL":
        r.sp("an IMAP URL")
        return CatenatePart("URL", r.astring("an IMAP URL"))
    if word == "UTF8":
        return CatenatePart("TEXT", _utf8_literal(r))
    if word != "TEXT":
        raise Syntax(f"unknown CATENATE part {show(word.encode())}")
    r.sp("a literal")
    if not r.at_literal():
        r.fail("a literal after TEXT")
    return CatenatePart("TEXT", r.message_literal(binary_ok=True))


def _cmd_store(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """STORE sequence-set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] flags, RFC 3501 §6.4.6
    and RFC 7162 §3.1.3."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.sp("FLAGS, +FLAGS or -FLAGS")
    unchangedsince = None
    if r.peek() == LPAREN:
        r.open("store modifiers")
        if r.word("UNCHANGEDSINCE") != "UNCHANGEDSINCE":
            r.fail("the UNCHANGEDSINCE modifier")
        r.sp("a mod-sequence")
        unchangedsince = r.modseq("a mod-sequence", zero_ok=True)
        r.close()
        r.sp("FLAGS, +FLAGS or -FLAGS")
    action = _STORE_ACTIONS.get(r.word("FLAGS, +FLAGS or -FLAGS"))
    if action is None:
        r.fail("FLAGS, +FLAGS or -FLAGS (optionally .SILENT)")
    mode, silent = action
    r.sp("flags")
    if r.peek() == LPAREN:
        flags = r.paren_list(r.flag, "flags", empty_ok=True)
    else:
        flags = [r.flag("flags")]
        while not r.at_end():
            r.sp("a flag")
            flags.append(r.flag())
    r.finish()
    return Store(
        tag=tag,
        name=name,
        uid=uid,
        sequence_set=seqs,
        mode=mode,
        silent=silent,
        flags=tuple(flags),
        unchangedsince=unchangedsince,
    )


def _cmd_copy(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """COPY / MOVE sequence-set mailbox, RFC 3501 §6.4.7 and RFC 6851 §3."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.sp("a mailbox name")
    mailbox = r.mailbox("a mailbox name")
    r.finish()
    return Copy(tag=tag, name=name, uid=uid, sequence_set=seqs, mailbox=mailbox)


def _cmd_expunge(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """UID EXPUNGE sequence-set, RFC 4315 §2.1."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.finish()
    return UidExpunge(tag=tag, name=name, uid=True, sequence_set=seqs)


def _cmd_enable(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """ENABLE capability..., RFC 5161 §3.1."""
    caps = []
    while True:
        r.sp("a capability name")
        caps.append(r.word("a capability name"))
        if r.at_end():
            break
    return Enable(tag=tag, name=name, capabilities=tuple(caps))


def _cmd_id(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """ID NIL / ID ("field" "value" ...), RFC 2971 §3.1."""
    r.sp("NIL or a list of ID parameters")
    if r.peek() != LPAREN:
        if r.word("NIL or a list of ID parameters") != "NIL":
            r.fail("NIL or a list of ID parameters")
        r.finish()
        return Id(tag=tag, name=name, params=None)
    params: list[tuple[str, str | None]] = []
    r.open("a list of ID parameters")
    if not r.take_close():
        while True:
            key = r.string("an ID field name").decode("utf-8", "replace")
            r.sp("an ID field value")
            value = r.nstring("an ID field value")
            params.append((key, None if value is None else value.decode("utf-8", "replace")))
            if r.take_close():
                break
            r.sp("an ID field name")
    r.finish()
    return Id(tag=tag, name=name, params=tuple(params))


def _cmd_setquota(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """SETQUOTA root (resource limit ...), RFC 9208 §4.1."""
    r.sp("a quota root")
    root = r.astring("a quota root")
    r.sp("a list of resource limits")

    def resource() -> tuple[str, int]:
        res = r.word("a resource name")
        r.sp("a limit")
        return res, r.number("a limit", NUMBER64_MAX)

    limits = tuple(r.paren_list(resource, "resource limits", empty_ok=True))
    r.finish()
    return SetQuota(tag=tag, name=name, root=root, limits=limits)


_Grammar = Callable[[Reader, str, str, bool], Command]
_COMMANDS: dict[str, _Grammar] = {
    **{n: _cmd_simple for n in _SIMPLE_COMMANDS},
    **{n: _cmd_mailbox for n in _MAILBOX_COMMANDS},
    "LOGIN": _cmd_login,
    "AUTHENTICATE": _cmd_authenticate,
    "SELECT": _cmd_select,
    "EXAMINE": _cmd_select,
    "CREATE": _cmd_create,
    "RENAME": _cmd_rename,
    "LIST": _cmd_list,
    "LSUB": _cmd_list,
    "STATUS": _cmd_status,
    "APPEND": _cmd_append,
    "FETCH": cmd_fetch,
    "STORE": _cmd_store,
    "COPY": _cmd_copy,
    "MOVE": _cmd_copy,
    "SEARCH": cmd_search,
    "SORT": cmd_sort,  # RFC 5256
    "THREAD": cmd_thread,  # RFC 5256
    "ENABLE": _cmd_enable,
    "ID": _cmd_id,
    "SETQUOTA": _cmd_setquota,
    **{n: cmd_acl for n in ACL_COMMANDS},  # RFC 4314
    "NOTIFY": cmd_notify,  # RFC 5465
    "COMPRESS": cmd_compress,
    "CANCELUPDATE": cmd_cancelupdate,  # RFC 5267 §4.3
}
_UID_COMMANDS: dict[str, _Grammar] = {
    "FETCH": cmd_fetch,
    "STORE": _cmd_store,
    "SEARCH": cmd_search,
    "SORT": cmd_sort,
    "THREAD": cmd_thread,
    "COPY": _cmd_copy,
    "MOVE": _cmd_copy,
    "EXPUNGE": _cmd_expunge,
}


def read_command(r: Reader) -> tuple[str, Command]:
    """tag SP command-word ..., dispatched to the grammar of that command."""
    m = TAG_RE.match(r.text, 0)
    if m is None:
        raise Syntax("expected a command tag")
    tag = m.group().decode("ascii")
    r.pos = m.end()
    r.sp("a command name")
    name = r.atom("a command name").decode("ascii").upper()
    uid = False
    if name == "UID":
        r.cmd = "UID"
        r.sp("FETCH, STORE, SEARCH, COPY, MOVE or EXPUNGE after UID")
        name = r.atom("a command name after UID").decode("ascii").upper()
        grammar = _UID_COMMANDS.get(name)
        if grammar is None:
            raise Syntax(f"{show(name.encode())} is not a UID command")
        uid = True
        r.cmd = f"UID {name}"
    else:
        grammar = _COMMANDS.get(name)
        if grammar is None:
            raise Syntax(f"unknown command {show(name.encode())}")
        r.cmd = name
    return tag, grammar(r, tag, name, uid)
