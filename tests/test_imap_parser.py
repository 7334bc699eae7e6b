"""Tests for the command parser (gateway.imap.framing with the grammar modules): fixtures (whole, byte by byte, and as a well-behaved
client that waits for "+"), round trips of generated commands, fuzzing, every limit,
pipelining, raw lines and error messages."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.criteria import (
    All,
    And,
    Date,
    EmailId,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    Seq,
    SeqRange,
    SequenceSet,
    Size,
    Text,
    Uid,
    Within,
)
from gateway.core.flags import SPECIAL_USES, SYSTEM_FLAGS
from gateway.core.sorting import SortCriterion
from gateway.imap import framing, grammar
from gateway.imap.acl import AclCommand
from gateway.imap.command import (
    NEED_DATA,
    Append,
    AppendMessage,
    Authenticate,
    BinarySection,
    BodySection,
    CatenatePart,
    Command,
    ContinuationNeeded,
    Copy,
    Create,
    Enable,
    Fetch,
    FetchAttr,
    Id,
    List,
    Login,
    MailboxCommand,
    ParseError,
    QResync,
    RawLine,
    Rename,
    Search,
    Select,
    SetQuota,
    Simple,
    Sort,
    Status,
    Store,
    Thread,
    UidExpunge,
)
from gateway.imap.compress import Compress
from gateway.imap.contexts import CancelUpdate
from gateway.imap.fetch_grammar import FETCH_ATTRS
from gateway.imap.framing import CommandParser
from gateway.imap.grammar import LIST_RETURN_OPTIONS, STATUS_ITEMS
from gateway.imap.notify import EventGroup, Notify
from gateway.imap.search_grammar import SEARCH_RETURN_OPTIONS
from gateway.store.search import MAX_SEARCH_DEPTH, check_size

# ---- drivers -----------------------------------------------------------------------------


def drain(p: CommandParser, limit: int = 100_000) -> list:
    """Every event up to NEED_DATA; a cap proves next_event never loops forever."""
    out = []
    for _ in range(limit):
        ev = p.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
    raise AssertionError("parser produced events without end")


def feed(chunks, parser: CommandParser | None = None, **kwargs) -> list:
    p = parser or CommandParser(**kwargs)
    events = []
    for chunk in chunks:
        p.receive_data(chunk)
        events.extend(drain(p))
    return events


def whole(data: bytes, **kwargs) -> list:
    return feed([data], **kwargs)


def bytewise(data: bytes, **kwargs) -> list:
    return feed([data[i : i + 1] for i in range(len(data))], **kwargs)


_MARKER = re.compile(rb"~?\{([0-9]+)(\+?)\}\r?\n\Z")


def as_client(data: bytes, *, one_byte: bool = False, **kwargs) -> list:
    """Send like a conforming client: after a line announcing a synchronizing literal,
    wait until the parser asks for it (exactly once) before sending the bytes, and do
    not send them at all if the command was refused instead."""
    p = CommandParser(**kwargs)
    events: list = []

    def send(chunk: bytes) -> list:
        pieces = [chunk[i : i + 1] for i in range(len(chunk))] if one_byte else [chunk]
        new = feed(pieces, parser=p)
        events.extend(new)
        return new

    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            send(data[pos:])
            break
        line = data[pos : nl + 1]
        pos = nl + 1
        new = send(line)
        m = _MARKER.search(line)
        if m is None:
            assert not any(isinstance(e, ContinuationNeeded) for e in new)
            continue
        size = int(m.group(1))
        if not m.group(2):
            if new and isinstance(new[-1], ParseError):
                continue  # refused instead of "+": the client does not send the bytes
            assert new and new[-1] == ContinuationNeeded(size), new
            assert sum(isinstance(e, ContinuationNeeded) for e in new) == 1
        send(data[pos : pos + size])
        pos += size
    return events


def commands(events: list) -> list:
    return [e for e in events if not isinstance(e, ContinuationNeeded)]


def S(*elements) -> SequenceSet:
    """SequenceSet from ints (n means n:n) and (start, end) pairs, None meaning *."""
    ranges = []
    for e in elements:
        ranges.append(SeqRange(*e) if isinstance(e, tuple) else SeqRange(e, e))
    return SequenceSet(tuple(ranges))


def tz(minutes: int) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(minutes=minutes))


# ---- the fixture table -------------------------------------------------------------------

BS = BodySection
FA = FetchAttr
NEW = And((Flag("\\Recent"), Flag("\\Seen", False)))

FIXTURES: list[tuple[bytes, Command]] = [
    # any state (RFC 3501 §6.1)
    (b"a1 CAPABILITY\r\n", Simple(tag="a1", name="CAPABILITY")),
    (b"a2 noop\r\n", Simple(tag="a2", name="NOOP")),
    (b"a3 Logout\r\n", Simple(tag="a3", name="LOGOUT")),
    # not authenticated (§6.2)
    (b"t STARTTLS\r\n", Simple(tag="t", name="STARTTLS")),
    (b"a AUTHENTICATE PLAIN\r\n", Authenticate(tag="a", name="AUTHENTICATE", mechanism="PLAIN")),
    (
        b"a authenticate plain AGFsaWNlAHNlY3JldA==\r\n",
        Authenticate(
            tag="a",
            name="AUTHENTICATE",
            mechanism="PLAIN",
            initial_response=b"AGFsaWNlAHNlY3JldA==",
        ),
    ),
    (
        b"a AUTHENTICATE EXTERNAL =\r\n",
        Authenticate(tag="a", name="AUTHENTICATE", mechanism="EXTERNAL", initial_response=b"="),
    ),
    (b"a LOGIN alice s3cret\r\n", Login(tag="a", name="LOGIN", user=b"alice", password=b"s3cret")),
    (
        b'b LOGIN "al\\"ice" {6}\r\nse\r\ncr\r\n',
        Login(tag="b", name="LOGIN", user=b'al"ice', password=b"se\r\ncr"),
    ),
    (
        b'c login {5+}\r\nalice "back\\\\slash"\r\n',
        Login(tag="c", name="LOGIN", user=b"alice", password=b"back\\slash"),
    ),
    (
        b"d LOGIN al!c&e#$ pa]ss[\r\n",
        Login(tag="d", name="LOGIN", user=b"al!c&e#$", password=b"pa]ss["),
    ),
    # authenticated (§6.3)
    (b"s SELECT INBOX\r\n", Select(tag="s", name="SELECT", mailbox=b"INBOX")),
    (b's EXAMINE "Sent Items"\r\n', Select(tag="s", name="EXAMINE", mailbox=b"Sent Items")),
    (b"s SELECT {5}\r\nIN BX\r\n", Select(tag="s", name="SELECT", mailbox=b"IN BX")),
    (
        b"s SELECT INBOX (CONDSTORE)\r\n",
        Select(tag="s", name="SELECT", mailbox=b"INBOX", condstore=True),
    ),
    (
        b"A02 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))\r\n",
        Select(
            tag="A02",
            name="SELECT",
            mailbox=b"INBOX",
            qresync=QResync(67890007, 90060115194045000, S((41, 211), (214, 541))),
        ),
    ),
    (
        b"B02 select inbox (qresync (67890007 90060115194045000 1:29997 "
        b"(5000,7500,9990:9999 15000,22500,29970:29979)))\r\n",
        Select(
            tag="B02",
            name="SELECT",
            mailbox=b"inbox",
            qresync=QResync(
                67890007,
                90060115194045000,
                S((1, 29997)),
                (S(5000, 7500, (9990, 9999)), S(15000, 22500, (29970, 29979))),
            ),
        ),
    ),
    (
        b"s EXAMINE INBOX (QRESYNC (1 2 (1:5 10:14)) CONDSTORE)\r\n",
        Select(
            tag="s",
            name="EXAMINE",
            mailbox=b"INBOX",
            condstore=True,
            qresync=QResync(1, 2, None, (S((1, 5)), S((10, 14)))),
        ),
    ),
    (
        b"s SELECT INBOX (QRESYNC (1 2))\r\n",
        Select("s", "SELECT", mailbox=b"INBOX", qresync=QResync(1, 2)),
    ),
    (b"c CREATE owatagusiam/\r\n", Create(tag="c", name="CREATE", mailbox=b"owatagusiam/")),
    (
        b"c CREATE MySent (USE (\\Sent))\r\n",
        Create(tag="c", name="CREATE", mailbox=b"MySent", special_use=("\\Sent",)),
    ),
    (
        b"c CREATE x (use (\\sent \\JUNK \\Custom))\r\n",
        Create(tag="c", name="CREATE", mailbox=b"x", special_use=("\\Sent", "\\Junk", "\\Custom")),
    ),
    (b"d DELETE blurdybloop\r\n", MailboxCommand(tag="d", name="DELETE", mailbox=b"blurdybloop")),
    (b'r RENAME "a b" c\r\n', Rename(tag="r", name="RENAME", old=b"a b", new=b"c")),
    (
        b"s SUBSCRIBE #news.comp.mail\r\n",
        MailboxCommand("s", "SUBSCRIBE", mailbox=b"#news.comp.mail"),
    ),
    (b"u UNSUBSCRIBE {3+}\r\nx y\r\n", MailboxCommand("u", "UNSUBSCRIBE", mailbox=b"x y")),
    (b'l LIST "" ""\r\n', List(tag="l", name="LIST", reference=b"", patterns=(b"",))),
    (b'l LIST "" *\r\n', List(tag="l", name="LIST", reference=b"", patterns=(b"*",))),
    (
        b"l LIST ~/Mail/ %/foo*]\r\n",
        List(tag="l", name="LIST", reference=b"~/Mail/", patterns=(b"%/foo*]",)),
    ),
    (
        b'l LSUB "#news." "comp.mail.*"\r\n',
        List(tag="l", name="LSUB", reference=b"#news.", patterns=(b"comp.mail.*",)),
    ),
    (
        b'l LIST (SUBSCRIBED) "" "*"\r\n',
        List(
            "l", "LIST", reference=b"", patterns=(b"*",), selection=("SUBSCRIBED",), extended=True
        ),
    ),
    (
        b'l LIST () "" "*"\r\n',
        List("l", "LIST", reference=b"", patterns=(b"*",), extended=True),
    ),
    (
        b'l list (subscribed recursivematch) "" % return (children)\r\n',
        List(
            "l",
            "LIST",
            reference=b"",
            patterns=(b"%",),
            selection=("SUBSCRIBED", "RECURSIVEMATCH"),
            returns=("CHILDREN",),
            extended=True,
        ),
    ),
    (
        b'l LIST "" ("INBOX" Drafts {3}\r\nx y)\r\n',
        List("l", "LIST", reference=b"", patterns=(b"INBOX", b"Drafts", b"x y"), extended=True),
    ),
    (
        b'l LIST "" % RETURN (SUBSCRIBED CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n',
        List(
            "l",
            "LIST",
            reference=b"",
            patterns=(b"%",),
            returns=("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"),
            status_items=("MESSAGES", "UNSEEN"),
            extended=True,
        ),
    ),
    (
        b'l LIST (SPECIAL-USE) "" "*" RETURN ()\r\n',
        List(
            "l", "LIST", reference=b"", patterns=(b"*",), selection=("SPECIAL-USE",), extended=True
        ),
    ),
    (
        b"st STATUS blurdybloop (UIDNEXT MESSAGES unseen HIGHESTMODSEQ SIZE RECENT UIDVALIDITY)\r\n",
        Status(
            "st",
            "STATUS",
            mailbox=b"blurdybloop",
            items=(
                "UIDNEXT",
                "MESSAGES",
                "UNSEEN",
                "HIGHESTMODSEQ",
                "SIZE",
                "RECENT",
                "UIDVALIDITY",
            ),
        ),
    ),
    (
        b"ap APPEND INBOX {5}\r\nhello\r\n",
        Append("ap", "APPEND", mailbox=b"INBOX", messages=(AppendMessage((), None, b"hello"),)),
    ),
    (
        b'ap APPEND saved-messages (\\Seen $Work) " 7-Feb-1994 21:52:25 -0800" {5}\r\nhe\r\nl\r\n',
        Append(
            "ap",
            "APPEND",
            mailbox=b"saved-messages",
            messages=(
                AppendMessage(
                    ("\\Seen", "$Work"),
                    datetime.datetime(1994, 2, 7, 21, 52, 25, tzinfo=tz(-480)),
                    b"he\r\nl",
                ),
            ),
        ),
    ),
    (
        b'ap APPEND INBOX "07-feb-1994 01:02:03 +0530" {3+}\r\nabc\r\n',
        Append(
            "ap",
            "APPEND",
            mailbox=b"INBOX",
            messages=(
                AppendMessage((), datetime.datetime(1994, 2, 7, 1, 2, 3, tzinfo=tz(330)), b"abc"),
            ),
        ),
    ),
    (
        b"ap APPEND Drafts (\\draft) {3}\r\none () {3+}\r\ntwo (\\Seen) ~{3}\r\nt\x00o\r\n",
        Append(
            "ap",
            "APPEND",
            mailbox=b"Drafts",
            messages=(
                AppendMessage(("\\Draft",), None, b"one"),
                AppendMessage((), None, b"two"),
                AppendMessage(("\\Seen",), None, b"t\x00o"),
            ),
        ),
    ),
    (
        b"ap APPEND INBOX () {0}\r\n\r\n",
        Append("ap", "APPEND", mailbox=b"INBOX", messages=(AppendMessage((), None, b""),)),
    ),
    (b"n NAMESPACE\r\n", Simple("n", "NAMESPACE")),
    (b"i ID NIL\r\n", Id("i", "ID", params=None)),
    (b"i ID ()\r\n", Id("i", "ID", params=())),
    (
        b'i ID ("name" "sodr" "version" NIL {7}\r\nvendor1 "caf\\"")\r\n',
        Id("i", "ID", params=(("name", "sodr"), ("version", None), ("vendor1", 'caf"'))),
    ),
    (
        b"e ENABLE CONDSTORE qresync utf8=accept\r\n",
        Enable("e", "ENABLE", capabilities=("CONDSTORE", "QRESYNC", "UTF8=ACCEPT")),
    ),
    (b"i IDLE\r\n", Simple("i", "IDLE")),
    (b'q GETQUOTA ""\r\n', MailboxCommand("q", "GETQUOTA", mailbox=b"")),
    (b"q GETQUOTAROOT INBOX\r\n", MailboxCommand("q", "GETQUOTAROOT", mailbox=b"INBOX")),
    (
        b'q SETQUOTA "" (storage 512 MESSAGE 1000)\r\n',
        SetQuota("q", "SETQUOTA", root=b"", limits=(("STORAGE", 512), ("MESSAGE", 1000))),
    ),
    (b"q SETQUOTA x ()\r\n", SetQuota("q", "SETQUOTA", root=b"x", limits=())),
    # RFC 4314 ACL read side
    (b"r MYRIGHTS INBOX\r\n", AclCommand("r", "MYRIGHTS", mailbox=b"INBOX")),
    (b'r GETACL "Shared/x"\r\n', AclCommand("r", "GETACL", mailbox=b"Shared/x")),
    (
        b"r LISTRIGHTS INBOX bob\r\n",
        AclCommand("r", "LISTRIGHTS", mailbox=b"INBOX", identifier=b"bob"),
    ),
    (
        b"r DELETEACL INBOX bob\r\n",
        AclCommand("r", "DELETEACL", mailbox=b"INBOX", identifier=b"bob"),
    ),
    (
        b'r SETACL INBOX bob "+lr"\r\n',
        AclCommand("r", "SETACL", mailbox=b"INBOX", identifier=b"bob", rights=b"+lr"),
    ),
    # RFC 5465 NOTIFY
    (b"n NOTIFY NONE\r\n", Notify("n", "NOTIFY", none=True)),
    (
        b"n NOTIFY SET STATUS (selected (MessageNew (uid) MessageExpunge)) "
        b"(subtree (Lists Work) (MessageNew MessageExpunge FlagChange)) (personal NONE)\r\n",
        Notify(
            "n",
            "NOTIFY",
            status=True,
            groups=(
                EventGroup(
                    "SELECTED",
                    events=frozenset(("MESSAGENEW", "MESSAGEEXPUNGE")),
                    fetch_items=(FetchAttr("UID"),),
                ),
                EventGroup(
                    "SUBTREE",
                    mailboxes=(b"Lists", b"Work"),
                    events=frozenset(("MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE")),
                ),
                EventGroup("PERSONAL"),
            ),
        ),
    ),
    (b"z COMPRESS deflate\r\n", Compress("z", "COMPRESS", mechanism="DEFLATE")),  # RFC 4978
    # selected (§6.4)
    (b"k CHECK\r\n", Simple("k", "CHECK")),
    (b"k CLOSE\r\n", Simple("k", "CLOSE")),
    (b"k UNSELECT\r\n", Simple("k", "UNSELECT")),
    (b"k EXPUNGE\r\n", Simple("k", "EXPUNGE")),
    (
        b"k UID EXPUNGE 3000:3002,*\r\n",
        UidExpunge("k", "EXPUNGE", uid=True, sequence_set=S((3000, 3002), None)),
    ),
    (
        b"f FETCH 1 ALL\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(1),
            items=(FA("FLAGS"), FA("INTERNALDATE"), FA("RFC822.SIZE"), FA("ENVELOPE")),
        ),
    ),
    (
        b"f FETCH 1:* fast\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S((1, None)),
            items=(FA("FLAGS"), FA("INTERNALDATE"), FA("RFC822.SIZE")),
        ),
    ),
    (
        b"f FETCH 2,4:6,*:3 FULL\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(2, (4, 6), (None, 3)),
            items=(FA("FLAGS"), FA("INTERNALDATE"), FA("RFC822.SIZE"), FA("ENVELOPE"), FA("BODY")),
        ),
    ),
    (b"f FETCH * FLAGS\r\n", Fetch("f", "FETCH", sequence_set=S(None), items=(FA("FLAGS"),))),
    (
        b"f FETCH 1 (uid RFC822.SIZE)\r\n",
        Fetch("f", "FETCH", sequence_set=S(1), items=(FA("UID"), FA("RFC822.SIZE"))),
    ),
    (
        b"f FETCH 1 (BODYSTRUCTURE ENVELOPE RFC822 RFC822.HEADER RFC822.TEXT INTERNALDATE MODSEQ BODY)\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(1),
            items=tuple(
                FA(n)
                for n in "BODYSTRUCTURE ENVELOPE RFC822 RFC822.HEADER RFC822.TEXT INTERNALDATE MODSEQ BODY".split()
            ),
        ),
    ),
    (b"f FETCH 1 BODY[]\r\n", Fetch("f", "FETCH", sequence_set=S(1), items=(BS(),))),
    (
        b"f FETCH 1 BODY.PEEK[HEADER]\r\n",
        Fetch("f", "FETCH", sequence_set=S(1), items=(BS(peek=True, kind="HEADER"),)),
    ),
    (
        b"f fetch 1 body[header.fields (From subject)]\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(1),
            items=(BS(kind="HEADER.FIELDS", fields=("FROM", "SUBJECT")),),
        ),
    ),
    (
        b'f FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (Received "X-Spam" {7}\r\nList-Id)] FLAGS)\r\n',
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(1),
            items=(
                BS(peek=True, kind="HEADER.FIELDS.NOT", fields=("RECEIVED", "X-SPAM", "LIST-ID")),
                FA("FLAGS"),
            ),
        ),
    ),
    (
        b"f FETCH 1 (BODY[TEXT] BODY[1.2.MIME] BODY[1.2.3] BODY[2.HEADER] BODY[3.TEXT] BODY[4.HEADER.FIELDS (TO)])\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(1),
            items=(
                BS(kind="TEXT"),
                BS(part=(1, 2), kind="MIME"),
                BS(part=(1, 2, 3)),
                BS(part=(2,), kind="HEADER"),
                BS(part=(3,), kind="TEXT"),
                BS(part=(4,), kind="HEADER.FIELDS", fields=("TO",)),
            ),
        ),
    ),
    (
        b"f FETCH 1 (BODY[]<0.1024> BODY.PEEK[1]<10.20>)\r\n",
        Fetch(
            "f",
            "FETCH",
            sequence_set=S(1),
            items=(BS(partial=(0, 1024)), BS(peek=True, part=(1,), partial=(10, 20))),
        ),
    ),
    (
        b"f FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n",
        Fetch("f", "FETCH", sequence_set=S((1, None)), items=(FA("FLAGS"),), changedsince=12345),
    ),
    (  # a bare PREVIEW then a list: the command's modifiers, not PREVIEW's (RFC 8970)
        b"f FETCH * PREVIEW (CHANGEDSINCE 0)\r\n",
        Fetch("f", "FETCH", sequence_set=S(None), items=(FA("PREVIEW"),), changedsince=0),
    ),
    (
        b"f FETCH 1 PREVIEW (LAZY)\r\n",
        Fetch("f", "FETCH", sequence_set=S(1), items=(FA("PREVIEW"),)),
    ),
    (
        b"f UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
        Fetch(
            "f",
            "FETCH",
            uid=True,
            sequence_set=S((300, 500)),
            items=(FA("FLAGS"),),
            changedsince=12345,
            vanished=True,
        ),
    ),
    (
        b"st STORE 2:4 +FLAGS (\\Deleted)\r\n",
        Store("st", "STORE", sequence_set=S((2, 4)), mode="+", flags=("\\Deleted",)),
    ),
    (
        b"st STORE 1 flags.silent (\\seen \\ANSWERED \\Draft \\flagged \\deleted \\recent $Junk \\Ext)\r\n",
        Store(
            "st",
            "STORE",
            sequence_set=S(1),
            silent=True,
            flags=(
                "\\Seen",
                "\\Answered",
                "\\Draft",
                "\\Flagged",
                "\\Deleted",
                "\\Recent",
                "$Junk",
                "\\Ext",
            ),
        ),
    ),
    (
        b"st STORE * -FLAGS.SILENT \\Seen NonJunk\r\n",
        Store(
            "st", "STORE", sequence_set=S(None), mode="-", silent=True, flags=("\\Seen", "NonJunk")
        ),
    ),
    (b"st STORE 1 FLAGS ()\r\n", Store("st", "STORE", sequence_set=S(1), flags=())),
    (
        b"st STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n",
        Store(
            "st",
            "STORE",
            sequence_set=S(7, 5, 9),
            mode="+",
            silent=True,
            flags=("\\Deleted",),
            unchangedsince=320162338,
        ),
    ),
    (
        b"st UID STORE 1:2 (UNCHANGEDSINCE 0) FLAGS $x\r\n",
        Store("st", "STORE", uid=True, sequence_set=S((1, 2)), flags=("$x",), unchangedsince=0),
    ),
    (b"c COPY 2:4 MEETING\r\n", Copy("c", "COPY", sequence_set=S((2, 4)), mailbox=b"MEETING")),
    (b"c MOVE 1 {5}\r\nTr sh\r\n", Copy("c", "MOVE", sequence_set=S(1), mailbox=b"Tr sh")),
    (
        b"c UID COPY 1:* Archive\r\n",
        Copy("c", "COPY", uid=True, sequence_set=S((1, None)), mailbox=b"Archive"),
    ),
    (
        b'c uid move 4,5 "Junk"\r\n',
        Copy("c", "MOVE", uid=True, sequence_set=S(4, 5), mailbox=b"Junk"),
    ),
    (b"s SEARCH ALL\r\n", Search("s", "SEARCH", criteria=All())),
    (
        b's SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n',
        Search(
            "s",
            "SEARCH",
            criteria=And(
                (
                    Flag("\\Flagged"),
                    Date("internal", "since", datetime.date(1994, 2, 1)),
                    Not(Header("from", "Smith", address=True)),
                )
            ),
        ),
    ),
    (
        b"s SEARCH CHARSET utf-8 TEXT {6}\r\nX\xc3\xa9XXX\r\n",
        Search("s", "SEARCH", charset="UTF-8", criteria=Text("TEXT", "X\u00e9XXX")),
    ),
    (
        b"s SEARCH OR SEEN (DELETED 1:5) UNDRAFT\r\n",
        Search(
            "s",
            "SEARCH",
            criteria=And(
                (
                    Or(Flag("\\Seen"), And((Flag("\\Deleted"), Seq(S((1, 5)))))),
                    Flag("\\Draft", False),
                )
            ),
        ),
    ),
    (
        b"s SEARCH ANSWERED DELETED DRAFT RECENT UNANSWERED UNDELETED UNFLAGGED UNSEEN\r\n",
        Search(
            "s",
            "SEARCH",
            criteria=And(
                (
                    Flag("\\Answered"),
                    Flag("\\Deleted"),
                    Flag("\\Draft"),
                    Flag("\\Recent"),
                    Flag("\\Answered", False),
                    Flag("\\Deleted", False),
                    Flag("\\Flagged", False),
                    Flag("\\Seen", False),
                )
            ),
        ),
    ),
    (b"s SEARCH NEW\r\n", Search("s", "SEARCH", criteria=NEW)),
    # RFC 5256 SORT and THREAD, RFC 5267 ESORT/PARTIAL, RFC 5957 display keys
    (
        b"o SORT (REVERSE date Subject) UTF-8 ALL\r\n",
        Sort(
            "o",
            "SORT",
            program=(SortCriterion("DATE", True), SortCriterion("SUBJECT")),
            criteria=All(),
        ),
    ),
    (
        b"o UID SORT RETURN (MIN COUNT PARTIAL 1:50) (DISPLAYFROM) us-ascii SEEN 1:3\r\n",
        Sort(
            "o",
            "SORT",
            uid=True,
            program=(SortCriterion("DISPLAYFROM"),),
            charset="US-ASCII",
            criteria=And((Flag("\\Seen"), Seq(SequenceSet((SeqRange(1, 3),))))),
            returns=("MIN", "COUNT", "PARTIAL"),
            partial=(1, 50),
        ),
    ),
    # RFC 5267 §4: CONTEXT=SEARCH/SORT (UPDATE, CONTEXT as a hint, PARTIAL, CANCELUPDATE)
    (
        b"c SEARCH RETURN (UPDATE CONTEXT COUNT PARTIAL 9:3) FLAGGED\r\n",
        Search(
            "c",
            "SEARCH",
            criteria=Flag("\\Flagged"),
            returns=("UPDATE", "COUNT", "PARTIAL"),
            partial=(3, 9),
        ),
    ),
    (b"c SEARCH RETURN (CONTEXT) ALL\r\n", Search("c", "SEARCH", criteria=All(), returns=("ALL",))),
    (
        b"c UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL\r\n",
        Sort(
            "c",
            "SORT",
            uid=True,
            program=(SortCriterion("SUBJECT"),),
            criteria=All(),
            returns=("UPDATE",),
        ),
    ),
    (b'u CANCELUPDATE "c" "d1"\r\n', CancelUpdate("u", "CANCELUPDATE", tags=("c", "d1"))),
    (
        b"t THREAD REFERENCES UTF-8 UNDELETED\r\n",
        Thread("t", "THREAD", criteria=Flag("\\Deleted", False)),
    ),
    (
        b"t UID THREAD orderedsubject UTF-8 ALL\r\n",
        Thread("t", "THREAD", uid=True, algorithm="ORDEREDSUBJECT", criteria=All()),
    ),
    (b"s SEARCH old\r\n", Search("s", "SEARCH", criteria=Not(Flag("\\Recent")))),
    (b"s SEARCH (SEEN)\r\n", Search("s", "SEARCH", criteria=Flag("\\Seen"))),
    (
        b's SEARCH BEFORE "1-Feb-2024" ON 29-feb-2024 SENTBEFORE 01-Jan-2000 SENTON 2-Mar-2001 SENTSINCE "31-Dec-1999"\r\n',
        Search(
            "s",
            "SEARCH",
            criteria=And(
                (
                    Date("internal", "before", datetime.date(2024, 2, 1)),
                    Date("internal", "on", datetime.date(2024, 2, 29)),
                    Date("sent", "before", datetime.date(2000, 1, 1)),
                    Date("sent", "on", datetime.date(2001, 3, 2)),
                    Date("sent", "since", datetime.date(1999, 12, 31)),
                )
            ),
        ),
    ),
    (
        b's SEARCH HEADER Message-ID <x@y> BCC b CC {1}\r\nc TO "" SUBJECT subj BODY "two words"\r\n',
        Search(
            "s",
            "SEARCH",
            criteria=And(
                (
                    Header("message-id", "<x@y>"),
                    Header("bcc", "b", address=True),
                    Header("cc", "c", address=True),
                    Header("to", "", address=True),
                    Header("subject", "subj"),
                    Text("BODY", "two words"),
                )
            ),
        ),
    ),
    (
        b"s SEARCH KEYWORD $Work UNKEYWORD Junk KEYWORD \\seen LARGER 100 SMALLER 20000000000\r\n",
        Search(
            "s",
            "SEARCH",
            criteria=And(
                (
                    Flag("$Work"),
                    Flag("Junk", False),
                    Flag("\\Seen"),
                    Size("larger", 100),
                    Size("smaller", 20000000000),
                )
            ),
        ),
    ),
    (
        b"s UID SEARCH UID 1:* 2,4:*\r\n",
        Search("s", "SEARCH", uid=True, criteria=And((Uid(S((1, None))), Seq(S(2, (4, None)))))),
    ),
    (b"s SEARCH MODSEQ 620162338\r\n", Search("s", "SEARCH", criteria=ModSeq(620162338))),
    (
        b's SEARCH MODSEQ "/flags/\\\\draft" all 620162338 SEEN\r\n',
        Search("s", "SEARCH", criteria=And((ModSeq(620162338), Flag("\\Seen")))),
    ),
    (
        b"s SEARCH RETURN (MIN MAX) UNSEEN\r\n",
        Search("s", "SEARCH", criteria=Flag("\\Seen", False), returns=("MIN", "MAX")),
    ),
    (b"s SEARCH RETURN () ALL\r\n", Search("s", "SEARCH", criteria=All(), returns=("ALL",))),
    (
        b"s UID SEARCH RETURN (COUNT ALL) CHARSET US-ASCII NOT NOT (OR 1 2 3)\r\n",
        Search(
            "s",
            "SEARCH",
            uid=True,
            charset="US-ASCII",
            returns=("COUNT", "ALL"),
            criteria=Not(Not(And((Or(Seq(S(1)), Seq(S(2))), Seq(S(3)))))),
        ),
    ),
]


def _fixture_id(fixture: tuple[bytes, Command]) -> str:
    return fixture[0].split(b"\r\n")[0][:50].decode("ascii", "replace")


@pytest.mark.parametrize("wire,expected", FIXTURES, ids=[_fixture_id(f) for f in FIXTURES])
def test_fixture_parses_the_same_whole_bytewise_and_as_a_waiting_client(wire, expected):
    """Each fixture gives exactly the expected command, however the bytes arrive, and a
    ContinuationNeeded exactly once per synchronizing literal, right after its line."""
    sync_literals = len(re.findall(rb"\{[0-9]+\}\r\n", wire))
    for events in (whole(wire), bytewise(wire)):
        assert commands(events) == [expected]
        assert sum(isinstance(e, ContinuationNeeded) for e in events) == sync_literals
    assert commands(as_client(wire)) == [expected]
    assert commands(as_client(wire, one_byte=True)) == [expected]


def test_fixture_table_covers_every_command_word():
    """The table has at least one fixture per command the parser knows."""
    names = {(c.uid, c.name) for _, c in FIXTURES}
    for name in grammar._COMMANDS:
        assert (False, name) in names, name
    for name in grammar._UID_COMMANDS:
        assert (True, name) in names, name


def test_all_fixtures_pipelined_in_one_chunk_parse_in_order():
    """Pipelining (RFC 3501 §5.5): every fixture back to back in one chunk."""
    stream = b"".join(w for w, _ in FIXTURES)
    assert commands(whole(stream)) == [c for _, c in FIXTURES]


def test_all_fixtures_pipelined_in_random_chunks_parse_in_order():
    stream = b"".join(w for w, _ in FIXTURES)
    rnd = random.Random(1234)
    cuts = sorted(rnd.sample(range(1, len(stream)), 200))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert commands(feed(chunks)) == [c for _, c in FIXTURES]


def test_need_data_until_the_line_is_complete():
    p = CommandParser()
    p.receive_data(b"a NOOP")
    assert p.next_event() is NEED_DATA
    p.receive_data(b"\r")
    assert p.next_event() is NEED_DATA
    p.receive_data(b"\n")
    assert p.next_event() == Simple("a", "NOOP")
    assert p.next_event() is NEED_DATA


def test_bare_lf_and_blank_lines_between_commands_are_tolerated():
    assert whole(b"\r\n\na NOOP\n\r\nb NOOP\r\n") == [Simple("a", "NOOP"), Simple("b", "NOOP")]


def test_events_are_produced_lazily_one_per_call():
    """Nothing past the returned command is parsed yet, so the server can change mode
    (raw line, utf8_accept) between two pipelined commands."""
    p = CommandParser()
    p.receive_data(b'a ENABLE UTF8=ACCEPT\r\nb SELECT "Bo\xc3\xaete"\r\n')
    assert p.next_event() == Enable("a", "ENABLE", capabilities=("UTF8=ACCEPT",))
    p.utf8_accept = True
    assert p.next_event() == Select("b", "SELECT", mailbox="Boîte".encode())


# ---- raw lines -------------------------------------------------------------------------


def test_idle_done_is_read_as_a_raw_line_then_commands_resume():
    p = CommandParser()
    p.receive_data(b"a IDLE\r\nDONE\r\nb NOOP\r\n")
    assert p.next_event() == Simple("a", "IDLE")
    p.read_raw_line()
    assert p.next_event() == RawLine(b"DONE")
    assert p.next_event() == Simple("b", "NOOP")


def test_raw_line_waits_for_its_line_and_keeps_literal_like_text():
    """A raw line is not parsed at all: a trailing {5} is not a literal, and an empty
    line (an empty SASL response) is a RawLine too."""
    p = CommandParser()
    p.read_raw_line()
    p.receive_data(b"dGVzdA== {5}")
    assert p.next_event() is NEED_DATA
    p.receive_data(b"\r\n\r\nc NOOP\r\n")
    assert p.next_event() == RawLine(b"dGVzdA== {5}")
    p.read_raw_line()
    assert p.next_event() == RawLine(b"")
    assert p.next_event() == Simple("c", "NOOP")


def test_authenticate_exchange_with_raw_continuation_responses():
    p = CommandParser()
    p.receive_data(b"a AUTHENTICATE PLAIN\r\n")
    assert p.next_event() == Authenticate("a", "AUTHENTICATE", mechanism="PLAIN")
    p.read_raw_line()
    assert p.next_event() is NEED_DATA
    p.receive_data(b"*\r\n")
    assert p.next_event() == RawLine(b"*")
    assert p.next_event() is NEED_DATA


def test_raw_line_longer_than_the_limit_is_fatal():
    p = CommandParser(max_line_length=20)
    p.read_raw_line()
    p.receive_data(b"x" * 30)
    ev = p.next_event()
    assert isinstance(ev, ParseError) and ev.fatal


# ---- literals ------------------------------------------------------------------------------


def test_continuation_is_announced_once_and_parsing_continues_after_the_bytes():
    p = CommandParser()
    p.receive_data(b"a LOGIN {5}\r\n")
    assert p.next_event() == ContinuationNeeded(5)
    assert p.next_event() is NEED_DATA
    assert p.next_event() is NEED_DATA
    p.receive_data(b"ali")
    assert p.next_event() is NEED_DATA
    p.receive_data(b"ce {2}\r\n")
    assert p.next_event() == ContinuationNeeded(2)
    p.receive_data(b"pw\r\n")
    assert p.next_event() == Login("a", "LOGIN", user=b"alice", password=b"pw")


def test_non_synchronizing_literals_need_no_continuation():
    """RFC 7888 LITERAL+: {n+} bytes follow at once."""
    events = whole(b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n")
    assert events == [Login("a", "LOGIN", user=b"alice", password=b"pw")]


def test_literal_bytes_are_opaque():
    """CRLF, braces, quotes and NUL inside a literal are data, not syntax."""
    data = b'x\r\n{3}\r\n") \x00 \xff'
    events = whole(b"a LOGIN u {%d+}\r\n%s\r\n" % (len(data), data))
    assert events == [Login("a", "LOGIN", user=b"u", password=data)]


def test_a_command_already_wrong_before_its_literal_gets_no_continuation():
    """RFC 3501 §7.5: BAD instead of "+", so the client never sends the literal and
    the next line is a new command."""
    p = CommandParser()
    p.receive_data(b"a NOOP {3}\r\n")
    ev = p.next_event()
    assert isinstance(ev, ParseError) and ev.tag == "a" and not ev.fatal
    assert "NOOP" in ev.message
    p.receive_data(b"b NOOP\r\n")
    assert p.next_event() == Simple("b", "NOOP")


def test_literal8_is_refused_outside_append():
    events = whole(b"a LOGIN ~{1+}\r\nx y\r\nb NOOP\r\n")
    assert isinstance(events[0], ParseError) and "literal8" in events[0].message
    assert events[1] == Simple("b", "NOOP")


# ---- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_crlf", [False, True])
def test_line_over_the_limit_is_fatal_and_input_is_dropped_afterwards(with_crlf):
    p = CommandParser(max_line_length=100)
    p.receive_data(b"a SEARCH " + b"x" * 200 + (b"\r\n" if with_crlf else b""))
    ev = p.next_event()
    assert isinstance(ev, ParseError) and ev.fatal and "line" in ev.message
    assert p.failed
    p.receive_data(b"b NOOP\r\n")
    assert p.next_event() is NEED_DATA
    assert p.buffered_size == 0


def test_line_exactly_at_the_limit_is_accepted():
    line = b"a LOGIN u " + b"p" * 90
    assert len(line) == 100
    assert bytewise(line + b"\r\n", max_line_length=100) == [
        Login("a", "LOGIN", user=b"u", password=b"p" * 90)
    ]


def test_synchronizing_literal_over_the_limit_is_refused_with_toobig_and_parsing_goes_on():
    """The client gets NO [TOOBIG] instead of "+", so it never sends the bytes."""
    events = whole(b"a APPEND INBOX {2000}\r\nb NOOP\r\n", max_literal_size=1000)
    assert events == [
        ParseError("a", events[0].message, code="TOOBIG", fatal=False, status="NO"),
        Simple("b", "NOOP"),
    ]


def test_non_synchronizing_literal_over_the_limit_is_fatal():
    events = whole(b"a APPEND INBOX {2000+}\r\n" + b"x" * 2000, max_literal_size=1000)
    assert len(events) == 1
    assert events[0].fatal and events[0].code == "TOOBIG"


def test_command_over_the_size_limit_is_skipped_whole_then_refused():
    """Non-synchronizing literals of a refused command are skipped without storing
    them; the error comes when the command ends, then the next command parses."""
    stream = b"a APPEND INBOX {60+}\r\n" + b"x" * 60 + b" {60+}\r\n" + b"y" * 60 + b"\r\nb NOOP\r\n"
    for events in (whole(stream, max_command_size=100), bytewise(stream, max_command_size=100)):
        assert events[0].code == "TOOBIG" and events[0].status == "NO" and not events[0].fatal
        assert events[0].tag == "a"
        assert events[1:] == [Simple("b", "NOOP")]


def test_command_over_the_size_limit_at_a_synchronizing_literal_is_refused_at_once():
    events = whole(
        b"a APPEND INBOX {60+}\r\n" + b"x" * 60 + b" {60}\r\nb NOOP\r\n", max_command_size=100
    )
    assert events[0].code == "TOOBIG" and not events[0].fatal
    assert events[1:] == [Simple("b", "NOOP")]


def test_too_many_literals_in_one_command_is_refused():
    stream = b"a LOGIN {1+}\r\nx {1+}\r\ny\r\nb NOOP\r\n"
    events = whole(stream, max_literals=1)
    assert events[0].code == "LIMIT" and not events[0].fatal
    assert events[1:] == [Simple("b", "NOOP")]


def test_nesting_too_deep_is_bad_and_the_rest_of_the_command_is_skipped_even_with_literals():
    deep = b"(" * 40 + b"SUBJECT {3+}\r\nfoo" + b")" * 40
    stream = b"a SEARCH " + deep + b" OR {2+}\r\nab SEEN\r\nb NOOP\r\n"
    for events in (whole(stream), bytewise(stream)):
        assert events[0].tag == "a" and events[0].status == "BAD" and events[0].code == "LIMIT"
        assert not events[0].fatal and "nested" in events[0].message
        assert events[1:] == [Simple("b", "NOOP")]


def test_nesting_too_deep_before_a_synchronizing_literal_is_refused_before_the_continuation():
    stream = b"a SEARCH " + b"(" * 40 + b"SUBJECT {3}\r\nb NOOP\r\n"
    events = as_client(stream)
    assert events[0].code == "LIMIT" and not events[0].fatal
    assert events[1:] == [Simple("b", "NOOP")]


def test_nesting_at_the_limit_is_accepted():
    stream = b"a SEARCH " + b"(" * 5 + b"SEEN" + b")" * 5 + b"\r\n"
    assert whole(stream, max_nesting=5) == [Search("a", "SEARCH", criteria=Flag("\\Seen"))]
    assert whole(stream, max_nesting=4)[0].code == "LIMIT"


def test_search_recursion_is_bounded_without_recursion_error():
    stream = b"a SEARCH " + b"NOT " * 5000 + b"ALL\r\nb SEARCH " + b"OR ALL " * 5000 + b"ALL\r\n"
    events = whole(stream)
    assert [e.code for e in events] == ["LIMIT", "LIMIT"]
    ok = whole(b"a SEARCH " + b"NOT " * (MAX_SEARCH_DEPTH - 1) + b"ALL\r\n")
    assert isinstance(ok[0], Search)


def _depth(criteria) -> int:
    """The criteria tree's depth, counted as the store's check counts it."""
    if isinstance(criteria, And):
        return 1 + max(_depth(k) for k in criteria.keys)
    if isinstance(criteria, Or):
        return 1 + max(_depth(criteria.left), _depth(criteria.right))
    if isinstance(criteria, Not):
        return 1 + _depth(criteria.key)
    return 1


@pytest.mark.parametrize(
    "program",
    [
        pytest.param(lambda n: b"NOT " * (n - 1) + b"SEEN", id="NOT chain"),
        pytest.param(lambda n: b"OR SEEN " * (n - 1) + b"SEEN", id="OR chain"),
        pytest.param(lambda n: b"NOT " * (n - 2) + b"OLD", id="OLD is a NOT"),
        pytest.param(lambda n: b"NOT " * (n - 2) + b"SEEN DRAFT", id="implicit AND"),
        pytest.param(lambda n: b"NOT " * (n - 2) + b"(SEEN DRAFT)", id="group"),
    ],
)
def test_search_depth_limit_is_the_stores_and_the_parser_refuses_one_more(program):
    """One SEARCH depth limit, the store's: a program exactly that deep parses (and the
    store's own check would take it), one level deeper is a tagged BAD [LIMIT] saying why."""
    assert CommandParser().max_search_depth == MAX_SEARCH_DEPTH == 40
    at_limit = whole(b"a SEARCH " + program(MAX_SEARCH_DEPTH) + b"\r\n")
    assert isinstance(at_limit[0], Search)
    assert _depth(at_limit[0].criteria) == MAX_SEARCH_DEPTH
    check_size(at_limit[0].criteria)  # the store takes it
    [over] = whole(b"a SEARCH " + program(MAX_SEARCH_DEPTH + 1) + b"\r\n")
    assert isinstance(over, ParseError) and not over.fatal
    assert (over.tag, over.status, over.code) == ("a", "BAD", "LIMIT")
    assert over.message == f"SEARCH: search keys nested deeper than {MAX_SEARCH_DEPTH}"


