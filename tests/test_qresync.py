"""Cheap resynchronisation with QRESYNC (RFC 7162 §3.2), issue 4 acceptance.

A device that was offline knows its mailbox as (UIDVALIDITY, HIGHESTMODSEQ, known UIDs).
Meanwhile another device changed flags on 10 of 10,000 messages and expunged 5. One
``SELECT INBOX (QRESYNC (...))`` must bring it up to date with responses proportional to
the changes (under 4 KB), not to the mailbox: ``* VANISHED (EARLIER)`` for exactly the
expunged UIDs and one FETCH for exactly each changed message. What makes this possible
must survive a restart: expunged UIDs are remembered in the store file with their
modseq, and UIDVALIDITY never changes (not on restart, not when other mailboxes are
renamed, RFC 3501 §2.3.1.1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.store.interfaces import NewMessage
from gateway.testing.imapclient import USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message

MESSAGES = 10_000
BULK = 1_000
"""Messages per ``append_many`` transaction while filling the mailbox."""

RESYNC_BYTE_BUDGET = 4 * 1024
"""The acceptance bound for everything the server sends in answer to the SELECT."""

FLAG_CHANGES = (17, 400, 1_234, 2_500, 4_096, 5_000, 6_001, 7_777, 9_000, 9_999)
EXPUNGES = (3, 2_222, 5_555, 8_888, 10_000)

_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)\r\n$")
_VANISHED_EARLIER = re.compile(rb"^\* VANISHED \(EARLIER\) ([0-9:,]+)\r\n$")


def parse_set(text: bytes) -> set[int]:
    out: set[int] = set()
    for part in text.split(b","):
        low, _sep, high = part.partition(b":")
        out.update(range(int(low), int(high or low) + 1))
    return out


def fill(server: ServerHandle, count: int) -> None:
    """``count`` small distinct messages in INBOX, in bulk transactions (on the reactor)."""
    box = server.mailbox_id()

    def run() -> None:
        for start in range(0, count, BULK):
            batch = [
                NewMessage(message(f"bulk {i}", body=f"Message number {i}.\r\n"))
                for i in range(start, min(count, start + BULK))
            ]
            server.store.append_many(box, batch)

    server.call(run)


def select_state(client: RawClient, tag: str, command: str) -> tuple[bytes, dict[str, int]]:
    """Send SELECT; return everything the server sent for it and its response codes."""
    out = client.command(tag, command)
    assert out.endswith(b"OK [READ-WRITE] SELECT completed\r\n"), out[-200:]
    codes = {
        name.decode(): int(value)
        for name, value in re.findall(rb"\[(UIDVALIDITY|HIGHESTMODSEQ|UIDNEXT) (\d+)\]", out)
    }
    return out, codes


def full_state(client: RawClient) -> dict[int, frozenset[str]]:
    """UID → flags (without \\Recent) of every message, by ``UID FETCH 1:* (FLAGS)``."""
    out = client.command("F", "UID FETCH 1:* (FLAGS)")
    state: dict[int, frozenset[str]] = {}
    for line in out.splitlines(keepends=True)[:-1]:
        m = _FETCH.match(line)
        assert m is not None, line
        uid = int(re.search(rb"UID (\d+)", m.group(2)).group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", m.group(2)).group(1).decode().split()
        state[uid] = frozenset(f for f in flags if f != "\\Recent")
    return state


def store_truth(server: ServerHandle) -> dict[int, frozenset[str]]:
    rows = server.call(server.store.message_rows, server.mailbox_id())
    return {row.uid: frozenset(row.flags - {"\\Recent"}) for row in rows}


def another_device_changes_things(server: ServerHandle) -> None:
    """10 flag changes (one STORE each) and 5 expunges, by a second session."""
    with server.connect() as other:
        other.login()
        other.command("S", "SELECT INBOX")
        for number, uid in enumerate(FLAG_CHANGES):
            flag = ("\\Seen", "\\Flagged", "$Important")[number % 3]
            assert b"S OK" in other.command("S", f"UID STORE {uid} +FLAGS.SILENT ({flag})")
        other.command("D", f"UID STORE {','.join(map(str, EXPUNGES))} +FLAGS.SILENT (\\Deleted)")
        out = other.command("X", f"UID EXPUNGE {','.join(map(str, EXPUNGES))}")
        assert out.count(b" EXPUNGE\r\n") == len(EXPUNGES)


@pytest.fixture
def big_server(tmp_path: Path):
    with running_server(tmp_path) as server:
        fill(server, MESSAGES)
        yield server


def test_qresync_select_sends_only_the_changes(big_server: ServerHandle) -> None:
    """RFC 7162 §3.2.5.1: on 10,000 messages, after 10 flag changes and 5 expunges, SELECT
    with QRESYNC answers with one ``VANISHED (EARLIER)`` naming exactly the 5 UIDs and one
    FETCH (UID, FLAGS, MODSEQ) for exactly each of the 10 changed messages, all in under
    4 KB; applying them to the old state gives the store's state."""
    server = big_server
    with server.connect() as device:
        device.login()
        _out, before = select_state(device, "A", "SELECT INBOX")
        known = full_state(device)
        assert len(known) == MESSAGES
        device.command("L", "LOGOUT")

    another_device_changes_things(server)

    with server.connect() as device:
        device.login()
        assert b"* ENABLED QRESYNC" in device.command("E", "ENABLE QRESYNC")
        sent, after = select_state(
            device,
            "B",
            f"SELECT INBOX (QRESYNC ({before['UIDVALIDITY']} {before['HIGHESTMODSEQ']}"
            f" 1:{MESSAGES}))",
        )
        print(f"QRESYNC SELECT on {MESSAGES} messages: {len(sent)} bytes")
        assert len(sent) < RESYNC_BYTE_BUDGET
        assert after["UIDVALIDITY"] == before["UIDVALIDITY"]
        assert after["HIGHESTMODSEQ"] > before["HIGHESTMODSEQ"]
        assert b"* %d EXISTS\r\n" % (MESSAGES - len(EXPUNGES)) in sent

        lines = sent.splitlines(keepends=True)
        vanished = [m for m in map(_VANISHED_EARLIER.match, lines) if m]
        assert len(vanished) == 1
        assert parse_set(vanished[0].group(1)) == set(EXPUNGES)
        fetched: dict[int, frozenset[str]] = {}
        for m in filter(None, map(_FETCH.match, lines)):
            items = m.group(2)
            uid = int(re.search(rb"UID (\d+)", items).group(1))
            assert uid not in fetched
            assert re.search(rb"MODSEQ \((\d+)\)", items) is not None
            flags = re.search(rb"FLAGS \(([^)]*)\)", items).group(1).decode().split()
            fetched[uid] = frozenset(flags)
        assert set(fetched) == set(FLAG_CHANGES)

        for uid in EXPUNGES:
            del known[uid]
        known.update(fetched)
        assert known == store_truth(server)

        # Known UIDs limit what VANISHED names (RFC 7162 §3.2.5: a client that only
        # caches the older half hears only about that half).
        half, _codes = select_state(
            device,
            "H",
            f"SELECT INBOX (QRESYNC ({before['UIDVALIDITY']} {before['HIGHESTMODSEQ']}"
            f" 1:{MESSAGES // 2}))",
        )
        assert half.startswith(b"* OK [CLOSED]")
        vanished = [m for m in map(_VANISHED_EARLIER.match, half.splitlines(True)) if m]
        assert len(vanished) == 1
        assert parse_set(vanished[0].group(1)) == {u for u in EXPUNGES if u <= MESSAGES // 2}

        # For comparison, what a client without QRESYNC must download to learn the same.
        full = device.command("F", "UID FETCH 1:* (FLAGS)")
        print(f"full flag resync instead: {len(full)} bytes")
        assert len(full) > 50 * len(sent)


def test_expunged_uids_and_uidvalidity_survive_a_restart_and_renames(tmp_path: Path) -> None:
    """RFC 7162 §3.2.10 / RFC 3501 §2.3.1.1: after the server restarts on the same store
    file, QRESYNC still reports what was expunged before the restart; UIDVALIDITY of
    every mailbox stays the same across the restart and across RENAMEs of *other*
    mailboxes (a renamed mailbox keeps its own, too)."""
    with running_server(tmp_path) as server:
        fill(server, 50)
        with server.connect() as device:
            device.login()
            _out, before = select_state(device, "A", "SELECT INBOX")
            device.command("C1", "CREATE Projects/2024")
            device.command("C2", "CREATE Old")
            device.command("S", "STORE 10:12 +FLAGS.SILENT (\\Deleted)")
            device.command("X", "EXPUNGE")
            device.command("F", "STORE 20 +FLAGS.SILENT (\\Flagged)")
        validities = {m.name: m.uidvalidity for m in server.call(server.store.list_mailboxes, USER)}
    with running_server(tmp_path) as server:  # a restart: same file, new process state
        with server.connect() as device:
            device.login()
            device.command("R1", "RENAME Projects Work")
            device.command("R2", "RENAME Old Older")
            device.command("R3", "RENAME INBOX Saved")  # RFC 3501 §6.3.5: a new mailbox
            renamed = {"Projects": "Work", "Projects/2024": "Work/2024", "Old": "Older"}
            now = {m.name: m.uidvalidity for m in server.call(server.store.list_mailboxes, USER)}
            for name, validity in validities.items():
                assert now[renamed.get(name, name)] == validity, name
            assert now["Saved"] not in validities.values()

            device.command("E", "ENABLE QRESYNC")
            sent, after = select_state(
                device,
                "B",
                f"SELECT INBOX (QRESYNC ({before['UIDVALIDITY']} {before['HIGHESTMODSEQ']}))",
            )
            assert after["UIDVALIDITY"] == before["UIDVALIDITY"]
            vanished = [m for m in map(_VANISHED_EARLIER.match, sent.splitlines(True)) if m]
            # 10:12 were expunged before the restart, everything else went with the
            # RENAME of INBOX: every UID the client could know is reported gone.
            assert len(vanished) == 1 and parse_set(vanished[0].group(1)) == set(range(1, 51))
            assert b"* 0 EXISTS\r\n" in sent
