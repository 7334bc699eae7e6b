"""Differential checks against Dovecot 2.3 imapd: MYRIGHTS/GETACL with its acl plugin (enabled
in this test's private config only), and NOTIFY (built into Dovecot 2.3).

The same steps run against both servers; the answers are compared after normalising what
may differ by design: the quoting of names, Dovecot's RFC 2086 rights ``c``/``d``, and the
rights popgate withholds on purpose (``p`` and ``a`` everywhere, ``x`` on INBOX: see
:mod:`gateway.imap.acl`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapclient import RawClient, ServerHandle, running_server
from gateway.testing.messages import message

USER, PASSWORD = "alice", "secret"

ACL_CONFIG = """
mail_plugins = $mail_plugins acl
protocol imap {
  mail_plugins = $mail_plugins imap_acl
}
plugin {
  acl = vfile
}
"""

WITHHELD = {"INBOX": set("pax"), "Work": set("pa")}
"""Rights Dovecot's owner has and popgate does not give (module docstring of acl.py)."""


@pytest.fixture
def reference(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    return dovecot_factory(users={USER: PASSWORD}, extra_config=ACL_CONFIG)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path, users={USER: PASSWORD}) as handle:
        yield handle


def login(port: int) -> RawClient:
    client = RawClient(port)
    client.greeting()
    assert b"OK" in client.command("L", f'LOGIN {USER} "{PASSWORD}"')
    return client


def rights(reply: bytes) -> tuple[str, set[str]]:
    m = re.search(rb'^\* MYRIGHTS "?([^" ]+)"? ([a-z0-9]*)\r$', reply, re.M)
    assert m, reply
    return m.group(1).decode(), set(m.group(2).decode()) - set("cd")


def test_myrights_are_dovecots_minus_what_popgate_withholds(
    reference: Dovecot, gateway: ServerHandle
) -> None:
    answers = {}
    for which, port in (("dovecot", reference.imap_port), ("popgate", gateway.port)):
        with login(port) as client:
            client.command("C", "CREATE Work")
            caps = client.command("K", "CAPABILITY")
            assert b" ACL" in caps, (which, caps)
            answers[which] = {
                name: rights(client.command("M", f"MYRIGHTS {name}")) for name in ("INBOX", "Work")
            }
            refused = client.command("S", "SETACL Nope bob lr")
            assert re.search(rb"^S NO ", refused, re.M), (which, refused)
            # Differs by design: Dovecot answers MYRIGHTS for a name that does not exist
            # (the rights one would have there); popgate says NONEXISTENT, as for a
            # household the user is not in (no probing, RFC 4314 §6).
            missing = client.command("N", "MYRIGHTS Nope")
            if which == "popgate":
                assert missing.startswith(b"N NO [NONEXISTENT]"), missing
    for name in ("INBOX", "Work"):
        d_name, d_rights = answers["dovecot"][name]
        p_name, p_rights = answers["popgate"][name]
        assert d_name == p_name == name
        assert p_rights == d_rights - WITHHELD[name], (name, d_rights, p_rights)


def _status_items(line: bytes) -> tuple[str, dict[str, int]]:
    m = re.match(rb'\* STATUS "?([^" ]+)"? \(([^)]*)\)\r\n', line)
    assert m, line
    words = m.group(2).decode().split()
    items = {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
    for own in ("UIDVALIDITY", "HIGHESTMODSEQ"):
        if own in items:
            items[own] = 0  # each server counts its own; present in both is what counts
    return m.group(1).decode(), items


def test_notify_status_events_match_dovecot(
    dovecot_factory: Callable[..., Dovecot], gateway: ServerHandle
) -> None:
    """Another connection APPENDs to and flags in a watched mailbox: both servers push the
    same STATUS to the NOTIFY-ing connection, without a command from it."""
    reference = dovecot_factory(users={USER: PASSWORD})
    seen: dict[str, list[tuple[str, dict[str, int]]]] = {}
    for which, port in (("dovecot", reference.imap_port), ("popgate", gateway.port)):
        with login(port) as watcher, login(port) as other:
            other.command("C", "CREATE Work")
            watcher.command("S", "SELECT INBOX")
            reply = watcher.command(
                "N",
                "NOTIFY SET STATUS (SELECTED (MessageNew MessageExpunge)) "
                "(PERSONAL (MessageNew MessageExpunge FlagChange))",
            )
            assert re.search(rb"^N OK ", reply, re.M), reply
            # NOTIFY SET STATUS: where each watched mailbox stands (Work; popgate has more
            # default mailboxes than Dovecot's INBOX-only account)
            initial = [
                _status_items(line + b"\r\n")
                for line in reply.split(b"\r\n")
                if line.startswith(b"* STATUS") and b"Work" in line
            ]
            other.command("A", b"APPEND Work {%d+}\r\n" % len(message("x")) + message("x"))
            first = _status_items(watcher.read_line())
            other.command("E", "SELECT Work")
            other.command("F", "STORE 1 +FLAGS (\\Seen)")
            second = _status_items(watcher.read_line())
            other.command("D", "STORE 1 +FLAGS.SILENT (\\Deleted)")  # news under CONDSTORE
            third = _status_items(watcher.read_line())
            other.command("X", "EXPUNGE")
            fourth = _status_items(watcher.read_line())
            seen[which] = [*initial, first, second, third, fourth]
    assert seen["popgate"] == seen["dovecot"], seen
