"""``popgate migrate-store``: a SQLite store copied into PostgreSQL is the same store.

A populated SQLite store (two people, a household with a shared INBOX and per-member
\\Seen, keywords, subscriptions, the ledgers of two upstreams, Sieve scripts, duplicate
records, an outbound item, expunged messages so UIDs have gaps, advanced modseqs, a
deleted mailbox) is migrated; then every observable of the store contract is read on
both sides and compared. Also: the copy goes on where the SQLite store left off (UIDs,
modseqs, UIDVALIDITY and mailbox ids continue, never repeat), a non-empty target is
refused and left as it was, a missing ``--from`` file is a clear error, a running
gateway is refused, the exit codes, and the PostgreSQL sort-key backfill.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.access.quota import usage
from gateway.app import migrate_store
from gateway.app.migrate_store import SQLITE_ONLY, TABLES, MigrateStoreError, TargetNotEmpty
from gateway.cli.main import main
from gateway.core.criteria import All
from gateway.core.sorting import SortCriterion
from gateway.store.interfaces import INBOX, Delivery, DuplicateRecord, NewOutbound, Routed, Target
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.queue import PGOutboundQueue
from gateway.store.postgres.schema import MIGRATIONS, backfill_sort_keys, migrate
from gateway.store.postgres.timeseries import PGTimeSeries
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_queue import SQLiteOutboundQueue
from gateway.store.sqlite_timeseries import SQLiteTimeSeries
from gateway.store.timeseries import Point
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.messages import message
from gateway.testing.ports import free_port
from gateway.testing.postgres import Postgres, new_schema, shared_server

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "shared:family"
USERS = ("alice", "bob", FAMILY)
UPSTREAMS = ("alice-isp", "bob-isp")
START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        self.now += 7
        return self.now


@pytest.fixture
def pg() -> Postgres:
    return shared_server()


@pytest.fixture
def schema(pg: Postgres) -> str:
    return new_schema(pg)


def dsn_for(pg: Postgres, schema: str) -> str:
    return f"{pg.dsn}?options=-csearch_path%3D{schema}"


def populate(path: Path) -> None:
    """A SQLite store with something in every table the migration copies."""
    store = SQLiteStore(path, clock=Clock())
    try:
        _populate(store)
    finally:
        store.close()


def _populate(store: SQLiteStore) -> None:
    when = datetime.datetime(
        2024, 3, 5, 10, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    for user in USERS:
        store.ensure_user(user)
    for user, upstream in zip(("alice", "bob"), UPSTREAMS, strict=True):
        for i in range(8):
            raw = message(
                subject=f"{user} mail {i}",
                body=f"body {i} of {user}\r\n" * (i + 1),
                sender=f"sender{i % 3}@example.org",
            )
            store.deliver(
                user, INBOX, Delivery(upstream, f"{upstream}-uidl-{i}", raw, when, i * 100)
            )
        store.record_skipped(upstream, f"{upstream}-huge", "too large")
        store.record_imported(upstream, [f"{upstream}-old-1", f"{upstream}-old-2"], "fetchmail")
    alice = store.get_mailbox("alice", INBOX).id
    # flags and keywords, then expunges: UIDs with gaps, modseqs well past the uids
    store.store_flags(alice, [1, 2, 3], "+", ["\\Seen", "$Important"])
    store.store_flags(alice, [2, 5], "+", ["\\Deleted"])
    store.expunge(alice)
    store.store_flags(alice, [4], "+", ["\\Flagged", "work"])
    archive = store.create_mailbox("alice", "Archive/2024")
    store.copy(alice, [6, 7], archive.id, move=True)
    store.append(archive.id, message(subject="appended"), ["\\Answered"], when)
    store.set_subscribed("alice", "Archive/2024", True)
    store.set_subscribed("bob", "Trash", False)
    gone = store.create_mailbox("bob", "Temporary")
    store.delete_mailbox("bob", "Temporary")  # its id must never come back
    assert gone.id > archive.id
    # the household: shared INBOX, each member's own \Seen
    for i in range(5):
        store.deliver(
            FAMILY, INBOX, Delivery("family-isp", f"fam-{i}", message(subject=f"family {i}"))
        )
    family = store.get_mailbox(FAMILY, INBOX).id
    store.store_flags(family, [1, 2], "+", ["\\Seen"], viewer="alice")
    store.store_flags(family, [2, 3], "+", ["\\Seen", "$Todo"], viewer="bob")
    store.store_flags(family, [1], "-", ["\\Seen"], viewer="alice")
    store.expunge(family, None)  # nothing \Deleted: no change
    store.store_flags(family, [5], "+", ["\\Deleted"], viewer="bob")
    store.expunge(family)
    store.set_subscribed("alice", "INBOX", True)
    # routed delivery: Sieve duplicates and an outbound message in one go
    store.deliver_routed(
        "bob",
        INBOX,
        [
            Routed(
                Delivery("bob-isp", "bob-isp-routed", message(subject="routed")),
                (Target("Lists/popgate", ("$list",), create=True),),
                duplicates=(DuplicateRecord("h", "id-1", 20 * 365 * 86_400),),
                outbound=(
                    NewOutbound(
                        "bob",
                        "bob-smtp",
                        "bob@example.org",
                        ("x@example.net",),
                        b"Subject: v\r\n\r\nhi\r\n",
                    ),
                ),
                lifetime=3600,
            )
        ],
    )
    store.put_script("alice", "main", 'require "fileinto"; fileinto "Archive/2024";')
    store.put_script("alice", "spare", "keep;")
    store.set_active("alice", "main")
    store.put_script("bob", "draft", "discard;")
    store.remember_source("alice", "192.0.2.1", START + 50, keep=5, forget_before=0)
    store.remember_source("alice", "2001:db8::/64", START + 60, keep=5, forget_before=0)
    SQLiteTimeSeries(store.db).record(
        "store.bytes:alice", [Point(START, 10.0), Point(START + 60, 12.5)]
    )
    SQLiteOutboundQueue(store.db).enqueue(
        NewOutbound(
            "alice", "alice-smtp", "", ("y@example.net",), b"Subject: b\r\n\r\nx\r\n", "<m@x>"
        ),
        now=START,
        lifetime=7200,
    )


def observe(store: Any) -> dict[str, Any]:
    """Everything a client, the fetcher or the admin can read through the contracts."""
    seen: dict[str, Any] = {}
    viewers = (None, "alice", "bob")
    for user in USERS:
        boxes = store.list_mailboxes(user)
        seen[f"{user} mailboxes"] = boxes
        seen[f"{user} subscriptions"] = sorted(store.subscriptions(user))
        seen[f"{user} quota usage"] = usage(store, user)
        for box in boxes:
            uids = list(store.message_uids(box.id))
            key = f"{user}/{box.name}"
            for viewer in viewers:
                seen[f"{key} counts {viewer}"] = store.counts(box.id, viewer=viewer)
                seen[f"{key} rows {viewer}"] = store.message_rows(box.id, viewer=viewer)
                seen[f"{key} info {viewer}"] = store.message_info(box.id, uids, viewer=viewer)
                seen[f"{key} changes {viewer}"] = store.changes_since(box.id, 0, viewer=viewer)
                summary = store.selection_summary(box.id, viewer=viewer)
                seen[f"{key} summary {viewer}"] = (
                    list(summary.recent),
                    summary.first_unseen_uid,
                    summary.keywords,
                )
            seen[f"{key} bytes"] = store.message_bytes_batch(box.id, uids)
            seen[f"{key} sort"] = store.sort(box.id, All(), [SortCriterion("SUBJECT", True)])
            seen[f"{key} thread"] = store.thread_facts(box.id, All())
        seen[f"{user} scripts"] = store.list_scripts(user)
        seen[f"{user} active script"] = store.active_script(user)
        seen[f"{user} known sources"] = dict(store.known_sources(user))
    for upstream in (*UPSTREAMS, "family-isp"):
        seen[f"{upstream} ledger"] = store.ledger_entries(upstream)
        seen[f"{upstream} known"] = store.known_uidls(upstream)
    seen["duplicate"] = store.duplicate_seen("bob", "h", "id-1")
    return seen


def observe_sqlite(path: Path) -> dict[str, Any]:
    store = SQLiteStore(path)
    try:
        found = observe(store)
        found["queue"] = [
            (i, SQLiteOutboundQueue(store.db).content(i.id))
            for i in SQLiteOutboundQueue(store.db).pending()
        ]
        found["series"] = SQLiteTimeSeries(store.db).read("store.bytes:alice", 0, 2e9)
        return found
    finally:
        store.close()


def observe_pg(store: PostgresStore) -> dict[str, Any]:
    found = observe(store)
    queue = PGOutboundQueue(store)
    found["queue"] = [(i, queue.content(i.id)) for i in queue.pending()]
    found["series"] = PGTimeSeries(store).read("store.bytes:alice", 0, 2e9)
    return found


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "popgate.sqlite3"
    path.parent.mkdir()
    populate(path)
    return path


@pytest.fixture
def target(pg: Postgres, schema: str) -> Iterator[str]:
    yield dsn_for(pg, schema)


def open_pg(pg: Postgres, schema: str) -> PostgresStore:
    return PostgresStore(pg.dsn, password=pg.password, schema=schema, pool_size=2)


def test_every_observable_is_the_same_after_the_move(source, pg, schema, target) -> None:
    """Mailboxes (ids, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), rows, flags, private \\Seen,
    modseqs, VANISHED history, bytes, ENVELOPE/BODYSTRUCTURE, EMAILIDs, save dates, sort
    and thread facts, subscriptions, quota usage, ledgers, scripts, duplicate records,
    known sources, the outbound queue and the history all read the same."""
    before = observe_sqlite(source)
    lines: list[str] = []
    summary = migrate_store.migrate_store(
        source, target, password=pg.password, progress=lines.append
    )
    with open_pg(pg, schema) as store:
        after = observe_pg(store)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    # the fixture really has what the comparison claims to cover
    alice_inbox = before["alice/INBOX rows None"]
    assert [r.uid for r in alice_inbox] == [1, 3, 4, 8]  # gaps: expunged and moved away
    assert before["alice/INBOX changes None"].expunged == [2, 5, 6, 7]
    assert before["shared:family/INBOX rows alice"] != before["shared:family/INBOX rows bob"]
    assert {e.state for e in before["alice-isp ledger"]} == {"delivered", "skipped", "imported"}
    assert before["alice active script"].name == "main" and before["duplicate"] is True
    assert before["queue"] and before["series"]
    assert summary.users == 2 and summary.shared_trees == 1
    assert summary.rows["mailbox_message"] == sum(
        len(v) for k, v in before.items() if k.endswith(" rows None")
    )
    assert summary.rows["ledger"] == sum(
        len(before[f"{u} ledger"]) for u in (*UPSTREAMS, "family-isp")
    )
    assert summary.upstreams == 3 and summary.bytes > 0
    assert any(line.startswith("content: ") for line in lines)


def test_the_copy_carries_on_where_sqlite_stopped(source, pg, schema, target) -> None:
    """After the move, new mail gets the next UID and a higher modseq; a new mailbox a new
    id (past the deleted one's) and a UIDVALIDITY never handed out; the ledger still
    refuses a UIDL it has. The UIDVALIDITY counter moves over even when it is ahead of
    the clock (mailboxes created faster than one a second)."""
    ahead = int(datetime.datetime.now().timestamp()) + 1_000_000
    sqlite_store = SQLiteStore(source)
    try:
        old = {(m.owner, m.name): m for u in USERS for m in sqlite_store.list_mailboxes(u)}
        top_id = sqlite_store.db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'mailbox'"
        ).fetchone()[0]
        sqlite_store.db.execute("UPDATE meta SET value = ? WHERE key = 'uidvalidity'", (ahead,))
    finally:
        sqlite_store.close()
    migrate_store.migrate_store(source, target, password=pg.password)
    with open_pg(pg, schema) as store:
        inbox = old[("alice", INBOX)]
        uid = store.append(inbox.id, message(subject="after the move"))
        assert uid == inbox.uidnext
        (row,) = [r for r in store.message_rows(inbox.id) if r.uid == uid]
        assert row.modseq == inbox.highestmodseq + 1
        fresh = store.create_mailbox("alice", "New")
        assert fresh.id > top_id
        assert fresh.uidvalidity == ahead
        assert (
            store.deliver("alice", INBOX, Delivery("alice-isp", "alice-isp-uidl-0", b"x")) is None
        )
        assert store.deliver("bob", INBOX, Delivery("bob-isp", "bob-isp-old-1", b"x")) is None


def test_a_non_empty_target_is_refused_and_left_alone(source, pg, schema, target) -> None:
    with open_pg(pg, schema) as store:
        store.ensure_user("carol")
        before = store.list_mailboxes("carol")
    with pytest.raises(TargetNotEmpty, match=r"mailbox: \d+ rows"):
        migrate_store.migrate_store(source, target, password=pg.password)
    with open_pg(pg, schema) as store:
        assert store.list_mailboxes("carol") == before
        assert store.list_mailboxes("alice") == []


def test_a_failure_midway_leaves_the_target_empty(source, pg, schema, target, monkeypatch) -> None:
    """One transaction: a failure after some tables were copied commits none of them."""
    real = migrate_store.copy_table

    def failing(src, cur, spec, total, progress):
        if spec.table == "ledger":
            raise MigrateStoreError("injected failure")
        return real(src, cur, spec, total, progress)

    monkeypatch.setattr(migrate_store, "copy_table", failing)
    with pytest.raises(MigrateStoreError, match="injected"):
        migrate_store.migrate_store(source, target, password=pg.password)
    monkeypatch.undo()
    with psycopg.connect(pg.dsn, password=pg.password, options=f"-c search_path={schema}") as conn:
        for spec in TABLES:
            assert conn.execute(f"SELECT count(*) FROM {spec.table}").fetchone()[0] == 0, spec.table
    # and the same target then takes the migration
    migrate_store.migrate_store(source, target, password=pg.password)


def test_a_node_starting_during_the_copy_waits_for_it(source, pg, schema, target, monkeypatch):
    """The copy holds the schema-migration lock: a node opening the store meanwhile
    waits at its migration step and then finds the whole copy, never a part of it."""
    real = migrate_store.copy_table
    opened: list[list[str]] = []

    def open_node() -> None:
        with open_pg(pg, schema) as store:
            opened.append([m.name for m in store.list_mailboxes("alice")])

    node = threading.Thread(target=open_node)

    def copy_and_start_a_node(src, cur, spec, total, progress):
        if spec.table == "ledger":
            node.start()
            assert waiting_for_advisory_lock(pg), "the node did not wait for the copy"
            assert not opened
        return real(src, cur, spec, total, progress)

    monkeypatch.setattr(migrate_store, "copy_table", copy_and_start_a_node)
    migrate_store.migrate_store(source, target, password=pg.password)
    node.join(30)
    assert opened and "Archive/2024" in opened[0]


def waiting_for_advisory_lock(pg: Postgres, timeout: float = 30.0) -> bool:
    """Whether some session comes to wait for an advisory lock within ``timeout``."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pg.dsn, password=pg.password, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.05)
    return False


def test_missing_old_and_non_store_sources_are_clear_errors(tmp_path, pg, target) -> None:
    with pytest.raises(MigrateStoreError, match="no such file"):
        migrate_store.migrate_store(tmp_path / "nope.sqlite3", target, password=pg.password)
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(MigrateStoreError, match="not a popgate store"):
        migrate_store.migrate_store(other, target, password=pg.password)
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old)
    for name in ("mailbox", "message", "mailbox_message", "ledger", "meta"):
        conn.execute(f"CREATE TABLE {name} (x)")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with pytest.raises(MigrateStoreError, match="schema version 3.*start this popgate once"):
        migrate_store.migrate_store(old, target, password=pg.password)


