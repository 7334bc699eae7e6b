"""8-bit mailbox names that are not valid UTF-8 (issue 17): NO, not BAD, as Dovecot 2.3.

RFC 3501 §6.3.1: a well-formed command naming a mailbox that cannot exist is NO; the
session goes on. A quoted Latin-1 name (``"caf\\xe9"``) is such a name: not modified UTF-7
before UTF8=ACCEPT, not UTF-8 after it (RFC 6855 §3). LIST with such a pattern or
reference matches nothing and is OK. An unquoted 8-bit atom stays BAD (RFC 3501 §9: ATOM-CHAR
is 7-bit), as in Dovecot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapclient import RawClient, ServerHandle, running_server

LATIN1 = b'"caf\xe9"'

COMMANDS: list[bytes] = [
    b"SELECT " + LATIN1,
    b"EXAMINE " + LATIN1,
    b"STATUS " + LATIN1 + b" (MESSAGES)",
    b"CREATE " + LATIN1,
    b"DELETE " + LATIN1,
    b"RENAME INBOX " + LATIN1,
    b"SUBSCRIBE " + LATIN1,
    b"UNSUBSCRIBE " + LATIN1,
    b'LIST "" ' + LATIN1,
    b"LIST " + LATIN1 + b' "*"',
    b'LSUB "" ' + LATIN1,
    b"SELECT caf\xe9",
    b"SELECT INBOX",
    b"COPY 1 " + LATIN1,
    b"MOVE 1 " + LATIN1,
    b"NOOP",
]


def _status(reply: bytes) -> bytes:
    """The untagged lines and the tagged status word (texts and codes differ by design)."""
    return re.sub(rb"(?m)^(t\d+ (?:OK|NO|BAD)).*$", rb"\1", reply)


def _run(client: RawClient) -> list[bytes]:
    return [_status(client.command(f"t{i}", cmd)) for i, cmd in enumerate(COMMANDS)]


@pytest.fixture
def popgate(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        handle.append(raw=b"Subject: x\r\n\r\nbody\r\n")
        yield handle


def test_latin1_mailbox_names_are_no_like_dovecot(
    popgate: ServerHandle, dovecot_factory: Callable[..., Dovecot]
) -> None:
    dovecot = dovecot_factory(users={"alice": "secret"})
    dovecot.deliver("alice", b"Subject: x\r\n\r\nbody\r\n")
    with RawClient(dovecot.imap_port) as reference:
        reference.greeting()
        reference.command("l", "LOGIN alice secret")
        expected = [
            re.sub(rb"(?m)^\* (OK|FLAGS).*\r\n|^\* \d+ \w+\r\n", b"", r) for r in _run(reference)
        ]
    with popgate.login() as ours:
        got = [re.sub(rb"(?m)^\* (OK|FLAGS).*\r\n|^\* \d+ \w+\r\n", b"", r) for r in _run(ours)]
    assert got == expected


def test_latin1_names_are_no_cannot_with_a_reason(popgate: ServerHandle) -> None:
    """Raw bytes: NO [CANNOT] with the reason, before and after ENABLE UTF8=ACCEPT, and the
    connection stays usable."""
    with popgate.login() as client:
        assert client.command("a", b"SELECT " + LATIN1) == (
            b"a NO [CANNOT] mailbox name is not valid modified UTF-7\r\n"
        )
        assert client.command("b", b"CREATE " + LATIN1) == (
            b"b NO [CANNOT] mailbox name is not valid modified UTF-7\r\n"
        )
        assert client.command("c", b'LIST "" ' + LATIN1) == b"c OK LIST completed\r\n"
        assert client.command("e", "ENABLE UTF8=ACCEPT") == (
            b"* ENABLED UTF8=ACCEPT\r\ne OK ENABLE completed\r\n"
        )
        assert client.command("f", b"SELECT " + LATIN1) == (
            b"f NO [CANNOT] mailbox name is not valid UTF-8\r\n"
        )
        assert client.command("g", b"STATUS " + LATIN1 + b" (MESSAGES)") == (
            b"g NO [CANNOT] mailbox name is not valid UTF-8\r\n"
        )
        assert client.command("n", "NOOP") == b"n OK NOOP completed\r\n"