def test_too_many_sequence_ranges_is_refused_and_parsing_goes_on():
    many = b",".join(b"%d" % i for i in range(1, 12))
    events = whole(
        b"a FETCH " + many + b" FLAGS\r\nb FETCH 1,2,3 FLAGS\r\n", max_sequence_ranges=10
    )
    assert events[0].tag == "a" and events[0].code == "LIMIT" and not events[0].fatal
    assert events[1] == Fetch("b", "FETCH", sequence_set=S(1, 2, 3), items=(FA("FLAGS"),))
    ten = b",".join(b"%d" % i for i in range(1, 11))
    assert isinstance(
        whole(b"a UID EXPUNGE " + ten + b"\r\n", max_sequence_ranges=10)[0], UidExpunge
    )


# The default parser stops exactly at each named module constant: at the limit a
# command parses, one over it is refused (the refusals are checked above with small limits;
# the SEARCH depth edge, the store's MAX_SEARCH_DEPTH, is checked above too).


def _refused(events: list) -> bool:
    return isinstance(events[0], ParseError)


def test_default_line_limit_is_max_line_length():
    line = b"a LOGIN u " + b"p" * (framing.MAX_LINE_LENGTH - 10)
    assert len(line) == framing.MAX_LINE_LENGTH
    assert whole(line + b"\r\n") == [Login("a", "LOGIN", user=b"u", password=line[10:])]
    over = whole(line + b"p\r\n")
    assert _refused(over) and over[0].fatal


