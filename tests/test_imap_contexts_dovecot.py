"""CONTEXT=SEARCH (RFC 5267 §4) against Dovecot 2.3, which announces it: the same two
sessions on the same mailbox, one keeping UPDATE contexts while the other changes flags,
appends and expunges; the ESEARCH responses (ADDTO/REMOVEFROM, PARTIAL) and the tagged
statuses must agree, and REMOVEFROM must come before the EXPUNGE it is about.

Dovecot does not announce CONTEXT=SORT and gives SORT contexts position 0 (RFC 5267
forbids 0 there), so SORT updates are covered by tests/test_imap_contexts.py instead;
SORT's PARTIAL is compared here.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapclient import RawClient, running_server

WHEN = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def mail(subject: bytes) -> bytes:
    return b"From: x@example.org\r\nSubject: %s\r\n\r\nbody\r\n" % subject


def _append(subject: bytes, flags: bytes = b"") -> bytes:
    raw = mail(subject)
    return b"APPEND INBOX %s{%d+}\r\n" % (flags, len(raw)) + raw


STEPS: list[tuple[str, bytes]] = [
    ("A", b"SEARCH RETURN (UPDATE) FLAGGED"),
    ("A", b"UID SEARCH RETURN (UPDATE COUNT) UNSEEN"),
    ("A", b"SEARCH RETURN (CONTEXT UPDATE MIN) 2:3"),
    ("A", b"SEARCH RETURN (UPDATE) UID 3:*"),
    ("B", b"STORE 2 +FLAGS (\\Flagged)"),
    ("A", b"NOOP"),
    ("B", _append(b"c")),
    ("B", _append(b"a", b"(\\Flagged \\Seen) ")),
    ("A", b"NOOP"),
    ("B", b"STORE 2:3 +FLAGS (\\Deleted)"),
    ("B", b"EXPUNGE"),
    ("A", b"NOOP"),
    ("A", b"STORE 1 +FLAGS (\\Flagged \\Seen)"),
    ("A", b"STORE 1 -FLAGS (\\Flagged)"),
    ("A", b'CANCELUPDATE "a1"'),
    ("A", b'CANCELUPDATE "zz"'),
    ("B", b"STORE 1:* -FLAGS (\\Flagged)"),
    ("A", b"NOOP"),
    ("A", b"SEARCH RETURN (PARTIAL 1:2 ALL) ALL"),
    ("A", b"SEARCH RETURN (PARTIAL 5:9) ALL"),
    ("A", b"SEARCH RETURN (MIN MAX COUNT PARTIAL 2:1) ALL"),
    ("A", b"UID SEARCH RETURN (PARTIAL 2:3) ALL"),
    ("A", b"SEARCH RETURN (CONTEXT) ALL"),
    ("A", b"SEARCH RETURN (UPDATE SAVE) ALL"),
    ("A", b"SORT RETURN (PARTIAL 1:2) (SUBJECT) UTF-8 ALL"),
    ("A", b"UID SORT RETURN (COUNT PARTIAL 2:5) (REVERSE SUBJECT) UTF-8 ALL"),
    ("A", b"STORE 1 +FLAGS (\\Deleted)"),
    ("A", b"EXPUNGE"),
    ("A", b"UNSELECT"),
    ("A", b"SELECT INBOX"),
    ("A", b'CANCELUPDATE "a2"'),
]


def _relevant(reply: bytes) -> list[bytes]:
    """ESEARCH, EXPUNGE and NO responses in order, and the tagged status word."""
    kept = []
    for line in reply.split(b"\r\n"):
        if re.match(rb"\* (ESEARCH|NO|\d+ EXPUNGE)", line):
            kept.append(line)
        elif m := re.match(rb"[ab]\d+ (OK|NO|BAD)", line):
            kept.append(m.group(1))
    return kept


def _run(a: RawClient, b: RawClient) -> list[list[bytes]]:
    a.command("s", "SELECT INBOX")
    b.command("s", "SELECT INBOX")
    out = []
    for i, (who, cmd) in enumerate(STEPS):
        client = a if who == "A" else b
        out.append(_relevant(client.command(f"{who.lower()}{i + 1}", cmd)))
    return out


def test_search_contexts_answer_like_dovecot(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot]
) -> None:
    dovecot = dovecot_factory(users={"alice": "secret"})
    for subject in (b"b", b"d", b"f"):
        dovecot.deliver("alice", mail(subject), when=WHEN)
    with RawClient(dovecot.imap_port) as a, RawClient(dovecot.imap_port) as b:
        for client in (a, b):
            client.greeting()
            client.command("l", "LOGIN alice secret")
        expected = _run(a, b)
    with running_server(tmp_path) as handle:
        box = handle.mailbox_id()
        for subject in (b"b", b"d", b"f"):
            handle.call(handle.store.append, box, mail(subject), [], WHEN)
        with handle.login() as a, handle.login() as b:
            got = _run(a, b)
    seen = b"\n".join(line for reply in expected for line in reply)
    assert b" ADDTO (0 " in seen and b" REMOVEFROM (0 " in seen and b" PARTIAL (" in seen
    mismatches = [
        (STEPS[i], e, g) for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g
    ]
    assert not mismatches, mismatches
