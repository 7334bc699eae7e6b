"""Exactly-once under SIGKILL: a real `popgate serve` importing 1,000 messages from a real
Dovecot is killed at random moments (20 times), restarted each time, then left to finish.
The mailbox must then hold exactly the upstream's messages, byte-identical, each once,
and with keep_on_server = false the upstream must end up empty.

Why this holds (gateway/pop3/fetcher.py): a batch of messages and its ledger rows commit
in one SQLite transaction (synchronous=FULL), DELE is only sent for UIDLs committed
before, and deletions only take effect at QUIT, which a killed process never sends.
"""

from __future__ import annotations

import collections
import random
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.fakepop3 import normalize_message
from gateway.testing.gateway_proc import GatewayProcess

pytestmark = pytest.mark.slow

MESSAGES = 1000
KILLS = 20
KILL_IN_PASS = (0.05, 0.8)
"""Seconds after a pass starts (its pop3.fetch_start log line) at which SIGKILL comes: the
whole import takes a few seconds here, so this lands most kills mid-import (listing,
receiving, committing a batch), and with keep_on_server = false some in the DELE phase."""
KILL_FROM_START = (0.05, 1.5)
"""Every fourth kill instead comes this long after the process starts (startup, store
opening, connecting, listing or fetching, wherever it happens to be)."""
FINISH_TIMEOUT = 90.0
POLL = 0.02


def event_count(gw: GatewayProcess, name: str) -> int:
    text = gw.log_text()
    return text.count(f'"event": "{name}"') + text.count(f'"event":"{name}"')


def wait_for_event_count(gw: GatewayProcess, name: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event_count(gw, name) >= count:
            return
        assert gw.process is not None and gw.process.poll() is None, gw.log_text()[-3000:]
        time.sleep(POLL)
    raise AssertionError(f"no {name} #{count} within {timeout}s:\n{gw.log_text()[-3000:]}")


def stored_messages(state_dir: Path) -> tuple[list[bytes], dict[str, str]]:
    store = SQLiteStore(state_dir / "popgate.sqlite3")
    try:
        box = store.get_mailbox("owner", "INBOX")
        raws = [store.message_bytes(box.id, r.uid) for r in store.message_rows(box.id)]
        ledger = {e.uidl: e.state for e in store.ledger_entries("crashy")}
    finally:
        store.close()
    return raws, ledger


def run_crash_cycles(dovecot: Dovecot, workdir: Path, *, keep: bool, seed: int) -> dict[str, Any]:
    originals = samplemail.generate(MESSAGES, seed=seed, size_profile="realistic")
    dovecot.deliver_many("alice", originals)
    upstream = {
        "name": "crashy",
        "owner": "owner",
        "host": "127.0.0.1",
        "port": dovecot.pop3_port,
        "tls": "none",
        "username": "alice",
        "password": "secret",
        "poll_interval": "10s",
        "keep_on_server": keep,
        "timeout": "20s",
    }
    gw = GatewayProcess(workdir, users={"owner": "owner-password"}, upstreams=[upstream])
    rng = random.Random(seed)
    counts_after_kill = []
    try:
        for n in range(KILLS):
            passes = event_count(gw, "pop3.fetch_start")
            gw.start()
            if n % 4 == 3:
                time.sleep(rng.uniform(*KILL_FROM_START))
            else:
                wait_for_event_count(gw, "pop3.fetch_start", passes + 1, timeout=30)
                time.sleep(rng.uniform(*KILL_IN_PASS))
            gw.kill()
            counts_after_kill.append(len(stored_messages(gw.state_dir)[0]))
        finished = event_count(gw, "pop3.fetched")
        gw.start()
        wait_for_event_count(gw, "pop3.fetched", finished + 1, timeout=FINISH_TIMEOUT)
        gw.stop()
    finally:
        gw.kill()
    raws, ledger = stored_messages(gw.state_dir)
    expected = [normalize_message(m) for m in originals]
    # exactly the upstream's messages, byte-identical, each once
    assert len(raws) == MESSAGES
    assert collections.Counter(raws) == collections.Counter(expected)
    assert len(ledger) <= MESSAGES and set(ledger.values()) <= {"delivered"}
    # the counts only ever grew: nothing committed was lost by a later kill
    assert counts_after_kill == sorted(counts_after_kill)
    print(f"messages stored after each kill: {counts_after_kill}")
    return {"counts": counts_after_kill, "ledger": ledger}


def test_sigkill_twenty_times_during_an_import_loses_and_duplicates_nothing(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    outcome = run_crash_cycles(dovecot, tmp_path / "gw", keep=True, seed=1001)
    assert len(outcome["ledger"]) == MESSAGES
    assert dovecot.maildir_count("alice") == MESSAGES  # keep_on_server: nothing deleted


def test_sigkill_with_keep_on_server_false_empties_the_upstream_and_fills_the_mailbox(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    run_crash_cycles(dovecot, tmp_path / "gw", keep=False, seed=2002)
    assert dovecot.maildir_count("alice") == 0