def test_default_literal_limit_is_max_literal_size():
    limit = framing.MAX_LITERAL_SIZE
    assert whole(b"a APPEND INBOX {%d}\r\n" % limit) == [ContinuationNeeded(limit)]
    over = whole(b"a APPEND INBOX {%d}\r\n" % (limit + 1))
    assert _refused(over) and over[0].code == "TOOBIG" and not over[0].fatal


def test_default_command_limit_is_max_command_size():
    """A first literal of the largest size, then a second announced so that the command
    is exactly MAX_COMMAND_SIZE octets long (or one more)."""
    limit = framing.MAX_LITERAL_SIZE
    head = b"a APPEND INBOX {%d+}\r\n" % limit
    digits = len(str(limit))
    room = framing.MAX_COMMAND_SIZE - len(head) - limit - len(b" {}\r\n") - digits
    assert len(str(room)) == len(str(room + 1)) == digits
    for second, accepted in ((room, True), (room + 1, False)):
        p = CommandParser()
        p.receive_data(head)
        p.receive_data(bytes(limit))
        assert p.next_event() is NEED_DATA
        p.receive_data(b" {%d}\r\n" % second)
        event = p.next_event()
        if accepted:
            assert event == ContinuationNeeded(second)
        else:
            assert isinstance(event, ParseError) and event.code == "TOOBIG" and not event.fatal