def test_unreachable_or_newer_targets_are_clear_errors(source, pg, schema, target) -> None:
    closed = f"postgresql://popgate@127.0.0.1:{free_port()}/popgate"
    with pytest.raises(MigrateStoreError, match="cannot connect to PostgreSQL"):
        migrate_store.migrate_store(source, closed, password=pg.password)
    with psycopg.connect(target, password=pg.password, autocommit=True) as conn:
        migrate(conn)
        conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(MigrateStoreError, match="newer than this program"):
        migrate_store.migrate_store(source, target, password=pg.password)


def test_every_sqlite_table_is_copied_or_explained(tmp_path) -> None:
    """A table a later SQLite migration adds must be copied (or listed as SQLite-only)."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        tables = {
            r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    finally:
        store.close()
    assert tables == {t.table for t in TABLES} | set(SQLITE_ONLY)


# ---- the command ---------------------------------------------------------------------


def write_config(tmp_path: Path, pg: Postgres, dsn: str, *, backend: str = "postgresql") -> Path:
    """The new node's config (written, not started): ``[store]`` naming the target."""
    store: dict[str, Any] = {"backend": backend}
    if backend == "postgresql":
        store |= {"dsn": dsn, "password_file": str(pg.write_password_file(tmp_path / "pw"))}
    node = GatewayProcess(
        tmp_path / f"node-{backend}", users={"alice": "pw"}, tables={"store": store}
    )
    return node.config_path


