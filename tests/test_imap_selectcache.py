"""SELECT of an unchanged mailbox is answered from the SELECT cache (issue 19), and any
change between two SELECTs (new message, flags, expunge) is seen exactly as without it.

Each scenario runs twice, once with the server's cache and once with it turned off, and
the raw SELECT responses must be the same bytes.
"""

from __future__ import annotations

from array import array
from pathlib import Path

from gateway.imap.selectcache import SelectCache
from gateway.store.interfaces import Mailbox, SelectionSummary
from gateway.testing.imapclient import PASSWORD, USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message


def _mailbox(modseq: int, uidnext: int = 10) -> Mailbox:
    return Mailbox(7, USER, "INBOX", 1, uidnext, modseq, None, True)


def test_an_entry_is_valid_only_at_its_highestmodseq_and_hits_get_copies() -> None:
    cache = SelectCache()
    uids = array("I", [1, 2, 3])
    cache.put(_mailbox(5), USER, uids, SelectionSummary(array("I"), 2, ("$Junk",)))
    kept = cache.get(_mailbox(5), USER)
    assert kept is not None
    got, summary = kept
    assert list(got) == [1, 2, 3] and summary.first_unseen_uid == 2
    got.append(4)  # a view grows its own copy
    again = cache.get(_mailbox(5), USER)
    assert again is not None and list(again[0]) == [1, 2, 3]
    assert cache.get(_mailbox(6), USER) is None
    assert cache.get(_mailbox(5), "bob") is None


def test_recent_messages_and_racing_reads_are_never_kept() -> None:
    cache = SelectCache()
    cache.put(_mailbox(5), USER, array("I", [1]), SelectionSummary(array("I", [1]), 1, ()))
    assert cache.get(_mailbox(5), USER) is None
    cache.put(_mailbox(5, uidnext=3), USER, array("I", [1, 3]), SelectionSummary(array("I"), 1, ()))
    assert cache.get(_mailbox(5, uidnext=3), USER) is None


def test_the_cache_is_bounded_by_uids_held() -> None:
    cache = SelectCache(max_uids=4)
    for n in range(3):
        mailbox = Mailbox(n, USER, f"m{n}", 1, 10, 1, None, True)
        cache.put(mailbox, USER, array("I", [1, 2]), SelectionSummary(array("I"), None, ()))
    assert len(cache) == 2


def _command(client: RawClient, tag: str, line: str) -> bytes:
    client.send(f"{tag} {line}\r\n".encode())
    out = b""
    while True:
        reply = client.read_line()
        out += reply
        if reply.startswith(tag.encode() + b" "):
            return out


def _story(server: ServerHandle) -> list[bytes]:
    """SELECTs of INBOX around changes made by another session; every SELECT reply."""
    for i in range(3):
        server.append("INBOX", message(subject=f"m{i}"))
    seen: list[bytes] = []
    with server.connect() as a, server.connect() as b:
        for client in (a, b):
            client.greeting()
            _command(client, "l", f"LOGIN {USER} {PASSWORD}")
        seen.append(_command(a, "s1", "SELECT INBOX"))  # claims \Recent
        seen.append(_command(a, "s2", "SELECT INBOX"))  # unchanged: from the cache
        _command(b, "x1", "SELECT INBOX")
        _command(b, "x2", "STORE 1 +FLAGS (\\Seen $Work)")
        seen.append(_command(a, "s3", "SELECT INBOX"))
        server.append("INBOX", message(subject="new"))
        seen.append(_command(a, "s4", "EXAMINE INBOX"))
        seen.append(_command(a, "s5", "SELECT INBOX"))
        _command(b, "x3", "STORE 2 +FLAGS (\\Deleted)")
        _command(b, "x4", "EXPUNGE")
        seen.append(_command(a, "s6", "SELECT INBOX"))
        seen.append(_command(a, "s7", "SELECT INBOX"))
    return seen


def test_select_replies_are_the_same_bytes_with_and_without_the_cache(tmp_path: Path) -> None:
    (tmp_path / "cached").mkdir()
    (tmp_path / "plain").mkdir()
    with running_server(tmp_path / "cached", fake_clock=True) as server:
        cached = _story(server)
        hits = server.factory.select_cache.hits
    with running_server(tmp_path / "plain", fake_clock=True) as server:
        server.factory.select_cache = None
        plain = _story(server)
    assert hits >= 2

    # MAILBOXID and UIDVALIDITY differ between two stores; compare the rest.
    def scrub(reply: bytes) -> list[bytes]:
        return [
            line
            for line in reply.split(b"\r\n")
            if b"[MAILBOXID" not in line and b"[UIDVALIDITY" not in line
        ]

    assert [scrub(r) for r in cached] == [scrub(r) for r in plain]


STATEMENTS_PER_DEVICE = 10
"""SQL statements of a returning device's LOGIN, SELECT INBOX, IDLE and DONE (issue 19:
29 before provisioning was remembered, unchanged catch-ups stopped scanning and SELECT
was cached): the mailbox row, and three catch-ups reading HIGHESTMODSEQ."""


def test_a_returning_device_costs_few_sql_statements(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        server.append("INBOX", message())
        statements: list[str] = []
        conn = server.store._conn
        counts = []
        for _ in range(3):
            before = len(statements)
            server.call(conn.set_trace_callback, statements.append)
            with server.connect() as client:
                client.greeting()
                _command(client, "a", f"LOGIN {USER} {PASSWORD}")
                _command(client, "b", "SELECT INBOX")
                client.send(b"c IDLE\r\n")
                client.read_line()
                _command(client, "c", "DONE")
            server.call(conn.set_trace_callback, None)
            counts.append(len(statements) - before)
        assert counts[-1] <= STATEMENTS_PER_DEVICE, statements[-counts[-1] :]


def test_idle_sessions_sharing_a_fanout_read_still_claim_recent_once(tmp_path: Path) -> None:
    """Five sessions IDLE on one INBOX share one changes_since read per change; \\Recent
    still goes to exactly one of them (RFC 3501 §2.3.2), and all see EXISTS."""
    with running_server(tmp_path) as server:
        clients = [server.connect() for _ in range(5)]
        try:
            for client in clients:
                client.greeting()
                _command(client, "l", f"LOGIN {USER} {PASSWORD}")
                _command(client, "s", "SELECT INBOX")
                client.send(b"i IDLE\r\n")
                client.read_line()
            server.append("INBOX", message(subject="pushed"))
            pushed = []
            for client in clients:
                lines = [client.read_line(), client.read_line()]
                pushed.append(lines)
            assert all(lines[0] == b"* 1 EXISTS\r\n" for lines in pushed)
            recent = sorted(lines[1] for lines in pushed)
            assert recent == [b"* 0 RECENT\r\n"] * 4 + [b"* 1 RECENT\r\n"]
        finally:
            for client in clients:
                client.close()