def test_default_literal_count_limit_is_max_literals():
    def append(count: int) -> bytes:
        return b"a APPEND INBOX" + b" {1+}\r\nx" * count + b"\r\n"

    assert isinstance(whole(append(framing.MAX_LITERALS))[0], Append)
    over = whole(append(framing.MAX_LITERALS + 1))
    assert _refused(over) and over[0].code == "LIMIT"


def test_default_nesting_limit_is_max_nesting():
    def search(depth: int) -> bytes:
        return b"a SEARCH " + b"(" * depth + b"SEEN" + b")" * depth + b"\r\n"

    limit = framing.MAX_NESTING
    assert whole(search(limit)) == [Search("a", "SEARCH", criteria=Flag("\\Seen"))]
    assert whole(search(limit + 1))[0].code == "LIMIT"


def test_default_sequence_range_limit_is_max_sequence_ranges():
    def fetch(ranges: int) -> bytes:
        return b"a FETCH " + b",".join(b"%d" % (2 * i + 1) for i in range(ranges)) + b" FLAGS\r\n"

    assert isinstance(whole(fetch(framing.MAX_SEQUENCE_RANGES))[0], Fetch)
    assert whole(fetch(framing.MAX_SEQUENCE_RANGES + 1))[0].code == "LIMIT"


