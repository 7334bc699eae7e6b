"""Issue 6 acceptance: a household shares one POP3 mailbox, end to end.

A real Dovecot pop3d holds family@isp; the real ``popgate serve`` fetches it into the
``[shared.family]`` mailbox of alice and bob; both read it with imapclient. alice reads
three messages and bob still sees them unread; bob deletes one and alice sees it gone;
alice's private folder stays invisible to bob; both are pushed new shared mail in IDLE.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}
SHARED = "Shared/family"
POLL = "10s"
WAIT = 90.0
"""Seconds to wait for fetched mail to show up (a safety net, not a timing assertion)."""
IDLE_ROUNDS = 90
"""idle_check() calls of up to a second each before a push counts as missing."""


@pytest.fixture
def household(tmp_path: Path) -> Iterator[tuple[Dovecot, GatewayProcess]]:
    with Dovecot() as upstream:
        upstream.add_user("family", "family-secret")
        gateway = GatewayProcess(
            tmp_path / "gw",
            users=PASSWORDS,
            tables={"shared.family": {"members": ["alice", "bob"]}},
            upstreams=[
                {
                    "name": "family-isp",
                    "owner": "shared:family",
                    "host": "127.0.0.1",
                    "port": upstream.pop3_port,
                    "tls": "none",
                    "username": "family",
                    "password": "family-secret",
                    "poll_interval": POLL,
                }
            ],
        )
        with gateway:
            yield upstream, gateway


def client(gateway: GatewayProcess, user: str) -> IMAPClient:
    imap = IMAPClient("127.0.0.1", port=gateway.port, ssl=False, timeout=30)
    imap.login(user, PASSWORDS[user])
    return imap


def wait_for_messages(imap: IMAPClient, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while imap.folder_status(SHARED, ["MESSAGES"])[b"MESSAGES"] < count:
        assert time.monotonic() < deadline, f"{count} messages never arrived in {SHARED}"
        time.sleep(0.5)


def wait_for_push(imap: IMAPClient, kind: bytes) -> list:
    seen: list = []
    for _ in range(IDLE_ROUNDS):
        seen.extend(imap.idle_check(timeout=1))
        if any(len(item) > 1 and item[1] == kind for item in seen):
            return seen
    raise AssertionError(f"no {kind!r} pushed; got {seen!r}")


def test_household_shares_one_pop3_mailbox_with_private_read_state(
    household: tuple[Dovecot, GatewayProcess],
) -> None:
    upstream, gateway = household
    for raw in samplemail.generate(3, seed=6):
        upstream.deliver("family", raw)
    alice, bob = client(gateway, "alice"), client(gateway, "bob")
    try:
        assert tuple(alice.namespace()) == ((("", "/"),), None, (("Shared/", "/"),))
        wait_for_messages(alice, 3)

        # alice reads all three; bob still sees them unread.
        alice.select_folder(SHARED)
        uids = alice.search("ALL")
        assert len(uids) == 3
        alice.fetch(uids, ["BODY[]"])
        assert alice.search("UNSEEN") == []
        assert bob.folder_status(SHARED, ["UNSEEN"])[b"UNSEEN"] == 3
        bob.select_folder(SHARED)
        assert bob.search("UNSEEN") == uids
        assert all(b"\\Seen" not in f[b"FLAGS"] for f in bob.fetch(uids, ["FLAGS"]).values())

        # bob deletes one; alice sees it gone.
        bob.delete_messages([uids[0]])
        bob.expunge()
        alice.noop()
        assert alice.search("ALL") == uids[1:]

        # alice's private folder is invisible to bob.
        alice.create_folder("Diary")
        alice.select_folder("INBOX")
        bob_names = {name for _flags, _delim, name in bob.list_folders()}
        assert "Diary" not in bob_names and SHARED in bob_names
        assert not bob.folder_exists("Diary")

        # Both are pushed new shared mail while idling.
        alice.select_folder(SHARED)
        alice.idle()
        bob.idle()
        upstream.deliver("family", samplemail.generate(1, seed=66)[0])
        wait_for_push(alice, b"EXISTS")
        wait_for_push(bob, b"EXISTS")
        alice.idle_done()
        bob.idle_done()
        assert len(alice.search("ALL")) == 3
        (new,) = alice.search("UNSEEN")  # alice has read everything but the new one
        assert bob.search("UNSEEN") == [*uids[1:], new]  # bob has read nothing
    finally:
        for imap in (alice, bob):
            try:
                imap.logout()
            except Exception:
                imap.shutdown()
