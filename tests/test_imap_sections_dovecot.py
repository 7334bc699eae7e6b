"""BODY[section] numbering against Dovecot 2.3, raw bytes, over a table of part specifiers
on a few message shapes (issue 17: "BODY[1.1] of a non-multipart message").

The choice made (:func:`gateway.message.sections.resolve_node`): RFC 3501 §6.4.5 gives a
non-multipart message "only a part 1"; a single part inside a multipart likewise has one
sub-part, 1, which is itself, once (``BODY[1.1]`` of a multipart's text part 1 is that
text, ``BODY[1.1.1]`` is missing); a missing part is an empty literal, as in Dovecot.
``BINARY[...]`` takes part numbers only (RFC 3516 §4.2 ``section-binary``; Dovecot also
reads HEADER/TEXT/MIME there) and a missing BINARY part is NIL (Dovecot: an empty
literal), so only BINARY.SIZE is compared.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapclient import RawClient, running_server

WHEN = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)

PLAIN = b"From: c@example.net\r\nSubject: Plain\r\n\r\nJust a short note.\r\n"
MIXED_WITH_MESSAGE = (
    b"From: a@example.org\r\nSubject: Outer\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n'
    b"--X\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--X\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: b@example.org\r\nSubject: Inner\r\n\r\ninner body\r\n--X--\r\n"
)
FORWARD_OF_ALTERNATIVE = (
    b"From: a@example.org\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: message/rfc822\r\n\r\n"
    b"From: b@example.org\r\nSubject: Inner\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="Y"\r\n\r\n'
    b"--Y\r\nContent-Type: text/plain\r\n\r\nalt1\r\n"
    b"--Y\r\nContent-Type: text/html\r\n\r\n<p>alt2</p>\r\n--Y--\r\n"
)
NESTED_MULTIPART = (
    b"From: d@example.org\r\nSubject: Nested\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="O"\r\n\r\n'
    b'--O\r\nContent-Type: multipart/alternative; boundary="I"\r\n\r\n'
    b"--I\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--I\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--I--\r\n"
    b"--O\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\nAAEC\r\n--O--\r\n"
)
MESSAGES = (PLAIN, MIXED_WITH_MESSAGE, FORWARD_OF_ALTERNATIVE, NESTED_MULTIPART)

SECTIONS = (
    "1", "1.1", "1.1.1", "1.1.2", "1.2", "2", "2.1", "2.1.1", "2.2", "3",
    "HEADER", "TEXT", "1.MIME", "1.1.MIME", "2.MIME", "2.1.MIME",
    "1.HEADER", "1.TEXT", "1.1.HEADER", "2.HEADER", "2.TEXT", "2.HEADER.FIELDS (SUBJECT)",
    "1.HEADER.FIELDS.NOT (FROM)",
)  # fmt: skip

COMMANDS = [
    f"FETCH {n} (BODY.PEEK[{s}])".encode() for n in range(1, len(MESSAGES) + 1) for s in SECTIONS
] + [
    f"FETCH {n} (BINARY.SIZE[{s}])".encode()
    for n in range(1, len(MESSAGES) + 1)
    for s in ("1", "1.1", "1.1.1", "2", "2.1", "2.1.1", "3")
]


KNOWN_DIFFERENCES = frozenset((b"FETCH 4 (BODY.PEEK[1])", b"FETCH 4 (BINARY.SIZE[1])"))
"""A multipart nested in a multipart: Dovecot's part body keeps the CRLF after the inner
close-delimiter ``--I--``; popgate ends it before, since RFC 2046 §5.1.1 attaches the CRLF
preceding a boundary delimiter line (here the outer ``--O``) to that delimiter."""


def _normalise(reply: bytes) -> bytes:
    """Untagged responses and the tagged status; the tagged text differs by design."""
    return re.sub(rb"(?m)^(t\d+ (?:OK|NO|BAD)).*$", rb"\1", reply)


def _run(client: RawClient) -> list[bytes]:
    client.command("s", "EXAMINE INBOX")
    return [_normalise(client.command(f"t{i}", cmd)) for i, cmd in enumerate(COMMANDS)]


def test_body_sections_answer_like_dovecot(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot]
) -> None:
    """Every BODY[section] of the table is byte-identical to Dovecot's, missing parts
    included (empty literals), and BINARY.SIZE agrees on which parts exist."""
    dovecot = dovecot_factory(users={"alice": "secret"})
    for raw in MESSAGES:
        dovecot.deliver("alice", raw, when=WHEN)
    with RawClient(dovecot.imap_port) as reference:
        reference.greeting()
        reference.command("l", "LOGIN alice secret")
        expected = _run(reference)
    with running_server(tmp_path) as handle:
        box = handle.mailbox_id()
        for raw in MESSAGES:
            handle.call(handle.store.append, box, raw, [], WHEN)
        with handle.login() as ours:
            got = _run(ours)
    mismatches = [
        (COMMANDS[i], e, g)
        for i, (e, g) in enumerate(zip(expected, got, strict=True))
        if e != g and COMMANDS[i] not in KNOWN_DIFFERENCES
    ]
    assert not mismatches, mismatches
