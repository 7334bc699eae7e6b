"""`popgate backup` and `popgate restore`: consistent online copies of the SQLite store,
and a restore that verifies before it replaces and keeps what it replaced."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from twisted.internet import reactor as global_reactor

from gateway.app import backup
from gateway.app.control import SOCKET_NAME, ControlService
from gateway.app.storage import STORE_FILE
from gateway.cli import main as cli
from gateway.store.interfaces import Delivery
from gateway.store.sqlite import SQLiteStore
from gateway.testing.messages import message


def numbered(i: int) -> bytes:
    """Message ``i`` of the backup: about 2 kB, so a copy takes a few pages."""
    body = f"body {i}\r\n" + "x" * 2000 + "\r\n"
    return message(
        f"message {i}",
        body,
        "a@example.net",
        to="b@example.net",
        date=None,
        message_id=f"<{i}@example.net>",
    )


def deliver(store: SQLiteStore, start: int, count: int) -> None:
    for i in range(start, start + count):
        store.deliver("alice", "INBOX", Delivery("isp", f"uidl-{i}", numbered(i)))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    with SQLiteStore(d / STORE_FILE) as store:
        store.ensure_user("alice")
        deliver(store, 0, 20)
    return d


def counts(path: Path) -> tuple[int, int, str]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        messages = conn.execute("SELECT count(*) FROM mailbox_message").fetchone()[0]
        ledger = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return messages, ledger, check


def test_backup_copies_every_message_into_one_verified_private_file(state, tmp_path):
    dest = tmp_path / "copy.sqlite3"
    result = backup.backup(state / STORE_FILE, dest)
    assert result.path == dest and result.messages == 20
    assert counts(dest) == (20, 20, "ok")
    assert dest.stat().st_mode & 0o777 == 0o600
    assert not dest.with_name("copy.sqlite3-wal").exists()  # self-contained, not WAL
    assert not dest.with_name("copy.sqlite3.partial").exists()
    with SQLiteStore(dest) as copy:
        inbox = copy.get_mailbox("alice", "INBOX")
        assert copy.message_bytes(inbox.id, 20) == numbered(19)


def test_backup_into_a_directory_gets_a_timestamped_name(state, tmp_path):
    out = tmp_path / "backups"
    out.mkdir()
    result = backup.backup(state / STORE_FILE, out)
    assert result.path.parent == out and result.path.name.startswith("popgate-")
    assert counts(result.path)[2] == "ok"


def test_backup_to_a_missing_directory_fails_instead_of_writing_a_file_of_that_name(
    state, tmp_path, capsys
):
    missing = f"{tmp_path / 'backups'}/"
    with pytest.raises(backup.BackupError, match="backups/: no such directory"):
        backup.backup(state / STORE_FILE, missing)
    assert not (tmp_path / "backups").exists()
    assert cli.main(["backup", missing, "--state-dir", str(state)]) == 1
    assert "backups/: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "backups").exists()


def test_backup_never_overwrites(state, tmp_path):
    dest = tmp_path / "copy.sqlite3"
    dest.write_text("precious")
    with pytest.raises(backup.BackupError, match="already exists"):
        backup.backup(state / STORE_FILE, dest)
    assert dest.read_text() == "precious"


def test_backup_of_a_missing_store_says_so(tmp_path):
    with pytest.raises(backup.BackupError, match="no such store file"):
        backup.backup(tmp_path / "nothing.sqlite3", tmp_path / "copy.sqlite3")


def test_backup_while_another_process_delivers_is_one_consistent_snapshot(state, tmp_path):
    """Messages and ledger rows are written in one transaction: a copy taken one page at
    a time while deliveries commit must still hold exactly as many of each."""
    stop = threading.Event()
    written = []

    def writer() -> None:
        with SQLiteStore(state / STORE_FILE) as store:
            i = 1000
            while not stop.is_set():
                deliver(store, i, 1)
                written.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 5:
            threading.Event().wait(0.01)
        steps = []
        result = backup.backup(
            state / STORE_FILE,
            tmp_path / "copy.sqlite3",
            pages=1,
            progress=lambda done, total: steps.append((done, total)),
        )
    finally:
        stop.set()
        thread.join()
    messages, ledger, check = counts(result.path)
    assert check == "ok" and messages == ledger and messages >= 25
    assert len(steps) > 1  # really copied in steps
    assert all(b[0] >= a[0] for a, b in zip(steps, steps[1:], strict=False))  # never restarted


# ---- restore -----------------------------------------------------------------------------


def test_restore_swaps_in_the_backup_and_keeps_the_replaced_store(state, tmp_path):
    saved = backup.backup(state / STORE_FILE, tmp_path / "saved.sqlite3").path
    with SQLiteStore(state / STORE_FILE) as store:
        deliver(store, 100, 5)  # mail that arrives after the backup
    result = backup.restore(saved, state / STORE_FILE)
    assert result.messages == 20
    assert counts(state / STORE_FILE) == (20, 20, "ok")
    assert result.previous is not None and counts(result.previous)[0] == 25
    assert not (state / (STORE_FILE + "-wal")).exists()
    with SQLiteStore(state / STORE_FILE) as store:  # the gateway can open it again
        assert store.counts(store.get_mailbox("alice", "INBOX").id).messages == 20


def test_restore_refuses_a_file_that_is_not_a_popgate_store(state, tmp_path):
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    before = (state / STORE_FILE).read_bytes()
    with pytest.raises(backup.BackupError, match="not a popgate store"):
        backup.restore(other, state / STORE_FILE)
    assert (state / STORE_FILE).read_bytes() == before
    assert [p.name for p in state.iterdir() if "restoring" in p.name] == []


# ---- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def short_state(state_dir: Path) -> Path:
    with SQLiteStore(state_dir / STORE_FILE) as store:
        store.ensure_user("alice")
        deliver(store, 0, 3)
    return state_dir


def test_cli_backup_then_restore_round_trips(short_state, tmp_path, capsys):
    dest = tmp_path / "b.sqlite3"
    assert cli.main(["backup", str(dest), "--state-dir", str(short_state)]) == 0
    assert "3 messages, integrity ok" in capsys.readouterr().out
    assert cli.main(["restore", str(dest), "--state-dir", str(short_state)]) == 0
    out = capsys.readouterr().out
    assert "restored" in out and "kept as" in out


def test_cli_restore_refuses_while_the_gateway_runs(rt, short_state, tmp_path, capsys):
    dest = tmp_path / "b.sqlite3"
    assert cli.main(["backup", str(dest), "--state-dir", str(short_state)]) == 0
    control = ControlService(short_state / SOCKET_NAME, reactor=global_reactor)
    control.register("status", lambda request, progress: {"version": "x"})
    rt.call(control.startService)
    try:
        before = (short_state / STORE_FILE).stat().st_mtime_ns
        assert cli.main(["restore", str(dest), "--state-dir", str(short_state)]) == 1
        assert "the gateway is running" in capsys.readouterr().err
        assert (short_state / STORE_FILE).stat().st_mtime_ns == before
    finally:
        rt.call(control.stopService)
