"""Replays of the exact command sequences real mail clients send at startup and sync.

Thunderbird, iOS Mail, K-9/Android, mutt, offlineimap and Roundcube each speak their own dialect of
IMAP4rev1 (RFC 3501): lowercase command names, SASL-IR or not, ``ENABLE`` of things the
server may not have, ``BODY.PEEK[HEADER.FIELDS (...)]`` lists in any case, partial body
fetches. Each test sends one client's sequence over a real socket and asserts that every
command completes OK and every response line is well formed (balanced parentheses and
quotes, literals of the announced size), then checks the data the client relies on.
A second group pins RFC 3501 corners a compliance suite probes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.imapclient import PASSWORD, USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message

MULTIPART = (
    b"From: carol@example.com\r\nTo: alice@example.com\r\nSubject: report\r\n"
    b"Date: Tue, 8 Feb 1994 10:00:00 +0000\r\nMessage-ID: <report@example.com>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="BB"\r\n\r\n'
    b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nhello=20world\r\n"
    b"--BB\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\nAAAA\r\n--BB--\r\n"
)
PLAIN_COUNT = 3
"""Plain messages delivered before the multipart one (UIDs 1..3; the multipart is UID 4)."""

_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        for i in range(PLAIN_COUNT):
            handle.append("INBOX", message(f"m{i}", body=f"Body number {i}.\r\n"))
        handle.append("INBOX", MULTIPART)
        yield handle


def strip_literals(line: bytes) -> bytes:
    """The response line with each literal replaced by an empty quoted string; the
    literal's announced size must match the bytes that follow it."""
    out = b""
    rest = line
    while True:
        m = _LITERAL.search(rest)
        if m is None:
            return out + rest
        size = int(m.group(1))
        body = rest[m.end() : m.end() + size]
        assert len(body) == size, (size, body)
        out += rest[: m.start()] + b'""'
        rest = rest[m.end() + size :]


def assert_well_formed(line: bytes) -> None:
    """One response line (literals included) ends in CRLF, starts with ``*``, ``+`` or a
    tag, and has balanced quotes and parentheses outside its literals (RFC 3501 §9)."""
    assert line.endswith(b"\r\n"), line
    text = strip_literals(line)[:-2]
    assert b"\r" not in text and b"\n" not in text, line
    depth = 0
    quoted = False
    escaped = False
    for byte in text:
        ch = chr(byte)
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            assert depth >= 0, line
    assert not quoted and depth == 0, line


