"""Fuzzing a whole in-process IMAP connection (parser, session, handlers, store, glue):
random command streams, split at random points, and randomly mutated byte streams.

Properties (mox's fuzz test drives its whole server the same way):

* no exception escapes: no ``imap.internal_error``, no parser internal error, no
  ``NO [SERVERBUG]``;
* no hang: after the input ends, the connection is waiting for input, closed, or in
  IDLE; nothing is left half-done with no timer to finish it;
* bounded memory: the parser never holds more than its documented bound;
* bounded matching: every LIST/LSUB pattern automaton (gateway/imap/listpattern.py) stays
  within MAX_PATTERN_STATES, reads each name at most once per command, and does at most
  (len(name) + 1) × words of work per name, whatever the (wildcard-heavy) patterns;
* well-formed streams: every complete command gets exactly one tagged reply, in order,
  up to the point where the server closes the connection.

The server runs over a ``StringTransport`` on a ``task.Clock`` with the memory store and
the cheap test authenticator (gateway/testing/auth.py), so an example costs milliseconds. ``POPGATE_FUZZ_EXAMPLES``
raises the number of examples for a long run (see README.md, "Fuzzing").
"""

from __future__ import annotations

import base64
import os
import re

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task

from gateway.imap.handler import ReadLine
from gateway.imap.policy import IMAPLimits
from gateway.store.memory import MemoryStore
from gateway.testing.imapsession import WiredServer
from gateway.testing.listwork import assert_linear, counting

EXAMPLES = int(os.environ.get("POPGATE_FUZZ_EXAMPLES", "200"))
"""Examples per property; the long run sets POPGATE_FUZZ_EXAMPLES=100000 or so."""

SETTLE_WINDOW = 20.0
"""Fake-clock seconds the driver lets pass after each chunk: enough for login delays
(at most 15 s) and reactor turns, less than any inactivity timeout."""

MAX_SETTLE_STEPS = 200

LIMITS = IMAPLimits(
    max_line_length=2048,
    max_literal_size=8192,
    max_literals=8,
    max_nesting=8,
    max_search_depth=12,
    max_sequence_ranges=50,
    max_pipelined_commands=7,
    max_prelogin_literal_size=1024,
)

USER, PASSWORD = "alice", "pw"
INTERNAL_EVENTS = {"imap.internal_error", "imap_parser_internal_error"}

_MESSAGE = (
    b"From: bob@example.com\r\nTo: alice@example.com\r\nSubject: fuzz\r\n"
    b"Message-ID: <f@example.com>\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
)


TREE = ("Foo/Bar/Baz", "Foo/Qux", "INBOX/Sub/Deep", "aaaaaaaaaaaaaaaaaaaa")
"""Mailboxes (and subscriptions) beyond the defaults, for patterns to walk."""


def connect() -> WiredServer:
    clock = task.Clock()
    store = MemoryStore(clock=clock.seconds)
    store.ensure_user(USER)
    for name in TREE:
        store.create_mailbox(USER, name)
        store.set_subscribed(USER, name, True)
    inbox = store.get_mailbox(USER, "INBOX")
    for flags in ([], ["\\Seen"], ["\\Flagged", "\\Deleted"]):
        store.append(inbox.id, _MESSAGE, flags)
    return WiredServer(store, clock=clock, passwords={USER: PASSWORD}, limits=LIMITS, penalty=True)


def settle(conn: WiredServer) -> None:
    """Run due timers (reactor turns, login delays) but no inactivity timeout."""
    clock = conn.clock
    for _ in range(MAX_SETTLE_STEPS):
        now = clock.seconds()
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() - now <= SETTLE_WINDOW]
        if not due:
            return
        clock.advance(max(0.0, min(due) - now))