# ---- errors ---------------------------------------------------------------------------------

ERRORS = [
    # (wire, tag, words the message must contain, code, status)
    (b"a XYZZY\r\n", "a", "unknown command XYZZY", None, "BAD"),
    (b"+ NOOP\r\n", None, "tag", None, "BAD"),
    (b"a\r\n", "a", "command name", None, "BAD"),
    (b"a NOOP extra\r\n", "a", "NOOP: expected the end of the command", None, "BAD"),
    (b"a FETCH\r\n", "a", "FETCH: expected a sequence set", None, "BAD"),
    (b"a FETCH x FLAGS\r\n", "a", "FETCH: expected a sequence set", None, "BAD"),
    (b"a FETCH 0 FLAGS\r\n", "a", "0 is not valid", None, "BAD"),
    (b"a FETCH 1:0 FLAGS\r\n", "a", "0 is not valid", None, "BAD"),
    (b"a FETCH 4294967296 FLAGS\r\n", "a", "larger than", None, "BAD"),
    (b"a FETCH 1,,2 FLAGS\r\n", "a", "sequence set", None, "BAD"),
    (b"a FETCH 1\r\n", "a", "FETCH: expected fetch items", None, "BAD"),
    (b"a FETCH 1 FOO\r\n", "a", "unknown fetch attribute FOO", None, "BAD"),
    (b"a FETCH 1 (FLAGS ALL)\r\n", "a", "macro ALL", None, "BAD"),
    (b"a FETCH 1 ()\r\n", "a", "fetch items", None, "BAD"),
    (b"a FETCH 1 BODY[MIME]\r\n", "a", "MIME needs a part number", None, "BAD"),
    (b"a FETCH 1 BODY[0]\r\n", "a", "part numbers", None, "BAD"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]\r\n", "a", "header field names", None, "BAD"),
    (b"a FETCH 1 BODY[HEADER.FIELDS (a:b)]\r\n", "a", "invalid header field name", None, "BAD"),
    (b"a FETCH 1 BODY[FOO]\r\n", "a", "unknown section FOO", None, "BAD"),
    (b"a FETCH 1 BODY[]<0.0>\r\n", "a", "octet count", None, "BAD"),
    # RFC 3516 §4.2: BINARY takes part numbers only (BINARY[] itself is valid since BINARY)
    (b"a FETCH 1 BINARY[HEADER]\r\n", "a", "BINARY takes part numbers only", None, "BAD"),
    (b"a FETCH 1 BINARY.SIZE\r\n", "a", "BINARY needs a section", None, "BAD"),
    (b"a FETCH 1 BODY.PEEK\r\n", "a", "BODY.PEEK needs a section", None, "BAD"),
    (b"a FETCH 1 FLAGS (VANISHED)\r\n", "a", "only allowed with UID FETCH", None, "BAD"),
    (
        b"a UID FETCH 1 FLAGS (VANISHED)\r\n",
        "a",
        "UID FETCH: VANISHED needs CHANGEDSINCE",
        None,
        "BAD",
    ),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE x)\r\n", "a", "mod-sequence", None, "BAD"),
    (b"a STORE 1 FLAGS (\\*)\r\n", "a", "STORE: expected", None, "BAD"),
    (b"a STORE 1 XFLAGS (\\Seen)\r\n", "a", "FLAGS, +FLAGS or -FLAGS", None, "BAD"),
    (b"a STORE 1 (UNCHANGEDSINCE -1) FLAGS x\r\n", "a", "mod-sequence", None, "BAD"),
    (b"a STORE 1 FLAGS\r\n", "a", "expected flags", None, "BAD"),
    (b"a SELECT\r\n", "a", "SELECT: expected a mailbox name", None, "BAD"),
    (b"a SELECT INBOX (FOO)\r\n", "a", "unknown select parameter FOO", None, "BAD"),
    (b"a SELECT INBOX (QRESYNC (0 1))\r\n", "a", "UIDVALIDITY", None, "BAD"),
    (b"a CREATE x (USE (Sent))\r\n", "a", "special-use attribute", None, "BAD"),
    (b"a CREATE x (FOO)\r\n", "a", "unknown create parameter", None, "BAD"),
    (b'a LIST (BOGUS) "" *\r\n', "a", "unknown selection option BOGUS", None, "BAD"),
    (b'a LIST (RECURSIVEMATCH) "" *\r\n', "a", "RECURSIVEMATCH", None, "BAD"),
    (b'a LIST "" * RETURN (FOO)\r\n', "a", "unknown return option FOO", None, "BAD"),
    (b'a LIST "" * STUFF\r\n', "a", "RETURN", None, "BAD"),
    (b'a LSUB "" (a b)\r\n', "a", "LSUB: expected a mailbox pattern", None, "BAD"),
    (b"a STATUS INBOX (FOO)\r\n", "a", "unknown status item FOO", None, "BAD"),
    (b"a STATUS INBOX ()\r\n", "a", "status items", None, "BAD"),
    (b"a APPEND INBOX\r\n", "a", "APPEND: expected a message literal", None, "BAD"),
    (b'a APPEND INBOX "hello"\r\n', "a", "date-time", None, "BAD"),
    (
        b'a APPEND INBOX "31-Feb-2020 00:00:00 +0000" {1+}\r\nx\r\n',
        "a",
        "invalid date-time",
        None,
        "BAD",
    ),
    (
        b'a APPEND INBOX "01-Feb-2020 00:00:00 +2400" {1+}\r\nx\r\n',
        "a",
        "invalid date-time",
        None,
        "BAD",
    ),
    (b"a SEARCH\r\n", "a", "SEARCH: expected search criteria", None, "BAD"),
    (b"a SEARCH FOO\r\n", "a", "unknown search key FOO", None, "BAD"),
    (b"a SEARCH CHARSET KOI8-R ALL\r\n", "a", "charset", "BADCHARSET (US-ASCII UTF-8)", "NO"),
    # RFC 5182 SAVE is a return option since SEARCHRES; an unknown one is still BAD
    (b"a SEARCH RETURN (KEEP) ALL\r\n", "a", "unknown search return option KEEP", None, "BAD"),
    (b"a SEARCH RETURN (PARTIAL 1:5 ALL) ALL\r\n", "a", "PARTIAL conflicts with ALL", None, "BAD"),
    (b"a SORT RETURN (ALL PARTIAL 1:5) (ARRIVAL) UTF-8 ALL\r\n", "a", "conflicts", None, "BAD"),
    (b"a SEARCH RETURN (PARTIAL 0:5) ALL\r\n", "a", "partial range", None, "BAD"),
    (b"a CANCELUPDATE\r\n", "a", "tag of a search context", None, "BAD"),
    (b"a CANCELUPDATE c\r\n", "a", "quoted", None, "BAD"),
    (b"a SEARCH BEFORE 31-Feb-2024\r\n", "a", "invalid date", None, "BAD"),
    (b"a SEARCH BEFORE 1-Fbr-2024\r\n", "a", "invalid date", None, "BAD"),
    (b"a SEARCH SINCE yesterday\r\n", "a", "expected a date", None, "BAD"),
    (b"a SEARCH SUBJECT {2+}\r\n\xff\xfe\r\n", "a", "not valid UTF-8", None, "BAD"),
    (b"a SEARCH OR SEEN\r\n", "a", "second search key", None, "BAD"),
    (b"a SEARCH (SEEN\r\n", "a", "search key", None, "BAD"),
    (b"a SEARCH SEEN)\r\n", "a", "space before a search key", None, "BAD"),
    (b"a SEARCH $:3\r\n", "a", "space before a search key", None, "BAD"),  # RFC 5182: "$" alone
    (b"a UID FOO 1\r\n", "a", "not a UID command", None, "BAD"),
    (b"a UID\r\n", "a", "UID", None, "BAD"),
    (b'a LOGIN "caf\xe9" x\r\n', "a", "not valid UTF-8", None, "BAD"),
    (b'a LOGIN "unterminated\r\n', "a", "no closing quote", None, "BAD"),
    (b'a LOGIN "bad\\escape" x\r\n', "a", "escaped", None, "BAD"),
    (b'a LOGIN "ctl\x01\x7f\x00" x\r\n', "a", "control character", None, "BAD"),
    (b"a LOGIN x\r\n", "a", "LOGIN: expected a password", None, "BAD"),
    (b"a AUTHENTICATE PLAIN !!!\r\n", "a", "base64", None, "BAD"),
    (b"a ENABLE\r\n", "a", "ENABLE: expected a capability name", None, "BAD"),
    (b'a ID ("a")\r\n', "a", "ID field value", None, "BAD"),
    (b"a ID FOO\r\n", "a", "NIL", None, "BAD"),
    (b"a SETQUOTA x (STORAGE)\r\n", "a", "limit", None, "BAD"),
    (b"a COPY 1\r\n", "a", "COPY: expected a mailbox name", None, "BAD"),
]


