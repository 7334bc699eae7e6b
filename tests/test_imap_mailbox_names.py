"""Which names a client may make exist, over a real socket (issue 20, items 10 and 15).

* SUBSCRIBE follows CREATE: a name with a LIST wildcard (``*``, ``%``) could never be
  listed alone (RFC 3501 §6.3.8), so neither may be subscribed; UNSUBSCRIBE still
  removes one subscribed before this rule.
* Format and bidi control characters (Unicode Cf: U+202E, U+200E/F, U+2066–2069,
  U+061C, ...) and line/paragraph separators (U+2028/9) are refused wherever control
  characters are, one rule in :func:`gateway.store.rules.check_mailbox_name`: CREATE and
  RENAME say ``NO [CANNOT]`` with the reason, so no such mailbox exists to APPEND to or
  SELECT.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap import mutf7
from gateway.testing.imapclient import RawClient, running_server
from gateway.testing.messages import message


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RawClient]:
    with running_server(tmp_path) as server, server.connect() as raw:
        raw.login()
        yield raw


def _q(name: str) -> str:
    """The quoted modified UTF-7 wire form of ``name``."""
    return '"' + mutf7.encode(name).decode("ascii") + '"'


# ---- item 10: SUBSCRIBE refuses wildcards, as CREATE does ----------------------------------


@pytest.mark.parametrize("name", ["*", "%", "Work/*", "a%b"])
def test_subscribe_refuses_list_wildcards_like_create(client: RawClient, name: str) -> None:
    assert client.command("c", f'CREATE "{name}"') == (
        b"c NO [CANNOT] Mailbox names may not contain % or *\r\n"
    )
    assert client.command("s", f'SUBSCRIBE "{name}"') == (
        b"s NO [CANNOT] Mailbox names may not contain % or *\r\n"
    )
    assert f'"{name}"'.encode() not in client.command("l", 'LSUB "" "*"')
    # A subscription made before the rule can still be removed.
    assert client.command("u", f'UNSUBSCRIBE "{name}"') == b"u OK UNSUBSCRIBE completed\r\n"


def test_subscribe_refuses_names_no_mailbox_could_have(client: RawClient) -> None:
    """The same name rule as CREATE: a control character (here U+0001, only reachable
    through modified UTF-7) cannot be subscribed either."""
    control = _q("a\x01b")
    reply = client.command("s", f"SUBSCRIBE {control}")
    assert reply.startswith(b"s NO [CANNOT] "), reply
    assert client.command("k", "SUBSCRIBE Nowhere/yet") == b"k OK SUBSCRIBE completed\r\n"


# ---- item 15: format and bidi controls ---------------------------------------------------

FORMAT_CONTROLS = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE: "evil\u202etxt.exe" displays as "evilexe.txt"
    "\u202d",
    "\u200e",
    "\u200f",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u061c",
    "\u2028",  # LINE SEPARATOR (Zl)
    "\u2029",  # PARAGRAPH SEPARATOR (Zp)
    "\ufeff",
    "\u00ad",
]


@pytest.mark.parametrize("char", FORMAT_CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_format_controls_are_refused_in_every_name_a_client_makes(
    client: RawClient, char: str
) -> None:
    name = f"evil{char}txt.exe"
    reply = client.command("c", f"CREATE {_q(name)}")
    assert reply == b"c NO [CANNOT] Invalid mailbox name: control or format character\r\n"
    assert re.fullmatch(
        rb"w OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n", client.command("w", "CREATE Work")
    )
    reply = client.command("r", f"RENAME Work {_q('Other/' + name)}")
    assert reply == b"r NO [CANNOT] Invalid mailbox name: control or format character\r\n"
    reply = client.command("r2", f"RENAME Work {_q(name)}")
    assert reply.startswith(b"r2 NO [CANNOT] "), reply
    assert client.command("s", f"SUBSCRIBE {_q(name)}").startswith(b"s NO [CANNOT] ")
    raw = message()
    client.send(f"a APPEND {_q(name)} {{{len(raw)}+}}\r\n".encode() + raw + b"\r\n")
    assert client.read_until_tagged("a").startswith(b"a NO ")
    assert client.command("x", f"SELECT {_q(name)}").startswith(b"x NO ")
    assert mutf7.encode(name) not in client.command("l", 'LIST "" "*"')


def test_joiners_inside_text_are_names_like_any_other(client: RawClient) -> None:
    """ZWJ/ZWNJ are Cf too, but reorder nothing and belong to emoji and scripts."""
    name = "Family \U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert re.fullmatch(
        rb"c OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n",
        client.command("c", f"CREATE {_q(name)}"),
    )
    assert client.command("x", f"SELECT {_q(name)}").endswith(
        b"x OK [READ-WRITE] SELECT completed\r\n"
    )
