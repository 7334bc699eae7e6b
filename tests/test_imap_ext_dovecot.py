"""Differential tests of issue 17's extensions against Dovecot 2.3 (the reference IMAP
server the harness starts): the same mailbox, the same commands to both, the responses
compared after removing what legitimately differs (tagged-line wording and timings,
UIDVALIDITY, save dates).

Dovecot 2.3.19 announces BINARY, CATENATE, SEARCHRES, WITHIN, SAVEDATE and PREVIEW; it has
neither OBJECTID nor UTF8=ACCEPT (both are covered by the raw-bytes tests instead).
"""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapclient import RawClient, ServerHandle, running_server

PAYLOAD = bytes(range(256))
OLD = datetime.datetime(2020, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)

MIXED = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Binary\r\n"
    b"Date: Mon, 05 Feb 2024 10:11:12 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n'
    b"\r\n"
    b"--B\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 at noon =\r\n"
    b"today.\r\n"
    b"--B\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n") + b"--B--\r\n"
)
PLAIN = (
    b"From: Carol <carol@example.net>\r\n"
    b"To: alice@example.org\r\n"
    b"Subject: Plain\r\n"
    b"Date: Wed, 01 Jan 2020 12:00:00 +0000\r\n"
    b"\r\n"
    b"Just a short note.\r\n"
)

TODAY = datetime.datetime.now(datetime.UTC).date()
_TODAY = f"{TODAY.day}-{TODAY.strftime('%b')}-{TODAY.year}"

_CAT_TEXT = b"Subject: Joined\r\n\r\n"
COMMANDS: list[bytes] = [
    # BINARY (RFC 3516)
    b"FETCH 1 (BINARY.PEEK[1])",
    b"FETCH 1 (BINARY.PEEK[2])",
    b"FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2])",
    b"FETCH 1 (BINARY.PEEK[2]<65.3>)",
    b"FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1])",
    b"UID FETCH 1:2 (UID BINARY.SIZE[1])",
    # SEARCHRES (RFC 5182)
    b"SEARCH RETURN (SAVE) FLAGGED",
    b"FETCH $ (UID)",
    b"UID SEARCH $",
    b"SEARCH RETURN (SAVE MAX) ALL",
    b"UID SEARCH UID $",
    b"SEARCH RETURN (SAVE COUNT) NOT FLAGGED",
    b"UID SEARCH $",
    # WITHIN (RFC 5032)
    b"SEARCH OLDER 86400",
    b"SEARCH YOUNGER 86400",
    b"SEARCH YOUNGER 60 OLDER 60",
    # SAVEDATE (RFC 8514)
    b"SEARCH SAVEDATESUPPORTED",
    b"SEARCH SAVEDBEFORE 1-Jan-2000",
    b"SEARCH SAVEDSINCE 1-Jan-2000",
    b"FETCH 1 (SAVEDATE)",
    # PREVIEW (RFC 8970)
    b"FETCH 2 (PREVIEW)",
    # CATENATE (RFC 4469)
    b'APPEND INBOX CATENATE (TEXT {%d+}\r\n%s URL "/INBOX/;UID=2/;SECTION=TEXT")'
    % (len(_CAT_TEXT), _CAT_TEXT),
    b"NOOP",
    b"FETCH 3 (BODY.PEEK[])",
    b'APPEND INBOX CATENATE (URL "/INBOX/;UID=99")',
    b'APPEND INBOX CATENATE (URL "/Nowhere/;UID=1")',
]


def _normalise(reply: bytes) -> bytes:
    """What must agree: untagged responses, the tagged status and its response code."""
    out = []
    for line in reply.split(b"\r\n"):
        m = re.match(rb"(t\d+) (OK|NO|BAD)( \[[^\]]*\])?", line)
        if m is not None:
            line = m.group(1) + b" " + m.group(2) + (m.group(3) or b"")
        line = re.sub(rb"APPENDUID \d+", b"APPENDUID v", line)
        line = re.sub(rb'SAVEDATE "[^"]*"', b"SAVEDATE d", line)
        line = re.sub(rb"\* \d+ RECENT", b"* n RECENT", line)
        out.append(line)
    return b"\r\n".join(out)


def _run(client: RawClient) -> list[bytes]:
    client.command("s", "SELECT INBOX")
    client.command("f", "STORE 1 +FLAGS.SILENT (\\Flagged)")
    return [_normalise(client.command(f"t{i}", cmd)) for i, cmd in enumerate(COMMANDS)]


@pytest.fixture
def popgate(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        box = handle.mailbox_id()
        handle.call(handle.store.append, box, MIXED, [], datetime.datetime.now(datetime.UTC))
        handle.call(handle.store.append, box, PLAIN, [], OLD)
        yield handle


def test_extensions_answer_like_dovecot(
    popgate: ServerHandle, dovecot_factory: Callable[..., Dovecot]
) -> None:
    dovecot = dovecot_factory(users={"alice": "secret"})
    dovecot.deliver("alice", MIXED, when=datetime.datetime.now(datetime.UTC))
    dovecot.deliver("alice", PLAIN, when=OLD)
    with RawClient(dovecot.imap_port) as reference:
        reference.greeting()
        reference.command("l", "LOGIN alice secret")
        expected = _run(reference)
    with popgate.login() as ours:
        got = _run(ours)
    mismatches = [
        (COMMANDS[i], e, g) for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g
    ]
    assert not mismatches, mismatches
