"""What the PostgreSQL store promises beyond the shared contract: several writers at once.

The contract suite (test_store_contract.py) runs on PostgreSQL too; these tests prove
what only a multi-node store must: migrations run once when several processes start on
an empty database together, two processes appending to one mailbox never share a UID
and their modseqs rise strictly, one UIDL is delivered once however many deliver it,
listeners go through the dispatcher, and the reactor-thread guard trips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.store.interfaces import INBOX, Delivery, MailboxNotFound
from gateway.store.postgres import SCHEMA_VERSION, PostgresStore, ReactorThreadCall
from gateway.store.postgres import messages as pg_messages
from gateway.store.postgres.schema import migrate, schema_version
from gateway.testing.messages import message
from gateway.testing.postgres import Postgres, new_schema, shared_server

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg() -> Postgres:
    return shared_server()


@pytest.fixture
def schema(pg: Postgres) -> str:
    return new_schema(pg)


@pytest.fixture
def store(pg: Postgres, schema: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg.dsn, password=pg.password, schema=schema, pool_size=8)
    yield s
    s.close()


def _run_children(pg: Postgres, schema: str, code: str, n: int) -> list[dict]:
    """Start ``n`` Python processes running ``code`` at once (each prints one JSON line)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PG_DSN": pg.dsn,
        "PG_PASSWORD": pg.password,
        "PG_SCHEMA": schema,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


MIGRATE_CHILD = """
import json, os, psycopg
from gateway.store.postgres.schema import migrate
conn = psycopg.connect(os.environ["PG_DSN"], password=os.environ["PG_PASSWORD"],
                       autocommit=True, options="-c search_path=" + os.environ["PG_SCHEMA"])
print(json.dumps({"ran": migrate(conn)}))
"""


def test_concurrent_migrations_of_an_empty_database_run_each_step_once(
    pg: Postgres, schema: str
) -> None:
    """Several nodes (processes) and several threads of one start on the same empty
    database together: the advisory lock makes them take turns, every step runs once."""
    ran: list[int] = []

    def in_thread() -> None:
        with psycopg.connect(
            pg.dsn, password=pg.password, autocommit=True, options=f"-c search_path={schema}"
        ) as conn:
            ran.append(migrate(conn))

    threads = [threading.Thread(target=in_thread) for _ in range(4)]
    for t in threads:
        t.start()
    children = _run_children(pg, schema, MIGRATE_CHILD, 4)
    for t in threads:
        t.join()
    assert sum(ran) + sum(c["ran"] for c in children) == SCHEMA_VERSION
    with psycopg.connect(pg.dsn, password=pg.password, options=f"-c search_path={schema}") as conn:
        with conn.cursor() as cur:
            assert schema_version(cur) == SCHEMA_VERSION
            cur.execute("SELECT count(*) FROM schema_version")
            assert cur.fetchone() == (1,)


APPEND_CHILD = """
import json, os, sys
from gateway.store.postgres import PostgresStore
store = PostgresStore(os.environ["PG_DSN"], password=os.environ["PG_PASSWORD"],
                      schema=os.environ["PG_SCHEMA"], pool_size=2)
box = store.get_mailbox("alice", "INBOX").id
me = sys.argv[1]
uids = [store.append(box, b"Subject: " + f"{me}-{i}".encode() + b"\\r\\n\\r\\nx\\r\\n")
        for i in range(40)]
store.close()
print(json.dumps({"uids": uids}))
"""


