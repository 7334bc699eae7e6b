"""The store contract for issue 17's per-message facts, on every backend: the RFC 8514
save date (stamped at APPEND, COPY and MOVE, searched by UTC day) and the RFC 8474 EMAILID
(shared by copies, derived from the content) — plus the SQLite migration that adds the
save date to an existing file."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.criteria import Date, EmailId, Instant, Within
from gateway.store.interfaces import INBOX, Store
from gateway.store.objectid import email_id_of, mailbox_id_text
from gateway.store.schema import MIGRATIONS, SAVEDATE, migrate
from gateway.testing.messages import message
from tests.test_store_contract import BACKENDS, Backend

DAY = 86400


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(BACKENDS[request.param], tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.ensure_user("alice")
    return s


def test_save_date_is_when_the_row_entered_its_mailbox(store: Store, backend: Backend) -> None:
    """RFC 8514 §3: APPEND stamps now, whatever INTERNALDATE says; a COPY (and a MOVE)
    stamps the time of the copy in the target."""
    box = store.get_mailbox("alice", INBOX).id
    old = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    uid = store.append(box, message(), (), old)
    [info] = store.message_info(box, [uid])
    start = backend.clock.now
    assert info.savedate == datetime.datetime.fromtimestamp(int(start), datetime.UTC)
    assert info.internaldate == old
    backend.clock.now += 3 * DAY
    other = store.create_mailbox("alice", "Other").id
    [(_, copied)] = store.copy(box, [uid], other)
    [copy_info] = store.message_info(other, [copied])
    assert copy_info.savedate == datetime.datetime.fromtimestamp(int(start) + 3 * DAY, datetime.UTC)
    backend.clock.now += DAY
    [(_, moved)] = store.copy(other, [copied], box, move=True)
    [moved_info] = store.message_info(box, [moved])
    assert moved_info.savedate == datetime.datetime.fromtimestamp(
        int(start) + 4 * DAY, datetime.UTC
    )


def test_saved_date_search_by_utc_day(store: Store, backend: Backend) -> None:
    box = store.get_mailbox("alice", INBOX).id
    first = store.append(box, message(subject="a"))
    backend.clock.now += 2 * DAY
    second = store.append(box, message(subject="b"))
    day1 = datetime.datetime.fromtimestamp(int(backend.clock.now) - 2 * DAY, datetime.UTC).date()
    day2 = day1 + datetime.timedelta(days=2)
    assert store.search(box, Date("saved", "on", day1)) == [first]
    assert store.search(box, Date("saved", "since", day2)) == [second]
    assert store.search(box, Date("saved", "before", day2)) == [first]


def test_instant_compares_internaldate_to_the_second(store: Store) -> None:
    """What WITHIN (RFC 5032) becomes: before = strictly earlier, since = at or after."""
    box = store.get_mailbox("alice", INBOX).id
    when = datetime.datetime(2020, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    uid = store.append(box, message(), (), when)
    epoch = int(when.timestamp())
    assert store.search(box, Instant("before", epoch)) == []
    assert store.search(box, Instant("since", epoch)) == [uid]
    assert store.search(box, Instant("before", epoch + 1)) == [uid]
    with pytest.raises(ValueError):
        store.search(box, Within("older", 5))


def test_emailid_is_the_content_id_and_shared_by_copies(store: Store) -> None:
    """RFC 8474 §5.1: a copy keeps the EMAILID; different content, different id; SEARCH
    EMAILID finds it; a malformed id matches nothing."""
    box = store.get_mailbox("alice", INBOX).id
    raw = message(subject="x")
    uid = store.append(box, raw)
    other_uid = store.append(box, message(subject="y"))
    other = store.create_mailbox("alice", "Other").id
    [(_, copied)] = store.copy(box, [uid], other)
    [info] = store.message_info(box, [uid])
    [copy_info] = store.message_info(other, [copied])
    [different] = store.message_info(box, [other_uid])
    assert info.emailid == copy_info.emailid == email_id_of(raw)
    assert different.emailid != info.emailid
    assert store.search(box, EmailId(email_id_of(raw))) == [uid]
    assert store.search(other, EmailId(email_id_of(raw))) == [copied]
    assert store.search(box, EmailId("nonsense")) == []


def test_mailboxid_is_kept_by_rename_and_not_reused(store: Store) -> None:
    """RFC 8474 §4: RENAME keeps the id; a mailbox created after a delete gets a new one."""
    box = store.create_mailbox("alice", "A")
    store.rename_mailbox("alice", "A", "B")
    assert store.get_mailbox("alice", "B").id == box.id
    store.delete_mailbox("alice", "B")
    again = store.create_mailbox("alice", "B")
    assert mailbox_id_text(again.id) != mailbox_id_text(box.id)


def test_migration_fills_savedate_of_existing_rows_from_internaldate(tmp_path: Path) -> None:
    """The SAVEDATE migration on a file written before it: every row gets a save date
    (its INTERNALDATE, the best knowledge there is), never NULL."""
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path, isolation_level=None)
    before = MIGRATIONS.index(SAVEDATE)
    migrate(conn, MIGRATIONS[:before])
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO mailbox (owner, name, uidvalidity, uidnext) VALUES ('alice', 'INBOX', 1, 2)"
    )
    conn.execute(
        "INSERT INTO message (id, sha256, size, internaldate, internaldate_tz, internal_day,"
        " sent_day, envelope, bodystructure, body, parts)"
        " VALUES (1, x'00', 1, 981173106, 0, 1, 1, x'', x'', x'', '[]')"
    )
    conn.execute(
        "INSERT INTO mailbox_message (mailbox_id, uid, message_id, modseq) VALUES (1, 1, 1, 1)"
    )
    assert migrate(conn) == len(MIGRATIONS) - before
    assert conn.execute("SELECT savedate FROM mailbox_message").fetchall() == [(981173106,)]
    conn.close()
