"""IMAP sessions on one node hear what another node commits (issue 13), in process.

The server runs on a PostgreSQL store with its LISTEN bridge; a second store on the same
schema plays another node. Its changes reach the sessions through the bridge and the
reactor: a NOTIFY (RFC 5465 §5.1-5.3) watcher gets ``* STATUS`` for another mailbox and
EXISTS/FETCH/EXPUNGE for the selected one, an IDLE client (RFC 2177) gets EXISTS, and a
DELETE on the other node is a MailboxName event (§5.4). The end-to-end version with
three ``popgate serve`` processes is tests/test_postgres_push_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.interfaces import INBOX
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.push import ChangeBridge
from gateway.testing.imapclient import USER, ServerHandle, running_server, tagged_line
from gateway.testing.messages import message
from gateway.testing.postgres import shared_server

pytestmark = pytest.mark.postgres

WATCH = (
    "NOTIFY SET STATUS (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange))"
    " (PERSONAL (MessageNew MessageExpunge MailboxName))"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerHandle, PostgresStore]]:
    """This node's server (with its bridge) and another node's store, on one schema."""
    with running_server(tmp_path, backend="postgresql") as server:
        bridge = ChangeBridge(server.store)
        bridge.prime()
        bridge.start()
        assert bridge.connected.wait(10)
        pg = shared_server()
        other = PostgresStore(
            pg.dsn, password=pg.password, schema=server.store.schema, pool_size=1, node="other"
        )
        try:
            yield server, other
        finally:
            other.close()
            bridge.stop()


def test_a_notify_watcher_hears_another_nodes_changes(cluster) -> None:
    server, other = cluster
    work = other.create_mailbox(USER, "Work")
    inbox = other.get_mailbox(USER, INBOX).id
    with server.login() as alice:
        alice.command("S", "SELECT INBOX")
        assert tagged_line(alice.command("N", WATCH)) == b"N OK NOTIFY completed"
        other.append(work.id, message(subject="filed elsewhere"))
        assert alice.read_line().startswith(b'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 ')
        other.append(inbox, message(subject="new"))
        assert alice.read_line() == b"* 1 EXISTS\r\n"
        assert alice.read_line() == b"* 1 RECENT\r\n"
        assert alice.read_line().startswith(b"* 1 FETCH (UID 1 ")
        other.store_flags(inbox, [1], "+", ["\\Flagged"])
        assert b"\\Flagged" in alice.read_line()
        other.store_flags(inbox, [1], "+", ["\\Deleted"])
        assert b"\\Deleted" in alice.read_line()
        other.expunge(inbox)
        assert alice.read_line() == b"* 1 EXPUNGE\r\n"
        other.delete_mailbox(USER, "Work")
        assert alice.read_line() == b'* LIST (\\NonExistent) "/" "Work"\r\n'


def test_an_idle_client_hears_another_nodes_delivery(cluster) -> None:
    server, other = cluster
    inbox = other.get_mailbox(USER, INBOX).id
    with server.login() as alice:
        alice.command("S", "SELECT INBOX")
        alice.send(b"I IDLE\r\n")
        assert alice.read_line().startswith(b"+ ")
        other.append(inbox, message(subject="pushed"))
        assert alice.read_line() == b"* 1 EXISTS\r\n"
        alice.send(b"DONE\r\n")
        while not alice.read_line().startswith(b"I OK"):
            pass