class Dialect:
    """Runs one client's commands, asserting each completes OK with well-formed lines."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.count = 0

    def tag(self) -> str:
        self.count += 1
        return f"A{self.count:03d}"

    def lines(self, tag: str) -> list[bytes]:
        out = []
        while True:
            line = self.client.read_line()
            assert_well_formed(line)
            out.append(line)
            if line.startswith(tag.encode() + b" "):
                return out

    def ok(self, command: str | bytes) -> list[bytes]:
        """Send ``command``; return the untagged lines after asserting a tagged OK."""
        tag = self.tag()
        data = command.encode() if isinstance(command, str) else command
        self.client.send(tag.encode() + b" " + data + b"\r\n")
        out = self.lines(tag)
        assert out[-1].startswith(f"{tag} OK".encode()), (command, out)
        for line in out[:-1]:
            assert line.startswith(b"* "), (command, line)
        return out[:-1]

    def status(self, command: str) -> bytes:
        """Send ``command`` and return its tagged line, whatever the status."""
        tag = self.tag()
        self.client.send(f"{tag} {command}\r\n".encode())
        return self.lines(tag)[-1]

    def append(self, mailbox: str, flags: str, data: bytes, date: str = "") -> list[bytes]:
        """APPEND with a synchronizing literal, as clients without LITERAL+ send it."""
        tag = self.tag()
        extra = f' "{date}"' if date else ""
        self.client.send(f"{tag} APPEND {mailbox} ({flags}){extra} {{{len(data)}}}\r\n".encode())
        assert self.client.read_line().startswith(b"+ ")
        self.client.send(data + b"\r\n")
        out = self.lines(tag)
        assert out[-1].startswith(f"{tag} OK [APPENDUID ".encode()), out
        return out

    def idle(self) -> None:
        tag = self.tag()
        self.client.send(f"{tag} IDLE\r\n".encode())
        assert self.client.read_line().startswith(b"+ ")
        self.client.send(b"DONE\r\n")
        assert self.lines(tag)[-1].startswith(f"{tag} OK".encode())


def uids_of(lines: list[bytes]) -> list[int]:
    return [int(m.group(1)) for line in lines for m in [re.search(rb"UID (\d+)", line)] if m]


def search_hits(lines: list[bytes]) -> list[int]:
    (line,) = [x for x in lines if x.startswith(b"* SEARCH")]
    return [int(n) for n in line[len(b"* SEARCH") :].split()]


@pytest.fixture
def client(server: ServerHandle) -> Iterator[RawClient]:
    with server.connect() as raw:
        assert raw.greeting().startswith(b"* OK ")
        yield raw


def login(client: RawClient) -> Dialect:
    d = Dialect(client)
    d.ok(f'LOGIN {USER} "{PASSWORD}"')
    return d


# ---- client sequences ------------------------------------------------------------------


def test_thunderbird_startup_and_sync_sequence(client: RawClient) -> None:
    """Thunderbird 115's sequence: lowercase names, SASL-IR, ENABLE of extensions it
    hopes for, LIST-EXTENDED with SPECIAL-USE, a CONDSTORE select, header and partial
    body fetches, flag changes, copy to Trash, expunge, IDLE, APPEND to Sent and STATUS."""
    d = Dialect(client)
    caps = d.ok("capability")[0]
    assert b" SASL-IR" in caps and b" AUTH=PLAIN" in caps
    sasl = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    d.ok(f"authenticate PLAIN {sasl}")
    d.ok('ID ("name" "Thunderbird" "version" "115.3.1")')
    assert d.ok("namespace") == [b'* NAMESPACE (("" "/")) NIL NIL\r\n']
    assert d.ok("enable CONDSTORE") == [b"* ENABLED CONDSTORE\r\n"]
    assert d.ok("ENABLE UTF8=ACCEPT") in ([], [b"* ENABLED\r\n"], [b"* ENABLED UTF8=ACCEPT\r\n"])
    listed = d.ok('list (subscribed) "" "*" return (special-use)')
    assert any(b"\\Trash" in line and b'"Trash"' in line for line in listed)
    assert any(b"\\Sent" in line and b'"Sent"' in line for line in listed)
    assert len(d.ok('lsub "" "*"')) == len(listed)
    selected = d.ok('select "INBOX" (CONDSTORE)')
    assert b"* 4 EXISTS\r\n" in selected
    assert any(line.startswith(b"* OK [HIGHESTMODSEQ ") for line in selected)
    assert uids_of(d.ok("UID fetch 1:* (FLAGS)")) == [1, 2, 3, 4]
    headers = d.ok(
        "UID fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
        "Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
        "Content-Type Reply-To)])"
    )
    assert len(headers) == 4 and b"Subject: report\r\n" in headers[3]
    partial = d.ok("UID fetch 3 (UID RFC822.SIZE BODY[]<0.10240>)")
    size = len(message("m2", body="Body number 2.\r\n"))
    assert f"RFC822.SIZE {size} BODY[]<0> {{{size}}}".encode() in partial[0]
    d.ok("UID fetch 4 (UID RFC822.SIZE BODY.PEEK[]<0.50>)")
    d.ok("uid store 3 +FLAGS (\\Seen)")
    d.ok('UID COPY 3 "Trash"')
    d.ok("UID STORE 3 +FLAGS (\\Deleted)")
    assert d.ok("expunge") == [b"* 3 EXPUNGE\r\n"]
    d.ok("UID STORE 2 +FLAGS (\\Deleted)")
    assert d.ok("UID EXPUNGE 2") == [b"* 2 EXPUNGE\r\n"]
    d.idle()
    sent = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: out\r\n\r\nSent.\r\n"
    d.append('"Sent"', "\\Seen", sent)
    assert d.ok('STATUS "Sent" (UIDNEXT MESSAGES UNSEEN RECENT)') == [
        b'* STATUS "Sent" (UIDNEXT 2 MESSAGES 1 UNSEEN 0 RECENT 1)\r\n'
    ]
    assert d.ok('STATUS "Trash" (MESSAGES)') == [b'* STATUS "Trash" (MESSAGES 1)\r\n']
    d.ok("noop")
    d.ok("logout")


def test_thunderbird_authenticate_plain_without_sasl_ir(client: RawClient) -> None:
    """RFC 4959 is optional: Thunderbird without SASL-IR sends ``AUTHENTICATE PLAIN``,
    waits for the empty ``+`` challenge (RFC 3501 §6.2.2), then sends the response."""
    client.send(b"A1 authenticate PLAIN\r\n")
    assert client.read_line() == b"+ \r\n"
    client.send(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    assert client.read_line().startswith(b"A1 OK ")


def test_enable_of_unknown_capability_is_ok_without_enabled_entry(client: RawClient) -> None:
    """RFC 5161 §3.1: ENABLE of extensions the server does not support is not an error;
    the untagged ENABLED lists only what was actually enabled (UTF8=ACCEPT is supported
    since issue 17, the unknown name is left out)."""
    d = login(client)
    assert d.ok("ENABLE X-UNKNOWN-THING UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT\r\n"]
    assert d.ok("ENABLE X-UNKNOWN-THING") in ([], [b"* ENABLED\r\n"])
    assert d.ok("ENABLE FOO CONDSTORE") == [b"* ENABLED CONDSTORE\r\n"]


def test_ios_mail_sequence(client: RawClient) -> None:
    """iOS Mail: ID with its identity before and after login, LIST, SELECT, a UID SEARCH
    of the undeleted, BODYSTRUCTURE, then part fetches (``BODY.PEEK[1]<0.1000>``,
    ``[1.MIME]``) and Content-Type/Transfer-Encoding header fields."""
    d = Dialect(client)
    ident = '("name" "iPhone Mail" "version" "20B82" "os" "iOS" "os-version" "16.1 (20B82)")'
    assert d.ok(f"ID {ident}")[0].startswith(b"* ID (")
    d.ok(f'LOGIN {USER} "{PASSWORD}"')
    d.ok(f"ID {ident}")
    assert d.ok('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""\r\n']
    assert any(b'"INBOX"' in line for line in d.ok('LIST "" "*"'))
    d.ok("SELECT INBOX")
    d.ok("UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert search_hits(d.ok("UID SEARCH 1:* NOT DELETED")) == [2, 3, 4]
    assert search_hits(d.ok("UID SEARCH UID 1:* NOT DELETED")) == [2, 3, 4]
    assert uids_of(d.ok("UID FETCH 1:* (FLAGS)")) == [1, 2, 3, 4]
    (structure,) = d.ok("UID FETCH 4 (BODYSTRUCTURE)")
    assert b'"MIXED" ("BOUNDARY" "BB")' in structure
    (part,) = d.ok("UID FETCH 4 BODY.PEEK[1]<0.1000>")
    assert b"BODY[1]<0> {13}\r\nhello=20world" in part
    (mime,) = d.ok("UID FETCH 4 BODY.PEEK[1.MIME]")
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" in mime
    (fields,) = d.ok(
        "UID FETCH 4 (BODY.PEEK[HEADER.FIELDS (CONTENT-TYPE CONTENT-TRANSFER-ENCODING)])"
    )
    assert b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n' in fields
    (both,) = d.ok("UID FETCH 4 (BODY.PEEK[2]<0.1000> BODY.PEEK[2.MIME])")
    assert b"BODY[2]<0> {4}\r\nAAAA" in both
    assert b"\\Seen" not in d.ok("UID FETCH 4 (FLAGS)")[0]
    d.idle()
    d.ok("LOGOUT")


def test_k9_sequence(client: RawClient) -> None:
    """K-9/Thunderbird for Android: LIST, SELECT, UID SEARCH, a header fetch with
    lowercase field names and its own X-K9mail-Identity, a 4 KiB partial BODY.PEEK[],
    NOOP; COMPRESS is used only when advertised (after login, RFC 4978), and then the
    rest of the session runs compressed."""
    d = Dialect(client)
    d.ok("CAPABILITY")
    d.ok(f'LOGIN {USER} "{PASSWORD}"')
    caps = d.ok("CAPABILITY")[0]
    if b"COMPRESS=DEFLATE" in caps:
        d.ok("COMPRESS DEFLATE")
        client.start_deflate()
    d.ok('LIST "" "*"')
    d.ok('SELECT "INBOX"')
    assert search_hits(d.ok("UID SEARCH 1:* NOT DELETED")) == [1, 2, 3, 4]
    headers = d.ok(
        "UID FETCH 1:4 (UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (date subject "
        "from content-type to cc reply-to message-id references in-reply-to "
        "X-K9mail-Identity)])"
    )
    assert uids_of(headers) == [1, 2, 3, 4]
    assert all(b'INTERNALDATE "' in line for line in headers)
    (body,) = d.ok("UID FETCH 2 (UID RFC822.SIZE BODY.PEEK[]<0.4096>)")
    assert b"Body number 1.\r\n)" in body
    d.ok("UID FETCH 1:4 (UID FLAGS)")
    d.ok("NOOP")
    if b"COMPRESS=DEFLATE" not in caps:  # refused cleanly, the session carries on
        assert re.match(rb"A\d+ (BAD|NO) ", d.status("COMPRESS DEFLATE"))
        d.ok("NOOP")


def test_mutt_sequence(client: RawClient) -> None:
    """mutt: STATUS on every folder, a sequence-number header fetch with its long field
    list, ``UID STORE ... +FLAGS.SILENT``, APPEND, and CLOSE to expunge on leaving."""
    d = login(client)
    folders = [re.search(rb'"/" "([^"]*)"', line).group(1).decode() for line in d.ok('LIST "" "*"')]
    d.ok('LSUB "" "*"')
    for name in folders:
        (status,) = d.ok(f'STATUS "{name}" (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)')
        assert status.startswith(f'* STATUS "{name}" (MESSAGES '.encode())
    d.ok('SELECT "INBOX"')
    headers = d.ok(
        "FETCH 1:4 (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (DATE FROM "
        "SENDER SUBJECT TO CC MESSAGE-ID REFERENCES CONTENT-TYPE CONTENT-DESCRIPTION "
        "IN-REPLY-TO REPLY-TO LINES LIST-POST X-LABEL X-ORIGINAL-TO)])"
    )
    assert uids_of(headers) == [1, 2, 3, 4]
    assert d.ok("UID STORE 1,3 +FLAGS.SILENT (\\Deleted \\Seen)") == []
    assert d.ok("UID STORE 2 -FLAGS.SILENT (\\Seen)") == []
    d.ok("UID FETCH 2 BODY.PEEK[]")
    d.append('"Sent"', "\\Seen", b"Subject: mutt\r\n\r\nfrom mutt\r\n")
    assert d.ok("CLOSE") == []
    assert d.ok('STATUS "INBOX" (MESSAGES)') == [b'* STATUS "INBOX" (MESSAGES 2)\r\n']


def test_offlineimap_sequence(client: RawClient) -> None:
    """offlineimap: EXAMINE to read, ``UID FETCH 1:* (FLAGS UID)``, APPEND with an
    internal date, and a UID SEARCH on its X-OfflineIMAP header to find what it put."""
    d = login(client)
    examined = d.ok("EXAMINE INBOX")
    assert any(b"[UIDVALIDITY " in line for line in examined)
    assert uids_of(d.ok("UID FETCH 1:* (FLAGS UID)")) == [1, 2, 3, 4]
    d.ok("UID FETCH 1 (BODY.PEEK[])")
    raw = b"Subject: kept\r\nX-OfflineIMAP: 1234-5678\r\n\r\nfrom offlineimap\r\n"
    out = d.append("Archive", "\\Seen \\Flagged", raw, date="05-Jan-2024 10:11:12 +0100")
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", out[-1]).group(1))
    d.ok("SELECT Archive")
    assert search_hits(d.ok("UID SEARCH HEADER X-OfflineIMAP 1234-5678")) == [uid]
    (fetched,) = d.ok(f"UID FETCH {uid} (FLAGS INTERNALDATE)")
    assert b'INTERNALDATE " 5-Jan-2024 10:11:12 +0100"' in fetched
    assert b"\\Flagged" in fetched and b"\\Seen" in fetched


def test_roundcube_sequence(client: RawClient) -> None:
    """Roundcube 1.6 (rcube_imap_generic): the message list is a UID SORT with ESORT's
    ``RETURN (ALL)`` (and ``(ALL COUNT)`` for the pager), the threaded view a
    ``UID THREAD REFERENCES``, a quick search a SORT with header keys, the unread count
    ``SEARCH RETURN (COUNT)`` (RFC 5256, RFC 5267, RFC 4731)."""
    d = Dialect(client)
    d.ok("CAPABILITY")
    d.ok(f'LOGIN "{USER}" "{PASSWORD}"')
    caps = d.ok("CAPABILITY")[0]
    for needed in (b" SORT", b" ESORT", b" THREAD=REFERENCES", b" THREAD=ORDEREDSUBJECT"):
        assert needed in caps
    d.ok('ID ("name" "Roundcube" "version" "1.6.5" "php" "8.2.7" "os" "Linux")')
    d.ok("NAMESPACE")
    d.ok('LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)')
    d.ok("SELECT INBOX")
    # Message list: dates tie for UIDs 1-3, so mailbox order breaks the tie both ways.
    assert d.ok("UID SORT RETURN (ALL) (DATE) UTF-8 ALL UNDELETED") == [
        b'* ESEARCH (TAG "A008") UID ALL 1:4\r\n'
    ]
    assert d.ok("UID SORT RETURN (ALL COUNT) (REVERSE DATE) UTF-8 ALL") == [
        b'* ESEARCH (TAG "A009") UID COUNT 4 ALL 4,1:3\r\n'
    ]
    # The fixture's INTERNALDATEs are "now" (one second or two apart): only the set is fixed.
    (arrival,) = d.ok("UID SORT (REVERSE ARRIVAL) UTF-8 ALL")
    assert arrival.startswith(b"* SORT ") and sorted(arrival.split()[2:]) == [
        b"1",
        b"2",
        b"3",
        b"4",
    ]
    assert d.ok("SORT RETURN (COUNT) (SUBJECT) US-ASCII ALL UNDELETED") == [
        b'* ESEARCH (TAG "A011") COUNT 4\r\n'
    ]
    headers = d.ok(
        "UID FETCH 4,1:3 (UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (DATE "
        "FROM TO SUBJECT CONTENT-TYPE CC REPLY-TO LIST-POST DISPOSITION-NOTIFICATION-TO "
        "X-PRIORITY)])"
    )
    assert sorted(uids_of(headers)) == [1, 2, 3, 4]
    # Threaded view.
    assert d.ok("UID THREAD REFERENCES UTF-8 ALL UNDELETED") == [b"* THREAD (1)(2)(3)(4)\r\n"]
    assert d.ok("THREAD ORDEREDSUBJECT UTF-8 ALL") == [b"* THREAD (1)(2)(3)(4)\r\n"]
    # Quick search in subject and sender, sorted; the unread count.
    assert d.ok(
        "UID SORT RETURN (ALL) (DATE) UTF-8 ALL UNDELETED OR HEADER SUBJECT report "
        "HEADER FROM report"
    ) == [b'* ESEARCH (TAG "A015") UID ALL 4\r\n']
    assert d.ok("SEARCH RETURN (COUNT) UNSEEN UNDELETED") == [b'* ESEARCH (TAG "A016") COUNT 4\r\n']
    d.ok("LOGOUT")


# ---- compliance corners ----------------------------------------------------------------


def test_list_percent_and_inbox_in_any_case(client: RawClient) -> None:
    """RFC 3501 §6.3.8: ``%`` matches one level; INBOX is case-insensitive (§5.1) and is
    always reported as ``INBOX``."""
    d = login(client)
    d.ok("CREATE Work/Projects")
    top = d.ok('LIST "" "%"')
    assert any(line.endswith(b'"Work"\r\n') for line in top)
    assert not any(b"Work/Projects" in line for line in top)
    for spelling in ("INBOX", "inbox", '"Inbox"'):
        assert d.ok(f'LIST "" {spelling}') == [b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n']


def test_lsub_after_unsubscribe_of_deleted_mailbox(client: RawClient) -> None:
    """RFC 3501 §6.3.6: deleting a mailbox keeps its subscription (LSUB shows it
    \\Noselect); UNSUBSCRIBE of the now missing name still works and removes it."""
    d = login(client)
    d.ok("CREATE Gone")
    d.ok("SUBSCRIBE Gone")
    d.ok("DELETE Gone")
    assert b'* LSUB (\\Noselect) "/" "Gone"\r\n' in d.ok('LSUB "" "*"')
    d.ok("UNSUBSCRIBE Gone")
    assert not any(b'"Gone"' in line for line in d.ok('LSUB "" "*"'))


def test_select_only_inbox_is_case_insensitive(client: RawClient) -> None:
    """RFC 3501 §5.1: only INBOX ignores case; ``Trash`` and ``trash`` are different names."""
    d = login(client)
    assert b"* 4 EXISTS\r\n" in d.ok("SELECT inbox")
    assert d.status("SELECT trash").startswith(b"A003 NO ")
    d.ok("SELECT Trash")


def test_examine_fetch_body_does_not_set_seen(client: RawClient) -> None:
    """RFC 3501 §6.3.2 and §6.4.5: on a read-only (EXAMINEd) mailbox, BODY[] does not
    set \\Seen."""
    d = login(client)
    d.ok("EXAMINE INBOX")
    (line,) = d.ok("FETCH 1 (BODY[])")
    assert b"FLAGS" not in line
    assert b"\\Seen" not in d.ok("FETCH 1 (FLAGS)")[0]


def test_keyword_in_use_appears_in_flags_of_next_select(client: RawClient) -> None:
    """RFC 3501 §7.2.6/§7.1: FLAGS and PERMANENTFLAGS list the keywords in use, so a
    client learns a keyword another session stored."""
    d = login(client)
    d.ok("SELECT INBOX")
    d.ok("STORE 2 +FLAGS ($Forwarded)")
    selected = d.ok("SELECT INBOX")
    (flags,) = [line for line in selected if line.startswith(b"* FLAGS ")]
    (permanent,) = [line for line in selected if b"[PERMANENTFLAGS " in line]
    assert b"$Forwarded" in flags and b"$Forwarded" in permanent


def test_search_without_match_and_fetch_beyond_uidnext(client: RawClient) -> None:
    """RFC 3501 §7.2.5: a SEARCH without hits still answers ``* SEARCH``; §6.4.8: a UID
    range wholly above UIDNEXT fetches nothing and is OK; §9: sequence number 0 is BAD."""
    d = login(client)
    d.ok("SELECT INBOX")
    assert d.ok("SEARCH SUBJECT no-such-subject") == [b"* SEARCH\r\n"]
    assert d.ok("UID SEARCH SUBJECT no-such-subject") == [b"* SEARCH\r\n"]
    assert d.ok("UID FETCH 100:200 (FLAGS)") == []
    assert d.status("FETCH 0 (FLAGS)").startswith(b"A006 BAD ")


def test_copy_to_the_selected_mailbox(client: RawClient) -> None:
    """RFC 3501 §6.4.7: COPY into the selected mailbox itself adds a new message, which
    the client learns of through EXISTS."""
    d = login(client)
    d.ok("SELECT INBOX")
    assert b"* 5 EXISTS\r\n" in d.ok("COPY 1 INBOX")
    assert uids_of(d.ok("UID FETCH 5 (UID)")) == [5]


def test_append_with_bare_lf_line_endings_is_served_with_crlf(client: RawClient) -> None:
    """RFC 3501 §2.3.4/RFC 5322 §2.1: a message APPENDed with Unix line endings (as
    scripts using imaplib do) is stored and served with CRLF, so RFC822.SIZE and the
    literal agree and header parsing works; CRLF messages are kept byte for byte."""
    d = login(client)
    d.append("Drafts", "", b"From: x@example.com\nSubject: lf\n\nbare LF body\n")
    d.append("Drafts", "", b"Subject: crlf\r\n\r\nkept\r\n")
    d.ok("SELECT Drafts")
    first, second = d.ok(
        "UID FETCH 1:2 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
    )
    expected = b"From: x@example.com\r\nSubject: lf\r\n\r\nbare LF body\r\n"
    assert f"RFC822.SIZE {len(expected)} ".encode() in first
    assert b"{%d}\r\n" % len(expected) + expected in first
    assert b"Subject: lf\r\n\r\n" in first
    assert b"{23}\r\nSubject: crlf\r\n\r\nkept\r\n" in second
