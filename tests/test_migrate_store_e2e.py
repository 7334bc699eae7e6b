"""Moving a running installation from SQLite to PostgreSQL, end to end (issue 13 acceptance).

A real Dovecot POP3 upstream and real ``popgate serve`` processes: a node on SQLite fetches
the mail; a QRESYNC client (RFC 7162, raw socket) records UIDVALIDITY, HIGHESTMODSEQ and
the UIDs it knows; more changes happen that it does not see; the node stops;
``popgate migrate-store`` copies the store; a node on PostgreSQL starts. The client's
``SELECT INBOX (QRESYNC (...))`` against it sees no UIDVALIDITY change, VANISHED only for
the message expunged after it looked, FETCH only for the messages changed after it looked
(one of them on the PostgreSQL node), and the PostgreSQL node fetches nothing twice: the
messages still on the upstream (kept there) stay known, an expunged one does not come
back, and the one new upstream message arrives once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.imapclient import RawClient
from gateway.testing.postgres import new_schema, shared_server
from tests.test_e2e_skeleton import (
    imap_messages,
    upstream_entry,
    upstream_retr,
    wait_for_count,
)

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "alice", "alice-password"


@pytest.fixture
def dovecot_server():
    with Dovecot() as server:
        server.add_user("alice", "secret")
        yield server


def client(port: int) -> RawClient:
    raw = RawClient(port)
    raw.login(USER, PASSWORD)
    assert b"E1 OK" in raw.command("E1", "ENABLE QRESYNC")
    return raw


def number(pattern: bytes, reply: bytes) -> int:
    found = re.search(pattern, reply)
    assert found is not None, reply
    return int(found.group(1))


def fetched_flags(reply: bytes) -> dict[int, set[str]]:
    """UID → FLAGS of the untagged FETCH responses in a reply."""
    out = {}
    for line in reply.split(b"\r\n"):
        m = re.match(rb"\* \d+ FETCH \((.*)\)$", line)
        if m is None:
            continue
        uid = re.search(rb"UID (\d+)", m.group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", m.group(1))
        assert uid is not None and flags is not None, line
        out[int(uid.group(1))] = set(flags.group(1).decode().split())
    return out


def test_qresync_client_and_fetcher_carry_on_after_migrate_store(dovecot_server, tmp_path):
    server = dovecot_server
    mails = samplemail.generate(7, seed=29)
    for raw in mails[:6]:
        server.deliver(USER, raw)
    upstream = upstream_entry(server, "none")
    old = GatewayProcess(tmp_path / "sqlite-node", users={USER: PASSWORD}, upstreams=[upstream])
    with old:
        assert len(wait_for_count(old.port, 6)) == 6
        with client(old.port) as imap:
            imap.command("S1", "SELECT INBOX")
            imap.command("F1", "UID STORE 1 +FLAGS (\\Seen)")
            imap.command("F2", "UID STORE 2 +FLAGS (\\Deleted)")
            imap.command("X1", "UID EXPUNGE 2")
            known = imap.command("S2", "SELECT INBOX")
        uidvalidity = number(rb"UIDVALIDITY (\d+)", known)
        modseq = number(rb"HIGHESTMODSEQ (\d+)", known)
        known_uids = "1,3:6"
        with client(old.port) as other:  # changes the first client has not seen
            other.command("S1", "SELECT INBOX")
            other.command("F1", "UID STORE 3 +FLAGS (\\Flagged)")
            other.command("F2", "UID STORE 4 +FLAGS (\\Deleted)")
            other.command("X1", "UID EXPUNGE 4")
        before = imap_messages(old.port)
    assert sorted(before) == [1, 3, 5, 6]

    pg = shared_server()
    schema = new_schema(pg)
    new = GatewayProcess(
        tmp_path / "pg-node",
        users={USER: PASSWORD},
        upstreams=[upstream],
        tables={
            "store": {
                "backend": "postgresql",
                "dsn": f"{pg.dsn}?options=-csearch_path%3D{schema}",
                "password_file": str(pg.write_password_file(tmp_path / "pg-password")),
            },
            "cluster": {"node": "node-a", "lease": "10s"},
        },
    )
    moved = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "migrate-store",
            "--config",
            str(new.config_path),
            "--from",
            str(old.state_dir / "popgate.sqlite3"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert moved.returncode == 0, moved.stderr
    assert "ledger rows: 6 over 1 upstreams" in moved.stdout

    with new:
        with client(new.port) as other:  # a change made on the PostgreSQL node
            other.command("S1", "SELECT INBOX")
            other.command("F1", "UID STORE 5 +FLAGS (\\Answered)")
        with client(new.port) as imap:
            reply = imap.command(
                "Q1", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} {known_uids}))"
            )
            assert b"Q1 OK" in reply, reply
            assert number(rb"UIDVALIDITY (\d+)", reply) == uidvalidity
            assert number(rb"HIGHESTMODSEQ (\d+)", reply) > modseq
            vanished = re.findall(rb"\* VANISHED \(EARLIER\) ([\d:,]+)", reply)
            assert vanished == [b"4"], reply
            changed = fetched_flags(reply)
            assert set(changed) == {3, 5}, reply
            assert "\\Flagged" in changed[3] and "\\Answered" in changed[5]
        # the fetcher: its first pass lists the six upstream messages and fetches none
        # (the expunged 2 and 4 stay gone); the new upstream message arrives once
        first = new.wait_for_event("pop3.fetched")
        assert (first["listed"], first["count"]) == (6, 0), first
        server.deliver(USER, mails[6])
        passes = 1
        while True:
            later = new.wait_for_event("pop3.fetched", after=passes)
            passes += 1
            if later["count"]:
                break
        assert (later["listed"], later["count"]) == (7, 1), later
        after = imap_messages(new.port)
    assert {uid: after[uid] for uid in before} == before
    (new_uid,) = set(after) - set(before)
    assert new_uid == 7
    assert after[new_uid] == upstream_retr(server)[6]
    text = new.log_text()
    assert "imap.internal_error" not in text and pg.password not in text
