"""Three ``popgate serve`` nodes on one PostgreSQL: changes reach every node (issue 13).

Acceptance, end to end with real processes: an IDLE client on node 2 sees EXISTS for mail
that node 1 fetched from a real Dovecot POP3 upstream, an untagged FETCH for a flag that
a client changed on node 3 and EXPUNGE for a message deleted there (RFC 2177, RFC 3501
§7.4.1); two mbsync devices, one on node 1 and one on node 3, agree on flags, moves,
deletes and new POP3 mail. Only node 1 has the upstream configured, so these tests do not
depend on upstream leases.
"""

from __future__ import annotations

import imaplib
import re
import time
from pathlib import Path

import pytest

from gateway.testing import samplemail
from gateway.testing.cluster import cluster_nodes, fetch_now
from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.postgres import shared_server
from tests.test_e2e_skeleton import upstream_entry, wait_for_count
from tests.test_mbsync import IMAP_PASSWORD, IMAP_USER, two_devices_story, unique_messages

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.postgres]

PUSH_WAIT = 30.0
"""Seconds an IDLE client waits for a push: a safety net, it comes in well under one."""


@pytest.fixture
def upstream():
    with Dovecot() as server:
        server.add_user("alice", "secret")
        yield server


def _nodes(tmp_path: Path, upstream: Dovecot) -> list[GatewayProcess]:
    """node-1 polls the upstream (rarely: the tests say when, with ``popgate fetch``);
    node-2 and node-3 only serve IMAP."""
    entry = upstream_entry(upstream, "none", poll_interval="1h")
    return cluster_nodes(
        tmp_path,
        shared_server(),
        users={IMAP_USER: IMAP_PASSWORD},
        upstreams=[[entry], [], []],
    )


class Idler:
    """An IMAP client idling on INBOX (RFC 2177) that collects the untagged lines."""

    def __init__(self, port: int) -> None:
        self.imap = imaplib.IMAP4("127.0.0.1", port)
        self.imap.login(IMAP_USER, IMAP_PASSWORD)
        self.imap.select("INBOX")
        self.tag = self.imap._new_tag().decode()
        self.imap.send(f"{self.tag} IDLE\r\n".encode())
        assert self.imap.readline().startswith(b"+")
        self.lines: list[bytes] = []
        self._read = 0  # lines before this one were matched or passed over already

    def wait_for(self, pattern: bytes, timeout: float = PUSH_WAIT) -> bytes:
        """Read until a line matching ``pattern`` comes after the last match; returns it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            for index in range(self._read, len(self.lines)):
                if regex.search(self.lines[index]):
                    self._read = index + 1
                    return self.lines[index]
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} while idling; heard {self.lines!r}"
            self.imap.sock.settimeout(remaining)
            try:
                self.lines.append(self.imap.readline())
            except TimeoutError:
                continue

    def done(self) -> None:
        self.imap.sock.settimeout(PUSH_WAIT)
        self.imap.send(b"DONE\r\n")
        while not self.imap.readline().startswith(self.tag.encode()):
            pass
        self.imap.logout()


def _client(port: int) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(IMAP_USER, IMAP_PASSWORD)
    assert imap.select("INBOX")[0] == "OK"
    return imap


def test_idle_on_node_2_hears_mail_fetched_by_node_1_and_flags_set_on_node_3(
    upstream: Dovecot, tmp_path: Path
) -> None:
    mails = samplemail.generate(4, seed=31)
    for raw in mails[:2]:
        upstream.deliver("alice", raw)
    node1, node2, node3 = nodes = _nodes(tmp_path, upstream)
    for node in nodes:
        node.start()
    try:
        assert len(wait_for_count(node2.port, 2)) == 2  # node 1's first pass, seen on node 2
        for node in nodes:
            node.wait_for_event("store.notify.connected")
        idler = Idler(node2.port)

        upstream.deliver("alice", mails[2])
        fetch_now(node1)
        idler.wait_for(rb"^\* 3 EXISTS")

        other = _client(node3.port)
        assert other.store("1", "+FLAGS", r"(\Flagged)")[0] == "OK"
        line = idler.wait_for(rb"^\* 1 FETCH .*\\Flagged")
        assert b"\\Flagged" in line

        assert other.store("2", "+FLAGS", r"(\Deleted)")[0] == "OK"
        assert other.expunge()[0] == "OK"
        idler.wait_for(rb"^\* 2 EXPUNGE")
        other.logout()

        upstream.deliver("alice", mails[3])
        fetch_now(node1)
        idler.wait_for(rb"^\* 3 EXISTS", timeout=PUSH_WAIT)  # 3 again: one was expunged
        assert sum(b"EXISTS" in line for line in idler.lines) == 2
        idler.done()
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        text = node.log_text()
        assert "store.reactor_thread_call" not in text and "imap.internal_error" not in text
        assert shared_server().password not in text and IMAP_PASSWORD not in text
    assert "store.notify.lost" not in node2.log_text()


def test_two_mbsync_devices_on_nodes_1_and_3_converge(upstream: Dovecot, tmp_path: Path) -> None:
    """tests/test_mbsync.py's story with device A on node 1 and device B on node 3:
    flags, a move and a delete made on A show on B, flags made on B show on A, and new
    POP3 mail fetched by node 1 reaches both."""
    first = unique_messages(6, seed=11)
    for raw in first:
        upstream.deliver("alice", raw)
    node1, _node2, node3 = nodes = _nodes(tmp_path, upstream)
    for node in nodes:
        node.start()
    try:
        two_devices_story(
            upstream, tmp_path, first, node1.port, node3.port, fetch=lambda: fetch_now(node1)
        )
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        assert "imap.internal_error" not in node.log_text()
