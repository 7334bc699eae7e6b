"""No acknowledged message is lost when `popgate serve` dies under IMAP writes (issue 19,
``flag_fsync = "optimized"``): a real server process is SIGKILLed while clients APPEND
and STORE, restarted, killed again (five times), and every message whose APPEND got its
tagged OK is then in the mailbox, byte-identical, once.

Flag changes answered before their fsync are a documented choice (gateway/imap/durability.py,
as Dovecot's ``mail_fsync = optimized``); a SIGKILL keeps the OS page cache, so it
loses nothing committed either way. What this test guards is the other half: the lazy
path never lets an APPEND's OK out before its commit, and a kill in the middle of writes
of both kinds leaves a store that opens, with every acknowledged message in it.
"""

from __future__ import annotations

import collections
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from gateway.store.sqlite import SQLiteStore
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.imapclient import RawClient

pytestmark = pytest.mark.slow

KILLS = 5
WRITERS = 4
RUN_BEFORE_KILL = (0.3, 1.0)
"""Seconds of writes between a start and its SIGKILL."""


def message(writer: int, n: int) -> bytes:
    return (
        f"From: w{writer}@example.com\r\nSubject: crash {writer}-{n}\r\n"
        f"Message-ID: <crash-{writer}-{n}@x>\r\n\r\n{'body ' * (n % 50 + 1)}\r\n"
    ).encode()


def writer_loop(
    port: int, writer: int, start: int, acked: list[bytes], stop: threading.Event
) -> None:
    """APPEND and STORE until the connection dies; record each APPEND whose OK came."""
    rng = random.Random(writer * 1000 + start)
    n = start
    try:
        c = RawClient(port)
        c.login("alice", "alice-pw")
        c.command("S", "SELECT INBOX")
        while not stop.is_set():
            n += 1
            raw = message(writer, n)
            c.send(b"A APPEND INBOX {%d+}\r\n" % len(raw) + raw + b"\r\n")
            if b"A OK" in c.read_until_tagged("A"):
                acked.append(raw)
            c.command("F", f"STORE 1:* {rng.choice('+-')}FLAGS (\\Flagged)")
    except (OSError, AssertionError, ConnectionError):
        return  # the server was killed


def stored(state_dir: Path) -> list[bytes]:
    store = SQLiteStore(state_dir / "popgate.sqlite3")
    try:
        box = store.get_mailbox("alice", "INBOX")
        return [store.message_bytes(box.id, r.uid) for r in store.message_rows(box.id)]
    finally:
        store.close()


def test_sigkill_under_appends_and_stores_loses_no_acknowledged_message(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, users={"alice": "alice-pw"})
    rng = random.Random(19)
    acked: list[bytes] = []
    try:
        for round_ in range(KILLS):
            gw.start()
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=writer_loop, args=(gw.port, w, round_ * 100_000, acked, stop)
                )
                for w in range(WRITERS)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(*RUN_BEFORE_KILL))
            gw.kill()
            stop.set()
            for t in threads:
                t.join(30)
        # A last clean start: the store opens and serves after the kills.
        gw.start()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10):
            pass
        gw.stop()
    finally:
        gw.kill()
    found = collections.Counter(stored(gw.state_dir))
    assert acked, "no APPEND was acknowledged before the kills"
    missing = [raw[:60] for raw in acked if found[raw] < 1]
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:3]}"
    assert all(count == 1 for count in found.values())
    print(f"{len(acked)} acknowledged APPENDs, {sum(found.values())} messages stored")
