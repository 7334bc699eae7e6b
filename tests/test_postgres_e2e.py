"""One ``popgate serve`` node on PostgreSQL, end to end (issue 13, phase 1).

A real Dovecot POP3 upstream, the real ``popgate serve`` process with ``[store] backend =
"postgresql"``, Python's imaplib as the client: mail arrives byte-identical, an IDLE
client hears of new mail, ``popgate status`` answers over the control socket, the
store survives a restart with the same UIDs, and the node's log shows no reactor-thread
store call (the store threads are wired in) and no password.
"""

from __future__ import annotations

import imaplib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.postgres import new_schema, shared_server
from tests.test_e2e_skeleton import imap_messages, upstream_entry, upstream_retr, wait_for_count

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dovecot_server():
    with Dovecot() as server:
        server.add_user("alice", "secret")
        yield server


def test_serve_on_postgresql_fetches_pushes_and_restarts(dovecot_server, tmp_path):
    pg = shared_server()
    schema = new_schema(pg)
    pw = tmp_path / "pg-password"
    pg.write_password_file(pw)
    server = dovecot_server
    mails = samplemail.generate(12, seed=13)
    for raw in mails[:10]:
        server.deliver("alice", raw)
    gw = GatewayProcess(
        tmp_path / "gw",
        users={"alice": "alice-password"},
        upstreams=[upstream_entry(server, "none")],
        tables={
            "store": {
                "backend": "postgresql",
                "dsn": f"{pg.dsn}?options=-csearch_path%3D{schema}",
                "password_file": str(pw),
            },
            "cluster": {"node": "node-a", "lease": "10s"},
        },
    )
    with gw:
        got = wait_for_count(gw.port, 10)
        assert sorted(got.values()) == sorted(upstream_retr(server))
        imap = imaplib.IMAP4("127.0.0.1", gw.port)
        imap.login("alice", "alice-password")
        imap.select("INBOX")
        tag = imap._new_tag().decode()
        imap.send(f"{tag} IDLE\r\n".encode())
        assert imap.readline().startswith(b"+")
        server.deliver("alice", mails[10])
        deadline = time.monotonic() + 60
        pushed = b""
        while b"EXISTS" not in pushed and time.monotonic() < deadline:
            pushed += imap.readline()
        assert b"* 11 EXISTS" in pushed
        imap.send(b"DONE\r\n")
        imap.readline()
        imap.logout()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        status = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--config", str(gw.config_path)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert status.returncode == 0, status.stderr
        assert "alice-isp" in status.stdout
        before = wait_for_count(gw.port, 11)
    with gw:  # a restart finds the same store: same UIDs, nothing fetched twice
        server.deliver("alice", mails[11])
        after = wait_for_count(gw.port, 12)
        assert {uid: after[uid] for uid in before} == before
        assert sorted(after.values()) == sorted(upstream_retr(server))
        assert len(imap_messages(gw.port)) == 12
    text = gw.log_text()
    assert "store.reactor_thread_call" not in text and "imap.internal_error" not in text
    assert pg.password not in text and "alice-password" not in text