def drive(chunks: list[bytes]) -> tuple[WiredServer, bytes, list[dict]]:
    conn = connect()
    with structlog.testing.capture_logs() as events, counting() as automata:
        for chunk in chunks:
            if conn.transport.disconnecting:
                break
            conn.protocol.dataReceived(chunk)
            settle(conn)
            assert (
                conn.protocol.parser.buffered_size
                <= (LIMITS.max_line_length + 2 + LIMITS.max_command_size + len(chunk))
                or conn.protocol._current is not None
            )
        assert_quiescent(conn)
        conn.protocol.connectionLost(None)
    assert_linear(automata)
    return conn, conn.transport.value(), events


def assert_quiescent(conn: WiredServer) -> None:
    """No hang: the connection is closed, or idle between commands, or a command waits
    on the client (IDLE's DONE, a SASL response); it never waits on nothing."""
    protocol = conn.protocol
    if conn.transport.disconnecting or protocol._current is None:
        return
    assert protocol._idling or isinstance(protocol._waiting, ReadLine), protocol._waiting


def assert_no_internal_error(output: bytes, events: list[dict]) -> None:
    bad = [e for e in events if e.get("event") in INTERNAL_EVENTS or e.get("kind") == "internal"]
    assert not bad, bad
    assert b"[SERVERBUG]" not in output


# ---- generated command streams -------------------------------------------------------

_seq = st.one_of(
    st.sampled_from(["1", "2", "3", "*", "1:*", "2:3", "3:1", "0", "4294967295", "1,3,2"]),
    st.integers(0, 5).map(str),
)
_flag = st.sampled_from(["\\Seen", "\\Deleted", "\\Flagged", "$Junk", "\\Answered", "\\Draft"])
_mailbox = st.sampled_from(["INBOX", "Foo", "Foo/Bar", '"Trash"', "&AMk-t&AOk-", '""', "inbox"])
_fetch_att = st.sampled_from(
    [
        "FLAGS",
        "UID",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "BODY",
        "RFC822.SIZE",
        "INTERNALDATE",
        "BODY.PEEK[]",
        "BODY[1]",
        "BODY[1.MIME]",
        "BODY[HEADER.FIELDS (Subject From)]",
        "BODY.PEEK[TEXT]<0.5>",
        "BINARY.PEEK[1]",
        "MODSEQ",
        "FAST",
        "ALL",
    ]
)
_search_key = st.sampled_from(
    [
        "ALL",
        "SEEN",
        "UNSEEN",
        "DELETED",
        "FROM bob",
        'SUBJECT "fu"',
        "BODY hello",
        "LARGER 10",
        "SINCE 1-Jan-1990",
        "UID 1:*",
        "2:*",
        "OR SEEN FLAGGED",
        "NOT NEW",
        "(SEEN UNDELETED)",
        "KEYWORD $Junk",
        "HEADER Message-ID f",
        "MODSEQ 1",
    ]
)


def _literal(data: bytes, plus: bool) -> str:
    marker = "+" if plus else ""
    return f"{{{len(data)}{marker}}}\r\n" + data.decode("latin-1")


