"""Real client libraries against the in-process server: Python's imaplib and imapclient
(which parses responses strictly) for login, LIST, SELECT, STATUS, ID/NAMESPACE/ENABLE and
IDLE. If these libraries misread a response, so would mail clients built on them."""

from __future__ import annotations

import imaplib
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from gateway.testing.imapclient import (
    HOST,
    PASSWORD,
    SOCKET_TIMEOUT,
    USER,
    ServerHandle,
    running_server,
)

IDLE_WAIT_ROUNDS = 20
"""idle_check() calls (each up to a second) before giving up on a push that should come
at once; only a safety net against a hang."""


@pytest.fixture
def server(tmp_path: Path):
    with running_server(tmp_path) as handle:
        handle.call(handle.store.create_mailbox, USER, "Work/Projects")
        yield handle


# ---- imaplib -----------------------------------------------------------------------------------


def test_imaplib_session(server: ServerHandle) -> None:
    """RFC 3501 §6.2.3 LOGIN, §6.3.8 LIST, §6.3.1 SELECT, §6.3.10 STATUS and §6.4.5
    FETCH as imaplib drives them."""
    server.append()
    imap = server.imaplib_client()
    try:
        assert "IDLE" in imap.capabilities and "AUTH=PLAIN" in imap.capabilities
        typ, data = imap.login(USER, PASSWORD)
        assert typ == "OK"
        typ, folders = imap.list()
        assert typ == "OK"
        assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in folders
        assert b'(\\HasChildren) "/" "Work"' in folders
        typ, count = imap.select("INBOX")
        assert (typ, count) == ("OK", [b"1"])
        assert imap.response("UIDVALIDITY")[1][0] is not None
        typ, status = imap.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
        assert status == [b'"INBOX" (MESSAGES 1 UNSEEN 1 UIDNEXT 2)']
        typ, fetched = imap.fetch("1", "(UID FLAGS)")
        assert typ == "OK" and b"UID 1" in fetched[0]
        assert imap.close()[0] == "OK"
    finally:
        assert imap.logout()[0] == "BYE"


def test_imaplib_login_failure_and_authenticate(server: ServerHandle) -> None:
    """RFC 3501 §6.2.3 failed LOGIN raises; §6.2.2 AUTHENTICATE PLAIN via continuation."""
    imap = server.imaplib_client()
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(USER, "wrong")
        typ, _ = imap.authenticate("PLAIN", lambda _challenge: f"\0{USER}\0{PASSWORD}".encode())
        assert typ == "OK"
        assert imap.select("Work/Projects")[0] == "OK"
    finally:
        imap.logout()


# ---- imapclient --------------------------------------------------------------------------------


@pytest.fixture
def imapclient(server: ServerHandle):
    client = server.imapclient()
    try:
        yield client
    finally:
        client.logout()


def test_imapclient_login_failure(server: ServerHandle) -> None:
    """RFC 3501 §6.2.3 / RFC 5530: imapclient reports the failed login as LoginError."""
    client = IMAPClient(HOST, port=server.port, ssl=False, timeout=SOCKET_TIMEOUT)
    try:
        with pytest.raises(LoginError):
            client.login(USER, "wrong")
    finally:
        client.shutdown()


def test_imapclient_folders_select_status(server: ServerHandle, imapclient: IMAPClient) -> None:
    """LIST (RFC 3501 §6.3.8, RFC 6154 special-use), SELECT/EXAMINE responses and STATUS
    parsed by imapclient."""
    server.append(flags=("\\Seen",))
    server.append()
    folders = {name: flags for flags, _delim, name in imapclient.list_folders()}
    assert folders["Sent"] == (b"\\HasNoChildren", b"\\Sent")
    assert folders["Work"] == (b"\\HasChildren",)
    assert imapclient.find_special_folder(b"\\Trash") == "Trash"
    info = imapclient.select_folder("INBOX")
    assert info[b"EXISTS"] == 2
    assert info[b"RECENT"] == 2
    assert info[b"UIDNEXT"] == 3
    assert info[b"READ-WRITE"] is True
    assert b"\\*" in info[b"PERMANENTFLAGS"]
    assert info[b"HIGHESTMODSEQ"] >= 1
    status = imapclient.folder_status("INBOX", ["MESSAGES", "UNSEEN", "UIDVALIDITY"])
    assert status[b"MESSAGES"] == 2 and status[b"UNSEEN"] == 1
    assert status[b"UIDVALIDITY"] == info[b"UIDVALIDITY"]
    readonly = imapclient.select_folder("INBOX", readonly=True)
    assert readonly[b"PERMANENTFLAGS"] == ()
    imapclient.create_folder("Lists/Python")
    imapclient.rename_folder("Lists", "Mailing")
    assert imapclient.folder_exists("Mailing/Python")
    imapclient.delete_folder("Mailing/Python")
    assert not imapclient.folder_exists("Mailing/Python")


def test_imapclient_id_namespace_enable(imapclient: IMAPClient) -> None:
    """RFC 2971 ID, RFC 2342 NAMESPACE and RFC 5161 ENABLE through imapclient."""
    (fields,) = imapclient.id_({"name": "imapclient"})  # one parenthesised list
    assert dict(zip(fields[::2], fields[1::2], strict=True))[b"name"] == b"popgate"
    namespace = imapclient.namespace()
    assert namespace.personal == (("", "/"),)
    assert namespace.other is None and namespace.shared is None
    assert imapclient.enable("CONDSTORE") == [b"CONDSTORE"]


def test_imapclient_idle(server: ServerHandle, imapclient: IMAPClient) -> None:
    """RFC 2177 IDLE: imapclient's idle()/idle_check() receives the EXISTS pushed when a
    message arrives, and idle_done() ends it with a tagged OK."""
    server.append()
    imapclient.select_folder("INBOX")
    imapclient.idle()
    server.append()
    seen: list = []
    for _ in range(IDLE_WAIT_ROUNDS):
        seen.extend(imapclient.idle_check(timeout=1))
        if (2, b"EXISTS") in seen:
            break
    text, _responses = imapclient.idle_done()
    assert (2, b"EXISTS") in seen
    assert text == b"IDLE terminated"
    assert imapclient.noop()[0] == b"NOOP completed"