def popgate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_command_copies_prints_progress_and_summary_and_exit_codes(
    source, pg, target, tmp_path, capsys
) -> None:
    """The real command (a process) copies and prints progress and the summary, exit 0;
    then (in-process, same parser) a second run is refused (1), a missing --from file
    is a clear error (1), and leaving --from out is a usage error (2)."""
    config = write_config(tmp_path, pg, target)
    done = popgate("migrate-store", "--config", str(config), "--from", str(source))
    assert done.returncode == 0, done.stderr
    assert "mailbox_message: " in done.stdout
    assert "users: 2 (and 1 shared trees)" in done.stdout
    assert "ledger rows: " in done.stdout and "bytes" in done.stdout
    assert pg.password not in done.stdout + done.stderr
    assert main(["migrate-store", "--config", str(config), "--from", str(source)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "mailbox:" in err
    assert main(["migrate-store", "-c", str(config), "--from", str(tmp_path / "x.db")]) == 1
    assert "x.db: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["migrate-store", "--config", str(config)])
    assert exited.value.code == 2 and "--from" in capsys.readouterr().err


def test_command_refuses_a_sqlite_config_and_a_running_gateway(
    source, pg, target, tmp_path, capsys
) -> None:
    """A config still on SQLite is not a target; a gateway answering on the control
    socket next to the source file makes the command refuse, and copy nothing."""
    sqlite_config = write_config(tmp_path, pg, target, backend="sqlite")
    assert main(["migrate-store", "--config", str(sqlite_config), "--from", str(source)]) == 1
    assert "copies into PostgreSQL" in capsys.readouterr().err
    config = write_config(tmp_path, pg, target)
    with answering_control_socket(source.parent / "control.sock"):
        assert main(["migrate-store", "--config", str(config), "--from", str(source)]) == 1
    err = capsys.readouterr().err
    assert "popgate is running in" in err and "stop it first" in err
    with psycopg.connect(target, password=pg.password) as conn:
        assert conn.execute("SELECT to_regclass('mailbox')").fetchone() == (None,)


@contextlib.contextmanager
def answering_control_socket(path: Path) -> Iterator[None]:
    """A stand-in for a running gateway: answers every control request with success."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(b'{"ok": true, "result": {}}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        listener.close()
        path.unlink()


# ---- the PostgreSQL sort-key backfill -----------------------------------------------


def test_backfill_fills_sort_keys_of_mail_stored_before_the_sort_key_table(pg, schema) -> None:
    """A database at schema version 5 whose messages have no ``sort_key`` rows (stored
    before version 5) gets them from the backfill step, equal to what ingest writes."""
    with open_pg(pg, schema) as store:
        store.ensure_user("alice")
        box = store.get_mailbox("alice", INBOX).id
        for subject in ("b", "Re: a", "c"):
            store.append(box, message(subject=subject, sender=f"{subject[-1]}@example.org"))
        expected = store.sort(box, All(), [SortCriterion("SUBJECT", False)])
        threads = store.thread_facts(box, All())
    with psycopg.connect(
        pg.dsn, password=pg.password, autocommit=True, options=f"-c search_path={schema}"
    ) as conn:
        keys = conn.execute("SELECT * FROM sort_key ORDER BY message_id").fetchall()
        conn.execute("DELETE FROM sort_key")
        step = MIGRATIONS.index(backfill_sort_keys)  # later steps (leases) stay applied
        conn.execute("UPDATE schema_version SET version = %s", (step,))
        assert migrate(conn, MIGRATIONS[: step + 1]) == 1
        assert conn.execute("SELECT * FROM sort_key ORDER BY message_id").fetchall() == keys
        conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
        assert migrate(conn) == 0
    with open_pg(pg, schema) as store:
        assert store.sort(box, All(), [SortCriterion("SUBJECT", False)]) == expected == [2, 1, 3]
        assert store.thread_facts(box, All()) == threads