def _sasl(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


_pattern_text = st.lists(
    st.sampled_from(["%", "*", "%", "*", "%*", "*%", "a", "F", "o", "/", "I", "n", "x", "q"]),
    max_size=40,
).map("".join)
"""Wildcard-heavy LIST patterns (the red team's ``%*%*...q`` is one of them)."""


def _astring(text: str, literal: bool) -> str:
    return _literal(text.encode(), plus=True) if literal else f'"{text}"'


_pattern = st.builds(_astring, _pattern_text, st.booleans())
_reference = st.sampled_from(['""', '""', '"Foo"', '"Foo/"', '"INBOX/"', '"%"', '"*/"'])
_listing = st.one_of(
    st.builds(lambda r, p: f"LIST {r} {p}", _reference, _pattern),
    st.builds(lambda r, p: f"LSUB {r} {p}", _reference, _pattern),
    st.builds(
        lambda sel, r, ps, ret: f"LIST ({sel}) {r} ({' '.join(ps)}){ret}",
        st.sampled_from(["", "SUBSCRIBED", "SUBSCRIBED RECURSIVEMATCH", "SPECIAL-USE"]),
        _reference,
        st.lists(_pattern, min_size=1, max_size=4),
        st.sampled_from(["", " RETURN (CHILDREN)", " RETURN (SUBSCRIBED STATUS (MESSAGES))"]),
    ),
    st.builds(lambda p: f"SUBSCRIBE {p}", _pattern),
)
"""LIST, LSUB, LIST-EXTENDED (RFC 5258) with generated patterns, and SUBSCRIBE of them."""

_FIXED = st.sampled_from(
    [
        "CAPABILITY",
        "NOOP",
        "CHECK",
        "NAMESPACE",
        "ID NIL",
        'ID ("name" "fuzz")',
        "ENABLE CONDSTORE",
        "ENABLE QRESYNC",
        "EXPUNGE",
        "CLOSE",
        "UNSELECT",
        "STARTTLS",
        f"LOGIN {USER} {PASSWORD}",
        f"LOGIN {USER} wrong",
        "LOGIN nobody nothing",
        f"AUTHENTICATE PLAIN {_sasl(USER, PASSWORD)}",
        f"AUTHENTICATE PLAIN {_sasl(USER, 'nope')}",
        f"AUTHENTICATE PLAIN\r\n{_sasl(USER, PASSWORD)}",
        "AUTHENTICATE PLAIN\r\n*",
        "AUTHENTICATE PLAIN =",
        "AUTHENTICATE CRAM-MD5",
        'LIST "" *',
        'LIST "" %',
        'LIST (SPECIAL-USE) "" * RETURN (STATUS (MESSAGES))',
        'LSUB "" *',
        "GETQUOTAROOT INBOX",
        "IDLE\r\nDONE",
        "XYZZY",
        "FETCH",
        "UID",
        "SEARCH CHARSET KOI8-R ALL",
    ]
)
"""Commands with fixed text, drawn as often as all the generated kinds together."""

_simple = st.one_of(
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _FIXED,
    _listing,
    _listing,
    _listing,
    st.builds(lambda m: f"SELECT {m}", _mailbox),
    st.builds(lambda m: f"EXAMINE {m}", _mailbox),
    st.builds(lambda m: f"CREATE {m}", _mailbox),
    st.builds(lambda m: f"DELETE {m}", _mailbox),
    st.builds(lambda a, b: f"RENAME {a} {b}", _mailbox, _mailbox),
    st.builds(lambda m: f"SUBSCRIBE {m}", _mailbox),
    st.builds(lambda m: f"STATUS {m} (MESSAGES UNSEEN UIDNEXT SIZE)", _mailbox),
    st.builds(
        lambda uid, s, atts: f"{uid}FETCH {s} ({' '.join(atts)})",
        st.sampled_from(["", "UID "]),
        _seq,
        st.lists(_fetch_att, min_size=1, max_size=4),
    ),
    st.builds(
        lambda uid, s, op, flags: f"{uid}STORE {s} {op} ({' '.join(flags)})",
        st.sampled_from(["", "UID "]),
        _seq,
        st.sampled_from(["+FLAGS", "-FLAGS", "FLAGS", "+FLAGS.SILENT"]),
        st.lists(_flag, max_size=3),
    ),
    st.builds(
        lambda uid, keys, ret: f"{uid}SEARCH {ret}{' '.join(keys)}",
        st.sampled_from(["", "UID "]),
        st.lists(_search_key, min_size=1, max_size=5),
        st.sampled_from(["", "RETURN (MIN MAX COUNT) ", "RETURN () "]),
    ),
    st.builds(
        lambda uid, verb, s, m: f"{uid}{verb} {s} {m}",
        st.sampled_from(["", "UID "]),
        st.sampled_from(["COPY", "MOVE"]),
        _seq,
        _mailbox,
    ),
    st.builds(lambda s: f"UID EXPUNGE {s}", _seq),
    st.builds(
        lambda m, flags, plus, body: f"APPEND {m} ({' '.join(flags)}) " + _literal(body, plus),
        _mailbox,
        st.lists(_flag, max_size=2),
        st.booleans(),
        st.sampled_from([_MESSAGE, b"", b"x", b"Subject: a\r\n\r\nb\r\n"]),
    ),
)


def render(commands: list[str]) -> list[tuple[str, bytes]]:
    return [(f"t{i}", f"t{i} {text}\r\n".encode("latin-1")) for i, text in enumerate(commands)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


_TAGGED = re.compile(rb"^(t\d+) (OK|NO|BAD)\b", re.M)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(
        [(), (f"LOGIN {USER} {PASSWORD}",), (f"LOGIN {USER} {PASSWORD}", "SELECT INBOX")]
    ),
    st.lists(_simple, min_size=1, max_size=25),
    st.lists(st.integers(0, 1 << 16), max_size=12),
)
def test_generated_streams_get_exactly_one_tagged_reply_each(
    prefix: tuple[str, ...], commands: list[str], cuts: list[int]
) -> None:
    """Whole valid-ish commands, split anywhere: exactly one tagged reply per command,
    in order, until the server says BYE; no internal error; nothing left hanging."""
    rendered = render([*prefix, *commands])
    stream = b"".join(data for _, data in rendered)
    conn, output, events = drive(split(stream, cuts))
    assert_no_internal_error(output, events)
    replied = [m.group(1).decode() for m in _TAGGED.finditer(output)]
    tags = [tag for tag, _ in rendered]
    assert replied == tags[: len(replied)], (replied, tags)
    if len(replied) < len(tags):
        # Only a closed connection (LOGOUT, a fatal error) leaves commands unanswered.
        assert conn.transport.disconnecting or b"* BYE" in output, (output[-500:], tags)


# ---- mutated byte streams ------------------------------------------------------------

_mutation = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 30)),
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
    st.tuples(st.just("repeat"), st.integers(0, 1 << 16), st.integers(1, 200)),
)