@pytest.mark.parametrize(
    "wire,tag,words,code,status", ERRORS, ids=[e[0][:40].decode("latin-1") for e in ERRORS]
)
def test_error_is_reported_with_a_helpful_message_and_parsing_goes_on(
    wire, tag, words, code, status
):
    """Each malformed command gives one non-fatal ParseError naming what was expected;
    the next command still parses."""
    stream = wire + b"z NOOP\r\n"
    for events in (whole(stream), bytewise(stream)):
        assert len(events) == 2, events
        err = events[0]
        assert isinstance(err, ParseError)
        assert err.tag == tag
        assert words in err.message
        assert (err.code, err.status, err.fatal) == (code, status, False)
        assert events[1] == Simple("z", "NOOP")


@pytest.mark.parametrize("utf8_accept", [False, True])
def test_quoted_utf8_is_accepted_and_must_be_valid(utf8_accept):
    """RFC 6855 §3: after ENABLE UTF8=ACCEPT quoted strings may hold UTF-8; before it,
    popgate accepts valid UTF-8 in quoted strings too (as Dovecot does: clients send
    ``SEARCH CHARSET UTF-8 SUBJECT "..."``). Invalid UTF-8 is BAD either way."""
    p = CommandParser()
    p.utf8_accept = utf8_accept
    p.receive_data(b'a LOGIN "caf\xc3\xa9" x\r\nb LOGIN "caf\xe9" x\r\n')
    assert p.next_event() == Login("a", "LOGIN", user="café".encode(), password=b"x")
    err = p.next_event()
    assert isinstance(err, ParseError) and "UTF-8" in err.message


def test_a_bug_in_the_grammar_becomes_a_non_fatal_parse_error(monkeypatch):
    def broken(reader):
        raise KeyError("boom")

    monkeypatch.setattr(framing, "read_command", broken)
    events = whole(b"a NOOP\r\nb NOOP\r\n")
    assert [(e.tag, e.fatal) for e in events] == [("a", False), ("b", False)]


def test_a_bug_in_the_framing_becomes_a_fatal_parse_error(monkeypatch):
    def broken(self):
        raise KeyError("boom")

    p = CommandParser()
    monkeypatch.setattr(p, "_take_line", broken.__get__(p))
    p.receive_data(b"a NOOP\r\n")
    ev = p.next_event()
    assert isinstance(ev, ParseError) and ev.fatal
    assert p.next_event() is NEED_DATA


# ---- round trips of generated commands -----------------------------------------------------

