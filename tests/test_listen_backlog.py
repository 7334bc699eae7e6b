"""Listen queues (issue 19, gateway/app/listening.py): every listener asks for a backlog
that fits a reconnecting herd, a ``[[listeners]]`` table or the endpoint string may say
otherwise, a kernel cap below it is logged, and a listener nobody accepts on still
completes that many handshakes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from twisted.application import service
from twisted.internet import endpoints, protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import MemoryReactorClock

from gateway.app import config
from gateway.app.listening import (
    ACCEPT_BATCH,
    DEFAULT_BACKLOG,
    accept_in_batches,
    add_imap_listeners,
    listen_on,
    listening_service,
    somaxconn,
)

TWISTED_DEFAULT = 50


def test_every_listening_endpoint_kind_gets_the_default_backlog() -> None:
    for description in (
        "tcp:143",
        "tcp6:143:interface=\\:\\:1",
        "ssl:993:privateKey=k.pem:certKey=c.pem",
        "unix:/run/popgate/imap.sock",
    ):
        assert listen_on(description, limit=4096) == f"{description}:backlog={DEFAULT_BACKLOG}"


def test_a_configured_backlog_and_the_endpoint_strings_own_are_kept() -> None:
    assert listen_on("tcp:143", 4000, limit=4096) == "tcp:143:backlog=4000"
    assert listen_on("tcp:143:backlog=77", limit=4096) == "tcp:143:backlog=77"


def test_systemd_sockets_are_left_as_written() -> None:
    """systemd opened and sized that socket (its .socket unit's Backlog=)."""
    assert listen_on("systemd:domain=INET:index=0", limit=4096) == "systemd:domain=INET:index=0"


def test_a_kernel_cap_below_the_backlog_is_logged_with_the_sysctl() -> None:
    with capture_logs() as events:
        listen_on("tcp:143", limit=128)
        listen_on("tcp:144", 100, limit=128)
    (event,) = events
    assert event["event"] == "listen.backlog_capped"
    assert (event["backlog"], event["somaxconn"]) == (DEFAULT_BACKLOG, 128)
    assert "net.core.somaxconn" in event["hint"]


def test_somaxconn_is_read_from_proc(tmp_path: Path) -> None:
    fake = tmp_path / "somaxconn"
    fake.write_text("4096\n")
    assert somaxconn(fake) == 4096
    assert somaxconn(tmp_path / "missing") is None


def test_the_endpoint_listens_with_the_backlog() -> None:
    reactor = MemoryReactorClock()
    description = listen_on("tcp:0:interface=127.0.0.1", limit=4096)
    endpoints.serverFromString(reactor, description).listen(protocol.Factory())
    ((_port, _factory, backlog, _interface),) = reactor.tcpServers
    assert backlog == DEFAULT_BACKLOG != TWISTED_DEFAULT


def test_a_listener_that_accepts_nothing_still_completes_more_handshakes_than_twisted_default() -> (
    None
):
    """The kernel completes handshakes into the accept queue whether or not the server
    accepts: on a reactor that never runs (nothing accepted), 200 connections all
    complete with the default backlog, where Twisted's 50 would hold 51."""
    reactor = SelectReactor()
    port = endpoints.serverFromString(
        reactor, listen_on("tcp:0:interface=127.0.0.1", limit=4096)
    ).listen(protocol.Factory())
    number = port.result.getHost().port
    clients = []
    try:
        for _ in range(200):
            client = socket.socket()
            client.settimeout(5.0)  # never reached: the queue has room
            client.connect(("127.0.0.1", number))
            clients.append(client)
        assert len(clients) == 200
    finally:
        for client in clients:
            client.close()
        port.result.stopListening()


def _config(tmp_path: Path, listeners: str) -> Path:
    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\nimap = ["tcp:1143:interface=127.0.0.1"]\n'
        + listeners
    )
    os.chmod(path, 0o600)
    return path


def test_a_listeners_table_sets_its_backlog_and_the_listener_uses_it(tmp_path: Path) -> None:
    cfg = config.load(
        _config(
            tmp_path, '[[listeners]]\nendpoint = "tcp:2143:interface=127.0.0.1"\nbacklog = 4000\n'
        )
    )
    assert [listener.backlog for listener in cfg.listeners] == [None, 4000]
    reactor = MemoryReactorClock()
    top = service.MultiService()
    add_imap_listeners(top, cfg, protocol.Factory(), None, reactor)
    top.startService()
    try:
        backlogs = {port: backlog for port, _f, backlog, _i in reactor.tcpServers}
        assert backlogs == {1143: DEFAULT_BACKLOG, 2143: 4000}
    finally:
        top.stopService()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", "must be 1 to 65535"),
        ("70000", "must be 1 to 65535"),
        ('"lots"', "an integer"),
    ],
)
def test_a_bad_backlog_names_the_file_and_the_key(tmp_path: Path, value: str, why: str) -> None:
    path = _config(
        tmp_path, f'[[listeners]]\nendpoint = "tcp:2143:interface=127.0.0.1"\nbacklog = {value}\n'
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: listeners[0].backlog:") and why in problem


def test_a_backlog_given_twice_is_refused(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        '[[listeners]]\nendpoint = "tcp:2143:interface=127.0.0.1:backlog=10"\nbacklog = 20\n',
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert any("listeners[0].backlog: given twice" in p for p in caught.value.problems)


class Counting(protocol.Factory):
    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return protocol.Protocol()


def _queued_connections(number: int, count: int) -> list[socket.socket]:
    """``count`` connections whose handshakes the kernel completed into the accept queue."""
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.settimeout(5.0)
        client.connect(("127.0.0.1", number))
        clients.append(client)
    return clients


def test_a_listener_takes_its_whole_queue_in_one_reactor_turn() -> None:
    """Twisted's port accepts ~100 per turn at first and shrinks to what the last turn
    found; in a storm that left the queue full (handshakes dropped). The listening
    service's port takes every queued connection in one doRead."""
    reactor = SelectReactor()
    factory = Counting()
    listener = listening_service(reactor, "tcp:0:interface=127.0.0.1", factory)
    listener.privilegedStartService()
    port = listener._waitingForPort.result
    clients = _queued_connections(port.getHost().port, 300)
    try:
        port.doRead()
        assert factory.built == 300
        port.numberAccepts = 1  # what Twisted sets after a quiet turn
        clients += _queued_connections(port.getHost().port, 200)
        port.doRead()
        assert factory.built == 500
    finally:
        for client in clients:
            client.close()
        port.stopListening()
        for connection in list(reactor.getReaders()):
            reactor.removeReader(connection)


def test_twisted_alone_takes_a_hundred_per_turn() -> None:
    """The control: a plain Twisted port on the same queue."""
    reactor = SelectReactor()
    factory = Counting()
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    clients = _queued_connections(port.getHost().port, 300)
    try:
        port.doRead()
        assert factory.built == 100
    finally:
        for client in clients:
            client.close()
        port.stopListening()


def test_accept_in_batches_leaves_ports_without_the_knob_alone() -> None:
    port = object()
    assert accept_in_batches(port) is port
    assert ACCEPT_BATCH >= DEFAULT_BACKLOG