def mutate(data: bytearray, mutation: tuple) -> None:
    kind, where, arg = mutation
    at = where % (len(data) + 1)
    if kind == "insert":
        data[at:at] = arg
    elif kind == "delete":
        del data[at : at + arg]
    elif kind == "flip" and at < len(data):
        data[at] ^= arg
    elif kind == "repeat":
        data[at:at] = data[at : at + 16] * min(arg, 50)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(_simple, min_size=1, max_size=15),
    st.lists(_mutation, min_size=1, max_size=8),
    st.lists(st.integers(0, 1 << 16), max_size=8),
)
def test_mutated_streams_never_break_the_server(
    commands: list[str], mutations: list[tuple], cuts: list[int]
) -> None:
    """Arbitrary corruption of a command stream: only BAD/NO/BYE, never an internal
    error; no tag is answered twice."""
    login = [f"LOGIN {USER} {PASSWORD}", "SELECT INBOX"]
    data = bytearray(b"".join(d for _, d in render([*login, *commands])))
    for mutation in mutations:
        mutate(data, mutation)
    _conn, output, events = drive(split(bytes(data), cuts))
    assert_no_internal_error(output, events)
    replied = [m.group(1) for m in _TAGGED.finditer(output)]
    for tag in set(replied):  # a mutation may repeat a command, never the server
        sent = len(re.findall(rb"(?<![0-9A-Za-z])" + tag + rb"(?![0-9])", bytes(data)))
        assert replied.count(tag) <= sent, tag


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 1 << 16), max_size=6))
def test_random_bytes_after_login_never_break_the_server(raw: bytes, cuts: list[int]) -> None:
    prefix = f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\n".encode()
    _conn, output, events = drive([prefix, *split(raw, cuts)])
    assert_no_internal_error(output, events)
    assert b"a OK" in output


# ---- literal announcements before login (issue 20 item 2) -----------------------------