_ASTRING_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")
_LIST_RE = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e]+")
_QUOTABLE_RE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_QUOTABLE_UTF8_RE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\xff]*")
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class Writer:
    """Test-side serializer: writes a Command in IMAP syntax, choosing at random among
    the equivalent spellings (atom / quoted / literal of each kind, keyword case)."""

    def __init__(self, rnd: random.Random, utf8: bool) -> None:
        self.rnd = rnd
        self.utf8 = utf8

    def word(self, w: str) -> bytes:
        return self.rnd.choice([w.upper(), w.lower(), w.capitalize(), w]).encode()

    def literal(self, b: bytes, binary_ok: bool = False) -> bytes:
        kinds = ["{%d}", "{%d+}"] + (["~{%d}", "~{%d+}"] if binary_ok else [])
        return (self.rnd.choice(kinds) % len(b)).encode() + b"\r\n" + b

    def quoted(self, b: bytes) -> bytes:
        return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    def string(self, b: bytes) -> bytes:
        quotable = _QUOTABLE_RE.fullmatch(b) or (
            self.utf8 and _QUOTABLE_UTF8_RE.fullmatch(b) and _valid_utf8(b)
        )
        if quotable and self.rnd.random() < 0.7:
            return self.quoted(b)
        return self.literal(b)

    def astring(self, b: bytes) -> bytes:
        if _ASTRING_RE.fullmatch(b) and self.rnd.random() < 0.6:
            return b
        return self.string(b)

    def list_mailbox(self, b: bytes) -> bytes:
        if _LIST_RE.fullmatch(b) and self.rnd.random() < 0.6:
            return b
        return self.string(b)

    def text(self, s: str) -> bytes:
        return self.astring(s.encode())

    def seqset(self, s: SequenceSet) -> bytes:
        def num(n):
            return b"*" if n is None else b"%d" % n

        if s.saved:  # RFC 5182 "$"
            return b"$"
        return b",".join(
            num(r.start) if r.start == r.end else num(r.start) + b":" + num(r.end) for r in s.ranges
        )

    def flag(self, f: str) -> bytes:
        if f in SYSTEM_FLAGS:
            return b"\\" + self.word(f[1:])
        return f.encode()

    def flags(self, flags: tuple[str, ...]) -> bytes:
        return b"(" + b" ".join(self.flag(f) for f in flags) + b")"

    def date(self, d: datetime.date) -> bytes:
        day = str(d.day) if self.rnd.random() < 0.5 else f"{d.day:02d}"
        text = f"{day}-{self.word(_MONTHS[d.month - 1]).decode()}-{d.year:04d}".encode()
        return b'"' + text + b'"' if self.rnd.random() < 0.5 else text

    def date_time(self, dt: datetime.datetime) -> bytes:
        day = f"{dt.day:2d}" if self.rnd.random() < 0.5 else f"{dt.day:02d}"
        minutes = int(dt.utcoffset().total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
        return (
            f'"{day}-{_MONTHS[dt.month - 1]}-{dt.year:04d} '
            f'{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {zone}"'
        ).encode()

    def criteria(self, c, top: bool = False) -> bytes:
        w = self.word
        if isinstance(c, And):
            inner = b" ".join(self.criteria(k) for k in c.keys)
            return inner if top and self.rnd.random() < 0.5 else b"(" + inner + b")"
        if isinstance(c, All):
            return w("ALL")
        if isinstance(c, Or):
            return w("OR") + b" " + self.criteria(c.left) + b" " + self.criteria(c.right)
        if isinstance(c, Not):
            return w("NOT") + b" " + self.criteria(c.key)
        if isinstance(c, Flag):
            names = {
                "\\Answered": "ANSWERED",
                "\\Deleted": "DELETED",
                "\\Draft": "DRAFT",
                "\\Flagged": "FLAGGED",
                "\\Seen": "SEEN",
            }
            if c.flag in names:
                return w(names[c.flag] if c.present else "UN" + names[c.flag])
            if c.flag == "\\Recent" and c.present:
                return w("RECENT")
            return w("KEYWORD" if c.present else "UNKEYWORD") + b" " + self.flag(c.flag)
        if isinstance(c, Header):
            if c.address or (c.field == "subject" and self.rnd.random() < 0.7):
                return w(c.field) + b" " + self.text(c.value)
            return w("HEADER") + b" " + self.text(c.field) + b" " + self.text(c.value)
        if isinstance(c, Text):
            return w(c.where) + b" " + self.text(c.value)
        if isinstance(c, Date):
            word = {"before": "BEFORE", "on": "ON", "since": "SINCE"}[c.op]
            if c.field != "internal":
                word = ("SENT" if c.field == "sent" else "SAVED") + word
            return w(word) + b" " + self.date(c.date)
        if isinstance(c, Within):
            return w(c.op.upper()) + b" %d" % c.seconds
        if isinstance(c, EmailId):
            return w("EMAILID") + b" " + c.value.encode()
        if isinstance(c, Size):
            return w(c.op) + b" %d" % c.size
        if isinstance(c, Seq):
            return self.seqset(c.set)
        if isinstance(c, Uid):
            return w("UID") + b" " + self.seqset(c.set)
        if isinstance(c, ModSeq):
            ext = b'"/flags/\\\\Seen" all ' if self.rnd.random() < 0.3 else b""
            return w("MODSEQ") + b" " + ext + b"%d" % c.modseq
        raise AssertionError(c)

    def fetch_item(self, item) -> bytes:
        if isinstance(item, FetchAttr):
            if item.name == "PREVIEW" and self.rnd.random() < 0.3:
                return self.word("PREVIEW") + b" (" + self.word("LAZY") + b")"
            return self.word(item.name)
        if isinstance(item, BinarySection):
            word = "BINARY.SIZE" if item.size_only else "BINARY.PEEK" if item.peek else "BINARY"
            text = self.word(word) + b"[" + ".".join(str(p) for p in item.part).encode() + b"]"
            return text + (b"<%d.%d>" % item.partial if item.partial else b"")
        text = self.word("BODY.PEEK" if item.peek else "BODY") + b"["
        spec = [".".join(str(p) for p in item.part)] if item.part else []
        if item.kind:
            spec.append(item.kind)
        text += self.word(".".join(spec)) if spec else b""
        if item.fields:
            text += b" (" + b" ".join(self.astring(f.encode()) for f in item.fields) + b")"
        text += b"]"
        if item.partial:
            text += b"<%d.%d>" % item.partial
        return text

    def command(self, c: Command) -> bytes:
        w = self.word
        head = c.tag.encode() + b" " + (w("UID") + b" " if c.uid else b"") + w(c.name)
        sp = b" "
        if isinstance(c, Simple):
            return head
        if isinstance(c, Login):
            return head + sp + self.astring(c.user) + sp + self.astring(c.password)
        if isinstance(c, Authenticate):
            out = head + sp + w(c.mechanism)
            return out + sp + c.initial_response if c.initial_response is not None else out
        if isinstance(c, Select):
            params = []
            if c.condstore:
                params.append(w("CONDSTORE"))
            if c.qresync:
                q = c.qresync
                inner = b"%d %d" % (q.uidvalidity, q.modseq)
                if q.known_uids:
                    inner += sp + self.seqset(q.known_uids)
                if q.seq_match:
                    inner += (
                        b" ("
                        + self.seqset(q.seq_match[0])
                        + sp
                        + self.seqset(q.seq_match[1])
                        + b")"
                    )
                params.append(w("QRESYNC") + b" (" + inner + b")")
            self.rnd.shuffle(params)
            out = head + sp + self.astring(c.mailbox)
            return out + b" (" + b" ".join(params) + b")" if params else out
        if isinstance(c, Create):
            out = head + sp + self.astring(c.mailbox)
            if c.special_use or self.rnd.random() < 0.2:
                out += b" (" + w("USE") + b" " + self.flags(c.special_use) + b")"
            return out
        if isinstance(c, MailboxCommand):
            return head + sp + self.astring(c.mailbox)
        if isinstance(c, Rename):
            return head + sp + self.astring(c.old) + sp + self.astring(c.new)
        if isinstance(c, List):
            out = head
            show_sel = bool(c.selection) or (c.extended and self.rnd.random() < 0.5)
            show_pat = len(c.patterns) > 1 or (c.extended and self.rnd.random() < 0.5)
            show_ret = bool(c.returns or c.status_items) or (c.extended and self.rnd.random() < 0.5)
            if c.extended and not (show_sel or show_pat or show_ret):
                show_sel = True
            if show_sel:
                out += b" (" + b" ".join(w(s) for s in c.selection) + b")"
            out += sp + self.astring(c.reference) + sp
            pats = b" ".join(self.list_mailbox(p) for p in c.patterns)
            out += b"(" + pats + b")" if show_pat else pats
            if show_ret:
                opts = [w(r) for r in c.returns]
                if c.status_items:
                    status = w("STATUS") + b" (" + b" ".join(w(s) for s in c.status_items) + b")"
                    opts.insert(self.rnd.randint(0, len(opts)), status)
                out += sp + w("RETURN") + b" (" + b" ".join(opts) + b")"
            return out
        if isinstance(c, Status):
            return (
                head
                + sp
                + self.astring(c.mailbox)
                + b" ("
                + b" ".join(w(i) for i in c.items)
                + b")"
            )
        if isinstance(c, Append):
            out = head + sp + self.astring(c.mailbox)
            for m in c.messages:
                if m.flags or self.rnd.random() < 0.3:
                    out += sp + self.flags(m.flags)
                if m.date is not None:
                    out += sp + self.date_time(m.date)
                if m.catenate is not None:  # RFC 4469 §5
                    parts = [
                        w("URL") + sp + self.astring(part.data)
                        if part.kind == "URL"
                        else w("TEXT") + sp + self.literal(part.data, binary_ok=True)
                        for part in m.catenate
                    ]
                    out += sp + w("CATENATE") + b" (" + b" ".join(parts) + b")"
                elif m.utf8:  # RFC 6855 §4
                    out += sp + w("UTF8") + b" (~{%d}\r\n" % len(m.data) + m.data + b")"
                else:
                    out += sp + self.literal(m.data, binary_ok=True)
            return out
        if isinstance(c, Fetch):
            items = [self.fetch_item(i) for i in c.items]
            out = head + sp + self.seqset(c.sequence_set) + sp
            out += (
                items[0]
                if len(items) == 1 and self.rnd.random() < 0.5
                else b"(" + b" ".join(items) + b")"
            )
            if c.changedsince is not None:
                mods = [w("CHANGEDSINCE") + b" %d" % c.changedsince] + (
                    [w("VANISHED")] if c.vanished else []
                )
                self.rnd.shuffle(mods)
                out += b" (" + b" ".join(mods) + b")"
            return out
        if isinstance(c, Store):
            out = head + sp + self.seqset(c.sequence_set) + sp
            if c.unchangedsince is not None:
                out += b"(" + w("UNCHANGEDSINCE") + b" %d) " % c.unchangedsince
            out += c.mode.encode() + w("FLAGS") + (w(".SILENT") if c.silent else b"") + sp
            if c.flags and self.rnd.random() < 0.5:
                return out + b" ".join(self.flag(f) for f in c.flags)
            return out + self.flags(c.flags)
        if isinstance(c, Search):
            out = head
            if c.returns is not None:
                options = [
                    w(r) + (b" %d:%d" % c.partial if r == "PARTIAL" and c.partial else b"")
                    for r in c.returns
                ]
                out += sp + w("RETURN") + b" (" + b" ".join(options) + b")"
            if c.charset is not None:
                out += sp + w("CHARSET") + sp + self.astring(self.word(c.charset))
            return out + sp + self.criteria(c.criteria, top=True)
        if isinstance(c, Copy):
            return head + sp + self.seqset(c.sequence_set) + sp + self.astring(c.mailbox)
        if isinstance(c, UidExpunge):
            return head + sp + self.seqset(c.sequence_set)
        if isinstance(c, Enable):
            return head + sp + b" ".join(w(x) for x in c.capabilities)
        if isinstance(c, Id):
            if c.params is None:
                return head + sp + w("NIL")
            pairs = [
                self.string(k.encode()) + sp + (w("NIL") if v is None else self.string(v.encode()))
                for k, v in c.params
            ]
            return head + b" (" + b" ".join(pairs) + b")"
        if isinstance(c, SetQuota):
            limits = b" ".join(w(r) + b" %d" % n for r, n in c.limits)
            return head + sp + self.astring(c.root) + b" (" + limits + b")"
        raise AssertionError(c)


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- strategies --

tags = st.from_regex(r"[A-Za-z0-9.\-_\[\]]{1,8}", fullmatch=True)
names = st.binary(max_size=12) | st.sampled_from(
    [b"INBOX", b"Sent Items", b"a/b", b"NIL", b"", b"&Jjo-"]
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
seq_numbers = st.none() | st.integers(1, 2**32 - 1)
seq_ranges = st.one_of(
    seq_numbers.map(lambda n: SeqRange(n, n)),
    st.builds(SeqRange, seq_numbers, seq_numbers),
)
seqsets = st.lists(seq_ranges, min_size=1, max_size=5).map(
    lambda r: SequenceSet(tuple(r))
) | st.just(SequenceSet((), saved=True))
keywords = st.from_regex(r"\$?[A-Za-z][A-Za-z0-9_\-]{0,8}", fullmatch=True)
extension_flags = st.from_regex(r"\\[A-Za-z]{1,8}", fullmatch=True).filter(
    lambda f: f.lower() not in {s.lower() for s in SYSTEM_FLAGS}
)
flags = st.sampled_from(SYSTEM_FLAGS) | keywords | extension_flags
modseqs = st.integers(0, 2**63 - 1)
atoms_upper = st.from_regex(r"[A-Z][A-Z0-9=\-]{0,10}", fullmatch=True)


def _dates():
    return st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(9999, 12, 31))


search_leaves = st.one_of(
    st.just(All()),
    st.builds(Flag, flags, st.booleans()),
    st.builds(
        lambda field, value: Header(field, value, address=True),
        st.sampled_from(["from", "to", "cc", "bcc"]),
        texts,
    ),
    st.builds(Header, st.sampled_from(["from", "to", "cc", "bcc", "subject"]), texts),
    st.builds(Header, st.from_regex(r"[a-z][a-z0-9\-]{0,10}", fullmatch=True), texts),
    st.builds(Text, st.sampled_from(["BODY", "TEXT"]), texts),
    st.builds(
        Date,
        st.sampled_from(["internal", "sent", "saved"]),
        st.sampled_from(["before", "on", "since"]),
        _dates(),
    ),
    st.builds(Within, st.sampled_from(["older", "younger"]), st.integers(1, 2**32 - 1)),
    st.builds(EmailId, st.from_regex(r"M[0-9a-f]{24}|[A-Za-z0-9_\-]{1,20}", fullmatch=True)),
    st.builds(Size, st.sampled_from(["larger", "smaller"]), st.integers(0, 2**63 - 1)),
    st.builds(Seq, seqsets),
    st.builds(Uid, seqsets),
    st.builds(ModSeq, modseqs),
)
search_criteria = st.recursive(
    search_leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda k: And(tuple(k))),
        st.builds(Or, inner, inner),
        st.builds(Not, inner),
    ),
    max_leaves=8,
)

field_names = st.from_regex(r"[A-Z0-9][A-Z0-9\-]{0,10}", fullmatch=True)


@st.composite
def body_sections(draw):
    part = tuple(draw(st.lists(st.integers(1, 2**32 - 1), max_size=3)))
    kinds = ["", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"] + (
        ["MIME"] if part else []
    )
    kind = draw(st.sampled_from(kinds))
    fields = ()
    if kind.startswith("HEADER.FIELDS"):
        fields = tuple(draw(st.lists(field_names, min_size=1, max_size=3)))
    partial = draw(st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1)))
    return BodySection(
        peek=draw(st.booleans()), part=part, kind=kind, fields=fields, partial=partial
    )


binary_sections = st.builds(
    lambda peek, part, partial, size_only: BinarySection(
        peek=peek and not size_only,
        part=tuple(part),
        partial=None if size_only else partial,
        size_only=size_only,
    ),
    st.booleans(),
    st.lists(st.integers(1, 2**32 - 1), max_size=3),
    st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1)),
    st.booleans(),
)
fetch_items = (
    st.builds(FetchAttr, st.sampled_from(sorted(FETCH_ATTRS))) | body_sections() | binary_sections
)


@st.composite
def fetches(draw):
    uid = draw(st.booleans())
    changedsince = draw(st.none() | modseqs)
    vanished = uid and changedsince is not None and draw(st.booleans())
    return Fetch(
        tag=draw(tags),
        name="FETCH",
        uid=uid,
        sequence_set=draw(seqsets),
        items=tuple(draw(st.lists(fetch_items, min_size=1, max_size=4))),
        changedsince=changedsince,
        vanished=vanished,
    )


@st.composite
def stores(draw):
    return Store(
        tag=draw(tags),
        name="STORE",
        uid=draw(st.booleans()),
        sequence_set=draw(seqsets),
        mode=draw(st.sampled_from(["", "+", "-"])),
        silent=draw(st.booleans()),
        flags=tuple(draw(st.lists(flags, max_size=4))),
        unchangedsince=draw(st.none() | modseqs),
    )


def _ascii_strings(node: object) -> bool:
    """Whether every string inside a criteria tree is US-ASCII."""
    if isinstance(node, str):
        return node.isascii()
    if isinstance(node, tuple):
        return all(_ascii_strings(n) for n in node)
    if dataclasses.is_dataclass(node):
        return all(_ascii_strings(getattr(node, f.name)) for f in dataclasses.fields(node))
    return True


