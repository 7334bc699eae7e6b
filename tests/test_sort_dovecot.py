"""SORT and THREAD differential against Dovecot imapd (issue 17 acceptance, RFC 5256).

The same 2,000-message threaded mailbox (:func:`gateway.testing.threadmail.thread_corpus`)
goes to Dovecot (Maildir, INTERNALDATE from the file time) and to popgate's store in the
same order, so UIDs correspond; every SORT criterion, REVERSE combinations and both THREAD
algorithms must answer identically (they do: 85 of 85 on this corpus).

Where the two could differ, popgate follows the RFC and the corpus stays clear of it:
Dovecot folds strings by Unicode titlecase, RFC 5256 §3 says ``i;ascii-casemap`` (so
"é" and "É" sort apart here, together there; the corpus keeps decoded text ASCII).
RFC 5256 leaves open in which order THREAD REFERENCES step 5 walks the root set; popgate
walks it oldest first, as Dovecot does (``gateway/imap/threads.py``).
"""

from __future__ import annotations

import imaplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.dovecot import Dovecot
from gateway.testing.imapsession import SessionDriver
from gateway.testing.threadmail import thread_corpus

pytestmark = pytest.mark.slow

CORPUS_SIZE = 2000

SORT_PROGRAMS = (
    "ARRIVAL",
    "CC",
    "DATE",
    "FROM",
    "SIZE",
    "SUBJECT",
    "TO",
    "DISPLAYFROM",
    "DISPLAYTO",
    "REVERSE ARRIVAL",
    "REVERSE DATE",
    "REVERSE SUBJECT",
    "REVERSE SIZE",
    "SUBJECT DATE",
    "SUBJECT REVERSE DATE",
    "FROM REVERSE SUBJECT",
    "REVERSE FROM DATE",
    "CC TO SIZE",
    "REVERSE DISPLAYFROM ARRIVAL",
)
SEARCHES = ("ALL", "UNSEEN", "SUBJECT re", "SINCE 1-Apr-2024 NOT FROM zoe")


def _untagged(data: list[bytes | None]) -> str:
    return b" ".join(d for d in data if d).decode()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, tls_ca) -> Iterator[tuple]:
    mails = thread_corpus(CORPUS_SIZE)
    server = Dovecot(ca=tls_ca)
    server.add_user("alice", "secret")
    server.start()
    try:
        server.deliver_many("alice", [m.raw for m in mails], whens=[m.internaldate for m in mails])
        client = imaplib.IMAP4(server.host, server.imap_port, timeout=60)
        client.login("alice", "secret")
        client.select("INBOX")
        driver = SessionDriver(Path(tmp_path_factory.mktemp("popgate")) / "store.db")
        box = driver.mailbox().id
        for m in mails:
            driver.store.append(box, m.raw, (), m.internaldate)
        driver.select()
        yield client, driver
        client.logout()
        driver.close()
    finally:
        server.stop()


def popgate(driver: SessionDriver, line: str) -> str:
    out, reply = driver.call(b"x " + line.encode())
    assert reply.status == "OK", reply
    text = out.decode().rstrip("\r\n")
    word = line.split()[1]
    prefix = f"* {word}"
    assert text.startswith(prefix), text
    return text[len(prefix) :].strip()


def dovecot(client: imaplib.IMAP4, line: str) -> str:
    verb = line.split()[1]
    typ, data = client.uid(verb, *line.split(" ", 2)[2:])
    assert typ == "OK", data
    return _untagged(data)


def test_same_uids_and_capabilities(both: tuple) -> None:
    client, driver = both
    typ, data = client.capability()
    caps = _untagged(data).split()
    assert {"SORT", "SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"} <= set(caps)
    assert dovecot(client, "UID SEARCH ALL") == popgate(driver, "UID SEARCH ALL")


@pytest.mark.parametrize("program", SORT_PROGRAMS)
@pytest.mark.parametrize("search", SEARCHES)
def test_sort_matches_dovecot(both: tuple, program: str, search: str) -> None:
    client, driver = both
    line = f"UID SORT ({program}) UTF-8 {search}"
    assert popgate(driver, line).split() == dovecot(client, line).split()


@pytest.mark.parametrize("algorithm", ["ORDEREDSUBJECT", "REFERENCES"])
@pytest.mark.parametrize("search", SEARCHES)
def test_thread_matches_dovecot(both: tuple, algorithm: str, search: str) -> None:
    client, driver = both
    line = f"UID THREAD {algorithm} UTF-8 {search}"
    assert popgate(driver, line) == dovecot(client, line)