PRELOGIN_CAP = LIMITS.max_prelogin_literal_size
_announced_size = st.one_of(
    st.sampled_from(
        [1, PRELOGIN_CAP - 1, PRELOGIN_CAP, PRELOGIN_CAP + 1, LIMITS.max_literal_size + 1]
    ),
    st.sampled_from([60_000_000, 10**30]),
    st.integers(1, 2 * PRELOGIN_CAP),
)
_announcement = st.tuples(
    st.sampled_from(["LOGIN", "ID"]), _announced_size, st.booleans(), st.integers(0, 3 * 8192)
)


def _announce(tag: str, command: str, size: int, sync: bool, body: bytes) -> bytes:
    marker = b"{%d}" % size if sync else b"{%d+}" % size
    head = b"LOGIN " if command == "LOGIN" else b'ID ("name" '
    tail = b" pw\r\n" if command == "LOGIN" else b")\r\n"
    return tag.encode() + b" " + head + marker + b"\r\n" + body + tail


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(_announcement, min_size=1, max_size=6),
    st.booleans(),
    st.lists(st.integers(0, 1 << 16), max_size=8),
)
def test_literal_announcements_before_login_stay_small(
    announcements: list[tuple[str, int, bool, int]], honest: bool, cuts: list[int]
) -> None:
    """Synchronizing and non-synchronizing literals around the pre-login cap, from an
    honest client (bytes only for what the server accepts) or a hostile one (some bytes
    whatever the size). The parser never holds more than a pre-login command, the
    listener's pre-login accounting matches it and ends at zero, and no internal error
    happens. An honest client gets, for each command: its normal reply when the literal
    fits, ``NO [TOOBIG]`` (and no ``+``) for ``{n}`` over the cap, ``* BYE [TOOBIG]`` and
    the end of the connection for ``{n+}`` over it (RFC 7888 §4)."""
    stream = b""
    expected: list[tuple[str, bytes]] = []
    for i, (command, size, sync, sent) in enumerate(announcements):
        tag = f"t{i}"
        fits = size <= PRELOGIN_CAP
        if honest:
            body = b"u" * size if fits else b""
            if not fits and sync:
                stream += tag.encode() + b" LOGIN {%d}\r\n" % size
                expected.append((tag, b"NO [TOOBIG]"))
                continue
            stream += _announce(tag, command, size, sync, body)
            if not fits:
                expected.append(("*", b"BYE [TOOBIG]"))
                break
            expected.append((tag, b"NO [AUTHENTICATIONFAILED]" if command == "LOGIN" else b"OK"))
        else:
            stream += _announce(tag, command, size, sync, b"u" * min(size, sent))
    conn = connect()
    protocol = conn.protocol
    budgets = protocol.factory.budgets
    bound = LIMITS.max_line_length + 2 + LIMITS.max_prelogin_command_size
    with structlog.testing.capture_logs() as events:
        for chunk in split(stream, cuts):
            if conn.transport.disconnecting:
                break
            protocol.dataReceived(chunk)
            settle(conn)
            assert protocol.session.user is None
            assert protocol.parser.buffered_size <= bound + len(chunk)
            held = 0 if conn.transport.disconnecting else protocol.parser.buffered_size
            assert budgets.prelogin_buffered == held
            assert budgets.spool_peak == 0  # nothing this small is spooled
        assert_quiescent(conn)
        protocol.connectionLost(None)
    output = conn.transport.value()
    assert_no_internal_error(output, events)
    assert budgets.prelogin_buffered == 0
    assert budgets.prelogin_peak <= bound + max(map(len, split(stream, cuts)), default=0)
    if honest:
        lines = [line for line in output.split(b"\r\n")[1:] if line]
        replies = [line for line in lines if not line.startswith((b"+ ", b"* ID", b"* OK"))]
        assert len(replies) == len(expected), (replies, expected)
        for line, (tag, start) in zip(replies, expected, strict=True):
            assert line.startswith(tag.encode() + b" " + start), (line, tag, start)
        refused_sync = [t for t, start in expected if start == b"NO [TOOBIG]"]
        for tag in refused_sync:  # no continuation between the announcement and the NO
            at = output.index(tag.encode() + b" NO [TOOBIG]")
            assert not output[:at].endswith(b"+ Ready for literal data\r\n")