@st.composite
def searches(draw):
    # PARTIAL carries a range (drawn below); CONTEXT, a hint, is not kept by the parser.
    plain_options = sorted(SEARCH_RETURN_OPTIONS - {"PARTIAL", "CONTEXT"})
    returns = draw(st.none() | st.lists(st.sampled_from(plain_options), min_size=1, max_size=4))
    partial = None
    if returns is not None and draw(st.booleans()):
        low, high = draw(st.integers(1, 2**32 - 1)), draw(st.integers(1, 2**32 - 1))
        partial = (min(low, high), max(low, high))
        returns = [r for r in returns if r != "ALL"] + ["PARTIAL"]  # RFC 5267 §4.4
    criteria = draw(search_criteria)
    charset = draw(st.sampled_from([None, "US-ASCII", "UTF-8"]))
    if charset == "US-ASCII" and not _ascii_strings(criteria):
        charset = "UTF-8"  # 8-bit strings under CHARSET US-ASCII are BAD (issue 17)
    return Search(
        tag=draw(tags),
        name="SEARCH",
        uid=draw(st.booleans()),
        charset=charset,
        criteria=criteria,
        returns=None if returns is None else tuple(returns),
        partial=partial,
    )


@st.composite
def selects(draw):
    qresync = None
    if draw(st.booleans()):
        qresync = QResync(
            uidvalidity=draw(st.integers(1, 2**32 - 1)),
            modseq=draw(st.integers(1, 2**63 - 1)),
            known_uids=draw(st.none() | seqsets),
            seq_match=draw(st.none() | st.tuples(seqsets, seqsets)),
        )
    return Select(
        tag=draw(tags),
        name=draw(st.sampled_from(["SELECT", "EXAMINE"])),
        mailbox=draw(names),
        condstore=draw(st.booleans()),
        qresync=qresync,
    )


@st.composite
def lists(draw):
    name = draw(st.sampled_from(["LIST", "LSUB"]))
    extended = name == "LIST" and draw(st.booleans())
    if not extended:
        return List(tag=draw(tags), name=name, reference=draw(names), patterns=(draw(names),))
    selection = draw(st.lists(st.sampled_from(["SUBSCRIBED", "REMOTE", "SPECIAL-USE"]), max_size=2))
    if selection and draw(st.booleans()):
        selection.append("RECURSIVEMATCH")
    if (
        "SUBSCRIBED" not in selection
        and "SPECIAL-USE" not in selection
        and "RECURSIVEMATCH" in selection
    ):
        selection.remove("RECURSIVEMATCH")
    return List(
        tag=draw(tags),
        name=name,
        reference=draw(names),
        patterns=tuple(draw(st.lists(names, min_size=1, max_size=3))),
        selection=tuple(selection),
        returns=tuple(draw(st.lists(st.sampled_from(sorted(LIST_RETURN_OPTIONS)), max_size=3))),
        status_items=tuple(draw(st.lists(st.sampled_from(sorted(STATUS_ITEMS)), max_size=3))),
        extended=True,
    )


datetimes = st.builds(
    lambda dt, offset: dt.replace(microsecond=0, tzinfo=tz(offset)),
    st.datetimes(
        min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2100, 12, 31)
    ),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)


cat_parts = st.builds(CatenatePart, st.just("TEXT"), st.binary(max_size=20)) | st.builds(
    CatenatePart, st.just("URL"), st.sampled_from([b"/INBOX;UIDVALIDITY=7/;UID=3", b";UID=1"])
)
append_messages = st.one_of(
    st.builds(
        AppendMessage,
        st.lists(flags, max_size=3).map(tuple),
        st.none() | datetimes,
        st.binary(max_size=30),
    ),
    st.builds(  # RFC 6855 §4 UTF8 (~{n})
        AppendMessage,
        st.lists(flags, max_size=3).map(tuple),
        st.none() | datetimes,
        st.binary(max_size=30),
        utf8=st.just(True),
    ),
    st.builds(  # RFC 4469 CATENATE
        AppendMessage,
        st.lists(flags, max_size=3).map(tuple),
        st.none() | datetimes,
        st.just(b""),
        catenate=st.lists(cat_parts, min_size=1, max_size=3).map(tuple),
    ),
)


@st.composite
def appends(draw):
    messages = draw(st.lists(append_messages, min_size=1, max_size=3))
    return Append(tag=draw(tags), name="APPEND", mailbox=draw(names), messages=tuple(messages))


others = st.one_of(
    st.builds(Simple, tags, st.sampled_from(sorted(grammar._SIMPLE_COMMANDS))),
    st.builds(Login, tag=tags, name=st.just("LOGIN"), user=names, password=names),
    st.builds(
        Authenticate,
        tag=tags,
        name=st.just("AUTHENTICATE"),
        mechanism=atoms_upper,
        initial_response=st.none()
        | st.binary(max_size=20).map(lambda b: base64.b64encode(b) or b"="),
    ),
    st.builds(
        Create,
        tag=tags,
        name=st.just("CREATE"),
        mailbox=names,
        special_use=st.lists(st.sampled_from(SPECIAL_USES), max_size=3).map(tuple),
    ),
    st.builds(
        MailboxCommand,
        tag=tags,
        name=st.sampled_from(sorted(grammar._MAILBOX_COMMANDS)),
        mailbox=names,
    ),
    st.builds(Rename, tag=tags, name=st.just("RENAME"), old=names, new=names),
    st.builds(
        Status,
        tag=tags,
        name=st.just("STATUS"),
        mailbox=names,
        items=st.lists(st.sampled_from(sorted(STATUS_ITEMS)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Copy,
        tag=tags,
        name=st.sampled_from(["COPY", "MOVE"]),
        uid=st.booleans(),
        sequence_set=seqsets,
        mailbox=names,
    ),
    st.builds(
        UidExpunge, tag=tags, name=st.just("EXPUNGE"), uid=st.just(True), sequence_set=seqsets
    ),
    st.builds(
        Enable,
        tag=tags,
        name=st.just("ENABLE"),
        capabilities=st.lists(atoms_upper, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(
        Id,
        tag=tags,
        name=st.just("ID"),
        params=st.none() | st.lists(st.tuples(texts, st.none() | texts), max_size=3).map(tuple),
    ),
    st.builds(
        SetQuota,
        tag=tags,
        name=st.just("SETQUOTA"),
        root=names,
        limits=st.lists(st.tuples(atoms_upper, st.integers(0, 2**63 - 1)), max_size=3).map(tuple),
    ),
)

all_commands = st.one_of(fetches(), stores(), searches(), selects(), lists(), appends(), others)


def _same(parsed: list, expected: list) -> bool:
    """Dataclass equality, plus APPEND date offsets (aware datetimes compare instants)."""
    if parsed != expected:
        return False
    for p, e in zip(parsed, expected, strict=True):
        if isinstance(e, Append):
            for pm, em in zip(p.messages, e.messages, strict=True):
                if em.date is not None and pm.date.utcoffset() != em.date.utcoffset():
                    return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(all_commands, min_size=1, max_size=3), st.randoms(use_true_random=False), st.booleans()
)
def test_generated_commands_round_trip_through_serialise_and_parse(cmds, rnd, utf8):
    """parse(serialise(x)) == x for generated commands, pipelined, with any chunking and
    with the spelling of each value chosen at random."""
    writer = Writer(rnd, utf8)
    stream = b"".join(writer.command(c) + b"\r\n" for c in cmds)
    sync_literals = len(re.findall(rb"(?<!~)\{[0-9]+\}\r\n|~\{[0-9]+\}\r\n", stream))
    cuts = sorted(rnd.sample(range(1, len(stream)), min(8, len(stream) - 1)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    p = CommandParser()
    p.utf8_accept = utf8
    events = feed([stream], parser=p)
    assert _same(commands(events), list(cmds)), (stream, events)
    assert sum(isinstance(e, ContinuationNeeded) for e in events) == sync_literals
    p2 = CommandParser()
    p2.utf8_accept = utf8
    assert feed(chunks, parser=p2) == events


@settings(max_examples=40, deadline=None)
@given(all_commands, st.randoms(use_true_random=False))
def test_generated_command_as_a_waiting_client_byte_by_byte(cmd, rnd):
    stream = Writer(rnd, False).command(cmd) + b"\r\n"
    assert _same(commands(as_client(stream, one_byte=True)), [cmd])


# ---- robustness ----------------------------------------------------------------------------

SMALL = dict(
    max_line_length=64,
    max_literal_size=100,
    max_command_size=300,
    max_literals=5,
    max_nesting=4,
    max_search_depth=8,
    max_sequence_ranges=4,
)
BOUND = SMALL["max_line_length"] + 2 + SMALL["max_command_size"]


def _check_robust(chunks: list[bytes], utf8: bool = False) -> list:
    """Feed chunk by chunk: nothing raises, every event has a known type, and the memory
    held never exceeds one line plus one command."""
    p = CommandParser(**SMALL)
    p.utf8_accept = utf8
    events = []
    for chunk in chunks:
        p.receive_data(chunk)
        new = drain(p, limit=len(chunk) + 10)
        events.extend(new)
        assert p.buffered_size <= BOUND
    for e in events:
        assert isinstance(e, Command | ContinuationNeeded | ParseError | RawLine)
    fatal = [i for i, e in enumerate(events) if isinstance(e, ParseError) and e.fatal]
    assert fatal in ([], [len(events) - 1])
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8), st.booleans())
def test_arbitrary_bytes_never_raise_never_hang_and_stay_bounded(chunks, utf8):
    _check_robust(chunks, utf8)


_SEEDS = [w for w, _ in FIXTURES] + [e[0] for e in ERRORS]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_SEEDS), min_size=1, max_size=3),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.binary(min_size=0, max_size=4)),
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_mutated_valid_commands_never_raise_and_stay_bounded(seeds, mutations, rnd):
    """Deleting, inserting and replacing bytes in real commands exercises the grammar's
    error paths deep inside commands, with literals and limits in play."""
    data = bytearray(b"".join(seeds))
    for pos, op, blob in mutations:
        pos %= len(data) + 1
        if op == 0:
            del data[pos : pos + len(blob) + 1]
        elif op == 1:
            data[pos:pos] = blob
        elif op == 2:
            data[pos : pos + len(blob)] = blob
        else:
            data[pos:pos] = rnd.choice(
                [b"(", b")", b"{5}\r\n", b"{3+}\r\n", b'"', b"\\", b"\r\n", b" "]
            )
    data = bytes(data)
    cuts = sorted(rnd.sample(range(1, len(data)), min(5, len(data) - 1))) if len(data) > 1 else []
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    events = _check_robust(chunks)
    # Chunking never changes what is parsed.
    p = CommandParser(**SMALL)
    assert feed([data], parser=p) == events


def test_parser_recovers_after_a_run_of_different_errors():
    stream = (
        b"a FETCH 0 FLAGS\r\n"
        b"b SEARCH (((((SEEN)))))\r\n"
        b"c FETCH 1,2,3,4,5 FLAGS\r\n"
        b"d APPEND INBOX {500}\r\n"
        b"e LOGIN {5+}\r\nx\r\ny) {9+}\r\nnot bytes\r\n"
        b"f NOOP\r\n"
    )
    events = whole(stream, **SMALL)
    assert [e.tag for e in events] == ["a", "b", "c", "d", "e", "f"]
    assert [getattr(e, "code", None) for e in events[:4]] == [None, "LIMIT", "LIMIT", "TOOBIG"]
    assert events[-1] == Simple("f", "NOOP")