def test_two_processes_appending_to_one_mailbox_never_share_a_uid(
    pg: Postgres, schema: str, store: PostgresStore
) -> None:
    """RFC 3501 §2.3.1.1 across nodes: UIDs unique and ascending in commit order, one
    modseq per append, strictly increasing (RFC 7162 §3.1.1)."""
    store.ensure_user("alice")
    box = store.get_mailbox("alice", INBOX).id
    before = store.counts(box).highestmodseq
    children = _run_children(pg, schema, APPEND_CHILD, 3)
    all_uids = [u for c in children for u in c["uids"]]
    assert len(set(all_uids)) == len(all_uids) == 120
    for c in children:
        assert c["uids"] == sorted(c["uids"])  # each writer sees its own UIDs rise
    rows = store.message_rows(box)
    assert [r.uid for r in rows] == sorted(all_uids) == list(range(1, 121))
    modseqs = [r.modseq for r in rows]
    assert modseqs == sorted(modseqs) and len(set(modseqs)) == 120  # UID order = commit order
    counts = store.counts(box)
    assert counts.uidnext == 121 and counts.highestmodseq == before + 120


def test_one_uidl_delivered_at_once_by_many_threads_is_stored_once(
    store: PostgresStore,
) -> None:
    """Exactly-once across nodes: the ledger's key admits one delivery of a UIDL."""
    barrier = threading.Barrier(6)
    results: list[int | None] = []

    def deliver() -> None:
        barrier.wait()
        results.append(store.deliver("bob", INBOX, Delivery("up", "same", message())))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=lambda r: r or 0) == [None] * 5 + [1]
    assert len(store.message_rows(store.get_mailbox("bob", INBOX).id)) == 1
    assert store.known_uidls("up") == {"same"}


def test_concurrent_flag_changes_each_get_their_own_modseq(store: PostgresStore) -> None:
    """Two writers to one mailbox never stamp the same modseq (the mailbox row lock)."""
    store.ensure_user("alice")
    box = store.get_mailbox("alice", INBOX).id
    for i in range(4):
        store.append(box, message(subject=f"m{i}"))
    barrier = threading.Barrier(4)
    stamps: list[int] = []

    def flag(uid: int) -> None:
        barrier.wait()
        for keyword in ("a", "b", "c"):
            result = store.store_flags(box, [uid], "+", [keyword])
            stamps.extend(r.modseq for r in result.updated)

    threads = [threading.Thread(target=flag, args=(uid,)) for uid in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == len(set(stamps)) == 12
    assert store.counts(box).highestmodseq == max(stamps)


def test_listeners_go_through_the_dispatcher(store: PostgresStore) -> None:
    """With a dispatcher set (reactor.callFromThread in a service), listeners are not
    called on the writing thread but handed to it, after the commit."""
    handed: list[tuple] = []
    heard: list[int] = []
    store.add_listener(heard.append)
    store.set_dispatcher(lambda fn, *args: handed.append((fn, args)))
    store.ensure_user("alice")
    box = store.get_mailbox("alice", INBOX).id
    store.append(box, message())
    assert heard == [] and len(handed) == 1
    fn, args = handed[0]
    fn(*args)
    assert heard == [box]


def test_the_reactor_thread_guard_refuses_calls_on_that_thread(store: PostgresStore) -> None:
    store.forbidden_thread = threading.get_ident()
    with pytest.raises(ReactorThreadCall):
        store.list_mailboxes("alice")
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(store.list_mailboxes("alice")))
    worker.start()
    worker.join()
    assert done == [[]]


def test_summary_chunks_stream_one_statement_and_give_the_connection_back(
    pg: Postgres, schema: str
) -> None:
    """message_summary_chunks in chunked rows mode (lists of ``summary_chunk`` rows, made
    small here): the lists are message_summaries cut in order; a message expunged by
    another connection while the stream is open is still in its later lists (the
    statement's snapshot); and an iterator closed mid-stream cancels its statement and
    gives the connection back, so a pool of one connection still answers afterwards."""
    store = PostgresStore(pg.dsn, password=pg.password, schema=schema, pool_size=1)
    try:
        store.summary_chunk = 2
        store.ensure_user("alice")
        box = store.get_mailbox("alice", INBOX).id
        for i in range(7):
            store.append(box, message(subject=f"m{i}"))
        uids = list(range(1, 8))
        whole = store.message_summaries(box, uids)
        lists = list(store.message_summary_chunks(box, uids))
        assert [len(chunk) for chunk in lists] == [2, 2, 2, 1]
        assert [s for chunk in lists for s in chunk] == whole
        for _ in range(3):
            chunks = store.message_summary_chunks(box, uids)
            assert [s.uid for s in next(chunks)] == [1, 2]
            chunks.close()
            assert store.message_summaries(box, [3]) == whole[2:3]
    finally:
        store.close()
    store = PostgresStore(pg.dsn, password=pg.password, schema=schema, pool_size=2)
    try:
        store.summary_chunk = 2
        chunks = store.message_summary_chunks(box, uids)
        first = next(chunks)
        store.store_flags(box, [7], "+", ["\\Deleted"])
        store.expunge(box)
        assert first + [s for chunk in chunks for s in chunk] == whole
        assert [s.uid for c in store.message_summary_chunks(box, uids) for s in c] == uids[:6]
    finally:
        store.close()


