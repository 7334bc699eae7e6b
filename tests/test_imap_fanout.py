"""Who a store change wakes (issue 19): with an inline store the factory asks only the
connections idling on the changed mailbox and those under NOTIFY (RFC 5465), not every
connection, so one APPEND to a household's INBOX costs its IDLE phones alone; the index
follows IDLE starting and ending, NOTIFY being set and dropped, and connections closing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.imap.server import IMAPServerProtocol
from gateway.testing.imapclient import ServerHandle, running_server


@pytest.fixture
def server(tmp_path: Path):
    with running_server(tmp_path) as handle:
        yield handle


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How often each connection (by its session's peer port) was told of a change."""
    calls: Counter[int] = Counter()
    real = IMAPServerProtocol.mailbox_changed

    def counting(self: IMAPServerProtocol, mailbox_id: int) -> None:
        calls[int(self.peer.rsplit(":", 1)[1])] += 1
        real(self, mailbox_id)

    monkeypatch.setattr(IMAPServerProtocol, "mailbox_changed", counting)
    return calls


def port(client) -> int:
    return client.sock.getsockname()[1]


def _peer_ports(protocols) -> set[int]:
    return {int(p.peer.rsplit(":", 1)[1]) for p in protocols}


def _index(factory) -> tuple[dict[int, set[int]], set[int]]:
    """The factory's index as {mailbox id: peer ports} and the NOTIFY peer ports (read
    on the reactor thread)."""
    idle_on = {m: _peer_ports(ps) for m, ps in factory._idle_on.items()}
    return idle_on, _peer_ports(factory._notified)


def index(server: ServerHandle) -> tuple[dict[int, set[int]], set[int]]:
    return server.call(_index, server.factory)


def test_a_change_asks_the_idlers_of_its_mailbox_and_notify_sessions_only(
    server: ServerHandle, asked: Counter[int]
) -> None:
    inbox, other = server.mailbox_id("INBOX"), None
    with (
        server.login() as idler,
        server.login() as selected,
        server.login() as elsewhere,
        server.login() as watcher,
        server.login() as bystander,
    ):
        idler.command("s", "SELECT INBOX")
        idler.send(b"i IDLE\r\n")
        assert idler.read_line() == b"+ idling\r\n"
        selected.command("s", "SELECT INBOX")  # selected, not idling: told at its next command
        elsewhere.command("c", "CREATE Other")
        other = server.mailbox_id("Other")
        elsewhere.command("s", "SELECT Other")
        elsewhere.send(b"i IDLE\r\n")
        assert elsewhere.read_line() == b"+ idling\r\n"
        watcher.command("n", "NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        assert index(server) == ({inbox: {port(idler)}, other: {port(elsewhere)}}, {port(watcher)})
        asked.clear()
        server.append("INBOX")
        assert idler.read_line().endswith(b" EXISTS\r\n")
        server.wait_until(lambda: asked[port(watcher)] >= 1, "the NOTIFY session told")
        assert set(asked) == {port(idler), port(watcher)}
        assert port(bystander) not in asked and port(selected) not in asked
        idler.send(b"DONE\r\n")
        assert idler.read_until_tagged("i").endswith(b"i OK IDLE terminated\r\n")
        watcher.command("n2", "NOTIFY NONE")
        assert index(server) == ({other: {port(elsewhere)}}, set())
        elsewhere.send(b"DONE\r\n")
        elsewhere.read_until_tagged("i")
        idler.send(b"j IDLE\r\n")
        assert idler.read_line() == b"+ idling\r\n"
        assert index(server) == ({inbox: {port(idler)}}, set())
    server.wait_until(lambda: _index(server.factory) == ({}, set()), "closed ones forgotten")
