"""No LIST pattern may freeze the gateway (issue 20, item 1).

A pattern is the client's choice and is matched on the reactor thread against every name
the user has, so it must cost at most linear time per name and one LIST must not hold
the reactor for long. In process (a StringTransport on a fake clock): a long LIST or
LSUB pauses for the reactor between chunks of bounded work, and patterns compiling to
too large an automaton are refused. Then against the real server process (``popgate serve`` as built
by :mod:`bench.worker`, with its reactor-lag probe) over a real socket: 6,000 mailboxes of
20 characters and the 38-wildcard-pair pattern the red-team run used. Before the fix the
LIST never finished (a backtracking regex per name) and the gateway answered nobody, so
the client's socket timeout ends the test instead of a hang; the server is SIGKILLed by
:class:`bench.popgate.GatewayServer` if SIGTERM cannot reach it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from bench.popgate import GatewayServer
from gateway.app.storage import STORE_FILE
from gateway.imap import mailboxes
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SQLiteStore
from gateway.testing.imapclient import PASSWORD, USER, RawClient
from gateway.testing.imapsession import WiredServer
from gateway.testing.listwork import assert_linear, counting

MAILBOXES = 6000
NAMES = [f"{'a' * 15}{i:05d}" for i in range(MAILBOXES)]
"""Twenty characters each, none with a ``q``: the hostile pattern matches none of them."""

HOSTILE = "%*" * 38 + "q"
"""The red-team pattern: 38 wildcard pairs, then a literal no name has."""

MAX_LAG_MS = 1000.0
"""How late any reactor timer may fire while the hostile LIST runs."""

_LIST_NAME = re.compile(rb'^\* LIST \([^)]*\) "/" "?([^"\r]*)"?\r$', re.M)


# ---- in process: pauses, bounded work, the LIMIT -----------------------------------------


def _wired(store: MemoryStore) -> WiredServer:
    server = WiredServer(store, passwords={USER: PASSWORD})
    server.feed(f"a LOGIN {USER} {PASSWORD}\r\n".encode())
    server.clock.advance(0)
    assert b"a OK" in server.take()
    return server


def _run_pausing(server: WiredServer, line: bytes) -> tuple[int, bytes]:
    """Send ``line``; count the reactor turns the command takes until its tagged reply."""
    tag = line.split(b" ", 1)[0]
    server.feed(line)
    clock, turns = server.clock, 0
    while not re.search(rb"^" + tag + rb" ", server.transport.value(), re.M):
        # One reactor turn: only the call due now, not those it schedules in turn
        # (Clock.advance would run those too).
        due = min(clock.getDelayedCalls(), key=lambda c: c.getTime())
        assert due.getTime() <= clock.seconds(), "the command neither finished nor paused"
        clock.calls.remove(due)
        due.called = True
        due.func(*due.args, **due.kw)
        turns += 1
    return turns, server.take()


@pytest.mark.parametrize(
    ("command", "pattern", "lists_p"),
    [("LIST", "*", True), ("LSUB", "*", False), ("LSUB", "%", True)],
)
def test_a_long_listing_pauses_for_the_reactor_and_reads_each_name_once(
    command: str, pattern: str, lists_p: bool
) -> None:
    """3,000 subscribed mailboxes under an unsubscribed parent ``p``: the listing yields to
    the reactor every PAUSE_STEPS of matcher work, reads each name once, and its work is
    linear in the names (the LSUB stand-in rule used to re-match every subscription for
    every superior: quadratic)."""
    store = MemoryStore()
    store.ensure_user(USER)
    names = [f"p/{'x' * 20}{i:04d}" for i in range(3000)]
    for name in names:
        store.create_mailbox(USER, name)
        store.set_subscribed(USER, name, True)
    server = _wired(store)
    with counting() as made:
        turns, reply = _run_pausing(server, f'b {command} "" "{pattern}"\r\n'.encode())
    assert reply.endswith(f"b OK {command} completed\r\n".encode()), reply[-200:]
    assert (b'"/" "p"\r\n' in reply) == lists_p  # LIST: a mailbox; LSUB "%": a stand-in
    defaults = 6  # INBOX, Sent, Drafts, Trash, Junk, Archive: all subscribed
    expected = (len(names) if pattern == "*" else 0) + int(lists_p) + defaults
    assert reply.count(f"* {command} ".encode()) == expected
    (compiled,) = made
    assert_linear(made)
    assert set(names) <= set(compiled.read)
    assert turns >= compiled.steps // mailboxes.PAUSE_STEPS
    if pattern == "*":
        assert turns >= 3


def test_patterns_too_large_for_the_automaton_are_refused_with_limit() -> None:
    """RFC 5530 LIMIT: the patterns of one LIST compile to at most MAX_PATTERN_STATES
    states (wildcard runs collapse first, so a hostile run of them costs nothing)."""
    store = MemoryStore()
    store.ensure_user(USER)
    server = _wired(store)
    many = " ".join(f'"{"ab%" * 40}{i}"' for i in range(40))
    _turns, reply = _run_pausing(server, f'b LIST "" ({many})\r\n'.encode())
    assert reply.endswith(b"b NO [LIMIT] LIST patterns too long\r\n"), reply
    hostile = "%*" * 2000 + "q"
    _turns, reply = _run_pausing(server, f'c LIST "" "{hostile}"\r\n'.encode())
    assert reply == b"c OK LIST completed\r\n"


# ---- the real server process, with its lag probe -----------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    root = tmp_path_factory.mktemp("list-lag")
    state = root / "state"
    state.mkdir()
    store = SQLiteStore(state / STORE_FILE)
    try:
        store.db.execute("PRAGMA synchronous = OFF")  # setup only
        store.ensure_user(USER)
        for name in NAMES:
            store.create_mailbox(USER, name)
    finally:
        store.close()
    with GatewayServer(root / "popgate", {USER: PASSWORD}, state_dir=state) as server:
        yield server


def _greeting_seconds(port: int) -> float:
    """How long a new connection waits for its greeting (the red-team symptom)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.recv(100)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (HOSTILE, set()),
        ("%*" * 38 + "7", {n for n in NAMES if n.endswith("7")}),
        ("*%" * 38, {*NAMES, "INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}),
    ],
    ids=["no-match", "tenth", "everything"],
)
def test_hostile_list_keeps_the_reactor_responsive(
    gateway: GatewayServer, pattern: str, expected: set[str]
) -> None:
    """The hostile LIST answers correctly while every reactor timer fires within 1 s of
    its time, and a new connection is greeted meanwhile."""
    with RawClient(gateway.port) as client:
        client.login()
        gateway.reset_probe()
        started = time.monotonic()
        client.send(f'H LIST "" "{pattern}"\r\n'.encode())
        greeted = _greeting_seconds(gateway.port)
        reply = client.read_until_tagged("H")
        seconds = time.monotonic() - started
        probe = gateway.read_probe()
    print(f"{pattern[:12]}...: {seconds:.2f} s, lag {probe}, greeting {greeted:.3f} s")
    assert reply.endswith(b"H OK LIST completed\r\n"), reply[-200:]
    assert {m.group(1).decode() for m in _LIST_NAME.finditer(reply)} == expected
    assert probe["max_ms"] < MAX_LAG_MS, probe
    assert greeted < MAX_LAG_MS / 1000, greeted