def test_summary_chunks_without_chunked_rows_mode_read_the_batch_whole(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A libpq older than 17 cannot stream in chunks: the batch comes as one list, the
    same rows, and an unknown mailbox is still refused."""
    monkeypatch.setattr(pg_messages, "CHUNKED_ROWS", False)
    store.summary_chunk = 2
    store.ensure_user("alice")
    box = store.get_mailbox("alice", INBOX).id
    for i in range(5):
        store.append(box, message(subject=f"m{i}"))
    assert list(store.message_summary_chunks(box, [1, 2, 3, 4, 5])) == [
        store.message_summaries(box, [1, 2, 3, 4, 5])
    ]
    assert list(store.message_summary_chunks(box, [9])) == []
    with pytest.raises(MailboxNotFound):
        next(store.message_summary_chunks(987654, [1]))


def test_text_postgresql_cannot_hold_is_stored_and_searched(store: PostgresStore) -> None:
    """NUL in a header or body (PostgreSQL text cannot hold it) is stored as U+FFFD and
    the message is still delivered, byte for byte."""
    from gateway.core.criteria import Header, Text

    store.ensure_user("alice")
    box = store.get_mailbox("alice", INBOX).id
    raw = b"Subject: a\x00b\r\nX-Bad: \xff\xfe\r\n\r\nbody\x00text\r\n"
    uid = store.append(box, raw)
    assert store.message_bytes(box, uid) == raw
    assert store.search(box, Text("BODY", "text")) == [uid]
    assert store.search(box, Header("subject", "a\x00b")) == [uid]


def test_schema_too_new_is_refused(pg: Postgres, schema: str) -> None:
    from gateway.store.postgres import SchemaTooNew

    PostgresStore(pg.dsn, password=pg.password, schema=schema).close()
    with psycopg.connect(pg.dsn, password=pg.password, autocommit=True) as conn:
        conn.execute(f"UPDATE {schema}.schema_version SET version = version + 1")
    with pytest.raises(SchemaTooNew):
        PostgresStore(pg.dsn, password=pg.password, schema=schema)


def test_routed_delivery_queues_sieve_mail_once_with_the_ledger_row(store: PostgresStore) -> None:
    """Sieve's redirect/vacation mail goes into the outbound queue in the delivery's own
    transaction: a second delivery of the same UIDL queues nothing more."""
    from gateway.store.interfaces import NewOutbound, Routed, Target
    from gateway.store.postgres.queue import PGOutboundQueue

    out = NewOutbound("alice", "isp", "alice@isp.example", ("bob@example.org",), b"x\r\n")
    item = Routed(Delivery("up", "u1", message()), (Target(INBOX),), outbound=(out,), lifetime=60)
    assert store.deliver_routed("alice", INBOX, [item]) == [{INBOX: 1}]
    assert store.deliver_routed("alice", INBOX, [item]) == [None]
    queued = PGOutboundQueue(store).pending()
    assert [(q.user, q.route, q.recipients) for q in queued] == [
        ("alice", "isp", ("bob@example.org",))
    ]
