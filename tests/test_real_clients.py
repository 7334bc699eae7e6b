"""Real Debian mail clients against the real ``popgate serve`` process.

offlineimap (a two-way Maildir sync: download, local flag changes, deletions and new
messages and folders going up, a server-side change coming down), fetchmail as an IMAP
client (every message fetched whole and byte-exact, ``keep`` leaving them on the server)
and getmail6's SimpleIMAPRetriever (into a Maildir, remembering what it already took by
UIDVALIDITY/UID) each parse popgate's responses with their own code, so framing, UID or
flag mistakes show up as a failed run or wrong mail. The account is filled over IMAP
APPEND (imaplib) with messages chosen to trip up parsers: a lone dot line, a ``From ``
line, 8-bit text, a multipart and a long header.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.gateway_proc import GatewayProcess

pytestmark = pytest.mark.slow

USER = "alice"
PASSWORD = "alice-password"
CLIENT_TIMEOUT = 120
"""Seconds before a client run is killed: a safety net against a hang, not a speed check."""

MESSAGES = {
    "INBOX": [
        b"From: bob@example.com\r\nTo: alice@example.com\r\nSubject: plain\r\n"
        b"Message-ID: <plain@example.com>\r\n\r\nFirst line.\r\n.\r\n..dots\r\n"
        b"From the start of a line.\r\n",
        b"From: carol@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"Message-ID: <eight@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nCaf\xc3\xa9 cr\xc3\xa8me.\r\n",
        b"From: dave@example.com\r\nSubject: parts\r\nMessage-ID: <parts@example.com>\r\n"
        b"X-Long: " + b"x" * 900 + b"\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\nText part.\r\n--b1\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\nAAECAwQF\r\n--b1--\r\n",
    ],
    "Work": [
        b"From: erin@example.com\r\nSubject: work item\r\nMessage-ID: <work@example.com>\r\n"
        b"\r\nPlease review.\r\n",
    ],
}


def subject(raw: bytes) -> bytes:
    return re.search(rb"^Subject: ([^\r\n]*)", raw, re.MULTILINE).group(1)


def imap(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(USER, PASSWORD)
    return client


def server_view(port: int, mailbox: str) -> dict[bytes, bytes]:
    """Subject → FLAGS text of every message in ``mailbox``, read with EXAMINE."""
    client = imap(port)
    try:
        typ, _ = client.select(mailbox, readonly=True)
        assert typ == "OK"
        typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        out = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1)
                out[subject(item[1])] = flags
        return out
    finally:
        client.logout()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path / "gw", users={USER: PASSWORD})
    with gw:
        client = imap(gw.port)
        try:
            for mailbox, messages in MESSAGES.items():
                if mailbox != "INBOX":
                    assert client.create(mailbox)[0] == "OK"
                for raw in messages:
                    assert client.append(mailbox, None, None, raw)[0] == "OK"
        finally:
            client.logout()
        yield gw


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False, **kwargs
    )
    assert proc.returncode == 0, (argv[0], proc.returncode, proc.stdout[-4000:], proc.stderr)
    return proc


# ---- offlineimap -----------------------------------------------------------------------


def maildir_messages(folder: Path) -> dict[bytes, tuple[Path, str]]:
    """Subject → (file, Maildir flag letters) for every message in a Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).iterdir():
            flags = path.name.split(":2,", 1)[1] if ":2," in path.name else ""
            out[subject(path.read_bytes())] = (path, flags)
    return out


@pytest.mark.skipif(shutil.which("offlineimap") is None, reason="offlineimap3 is not installed")
def test_offlineimap_two_way_sync(gateway: GatewayProcess, tmp_path: Path) -> None:
    """offlineimap mirrors every folder (bodies byte-exact but for CRLF → LF), then
    pushes a local \\Seen+\\Flagged change, a local deletion, a new local message and a
    new local folder; a server-side flag change comes down on the third run."""
    root = tmp_path / "oi"
    mail = root / "mail"
    mail.mkdir(parents=True)
    rc = root / "offlineimaprc"
    rc.write_text(
        f"""[general]
accounts = acct
metadata = {root / "meta"}
ui = basic

[Account acct]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {mail}

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {gateway.port}
remoteuser = {USER}
remotepass = {PASSWORD}
ssl = no
starttls = no
expunge = yes
"""
    )
    sync = ["offlineimap", "-c", str(rc), "-o", "-u", "basic"]
    run(sync)
    for mailbox, messages in MESSAGES.items():
        local = maildir_messages(mail / mailbox)
        assert sorted(local) == sorted(subject(raw) for raw in messages)
        for raw in messages:
            path, flags = local[subject(raw)]
            assert path.read_bytes() == raw.replace(b"\r\n", b"\n")
            assert flags == ""
    assert {p.name for p in mail.iterdir()} >= {"INBOX", "Work", "Trash", "Sent"}

    inbox = maildir_messages(mail / "INBOX")
    path, _ = inbox[b"plain"]
    path.rename(mail / "INBOX" / "cur" / (path.name.split(":2,")[0] + ":2,FS"))
    inbox[b"parts"][0].unlink()
    (mail / "Work" / "new" / "1700000000.local.host:2,S").write_bytes(
        b"From: alice@example.com\nSubject: written locally\n\nDraft text.\n"
    )
    project = mail / "Projects"
    for sub in ("cur", "new", "tmp"):
        (project / sub).mkdir(parents=True)
    (project / "new" / "1700000001.proj.host").write_bytes(b"Subject: project\n\nPlan.\n")
    run(sync)

    inbox_view = server_view(gateway.port, "INBOX")
    assert set(inbox_view) == {b"plain", b"=?utf-8?q?caf=C3=A9?="}
    assert set(inbox_view[b"plain"].split()) == {b"\\Seen", b"\\Flagged"}
    work = server_view(gateway.port, "Work")
    assert work[b"written locally"].split() == [b"\\Seen"]
    assert list(server_view(gateway.port, "Projects")) == [b"project"]

    client = imap(gateway.port)
    try:
        client.select("INBOX")
        typ, hits = client.uid("SEARCH", None, "HEADER", "Message-ID", "<eight@example.com>")
        (uid,) = hits[0].split()
        assert client.uid("STORE", uid, "+FLAGS", "(\\Answered)")[0] == "OK"
    finally:
        client.logout()
    run(sync)
    inbox = maildir_messages(mail / "INBOX")
    assert inbox[b"=?utf-8?q?caf=C3=A9?="][1] == "R"
    assert inbox[b"plain"][1] == "FS"


# ---- fetchmail -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
def test_fetchmail_imap_fetches_every_message_byte_exact(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """fetchmail (``proto IMAP``, ``keep``, ``fetchall``) takes every message of INBOX and
    Work through an MDA; each arrives whole (fetchmail prepends its Received header and
    turns CRLF into LF) and, with ``keep``, stays on the server marked \\Seen."""
    home = tmp_path / "fm"
    out = home / "out"
    out.mkdir(parents=True)
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\n"
        f"poll 127.0.0.1 service {gateway.port} proto IMAP auth password\n"
        f'  user "{USER}" there with password "{PASSWORD}" is "{os.getenv("USER", "root")}" here\n'
        "  folder INBOX,Work\n  keep\n  fetchall\n  sslproto ''\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    run(["fetchmail", "-f", str(rc), "--nosyslog", "-i", str(home / "ids")], env=env)

    got = {}
    for path in out.iterdir():
        data = path.read_bytes()
        assert data.startswith(b"Received: ")
        body = re.sub(rb"\AReceived: [^\n]*\n(?:[ \t][^\n]*\n)*", b"", data)
        got[subject(body)] = body
    expected = [raw for messages in MESSAGES.values() for raw in messages]
    assert set(got) == {subject(raw) for raw in expected}
    for raw in expected:
        assert got[subject(raw)] == raw.replace(b"\r\n", b"\n")
    for mailbox, messages in MESSAGES.items():
        view = server_view(gateway.port, mailbox)
        assert len(view) == len(messages)
        assert all(b"\\Seen" in flags for flags in view.values())


# ---- getmail6 --------------------------------------------------------------------------


def same_message(delivered: bytes, original: bytes) -> bool:
    """Bodies byte-exact, headers equal up to folding: getmail re-folds a long header
    line as it writes the Maildir file (RFC 5322 §2.2.3), which is not popgate's doing."""
    got_head, _, got_body = delivered.partition(b"\n\n")
    want_head, _, want_body = original.partition(b"\n\n")
    unfold = re.compile(rb"\s+")
    return got_body == want_body and unfold.sub(b"", got_head) == unfold.sub(b"", want_head)


def as_unprivileged(path: Path) -> list[str]:
    """getmail6 refuses Maildir delivery as root: as root, hand ``path`` to the Dovecot
    harness's system user and run getmail as that user; otherwise run it directly."""
    if os.geteuid() != 0:
        return []
    from gateway.testing.dovecot import ensure_test_user

    account = ensure_test_user()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, account.pw_uid, account.pw_gid)
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]


@pytest.mark.skipif(shutil.which("getmail") is None, reason="getmail6 is not installed")
def test_getmail_simple_imap_retriever_into_maildir(
    gateway: GatewayProcess, request: pytest.FixtureRequest
) -> None:
    """getmail6's SimpleIMAPRetriever takes every message of INBOX and Work into a
    Maildir byte-exact (after its own trace headers); a second run takes nothing (it
    remembers UIDVALIDITY/UID) and a third takes only a newly appended message."""
    # The unprivileged user cannot traverse pytest's root-only temp dir: use /tmp.
    scratch = tempfile.TemporaryDirectory(prefix="popgate-getmail-")
    request.addfinalizer(scratch.cleanup)
    root = Path(scratch.name) / "gm"
    os.chmod(scratch.name, 0o755)
    maildir = root / "maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    rc = root / "getmailrc"
    rc.write_text(
        f"""[retriever]
type = SimpleIMAPRetriever
server = 127.0.0.1
port = {gateway.port}
username = {USER}
password = {PASSWORD}
mailboxes = ("INBOX", "Work")

[destination]
type = Maildir
path = {maildir}/

[options]
read_all = false
delete = false
"""
    )
    rc.chmod(0o600)
    prefix = as_unprivileged(root)
    env = {**os.environ, "HOME": str(root)}
    getmail = [*prefix, "getmail", "--getmaildir", str(root), "-r", str(rc)]

    def delivered() -> dict[bytes, bytes]:
        out = {}
        for path in (maildir / "new").iterdir():
            data = path.read_bytes()
            body = re.sub(
                rb"\A(?:(?:Return-Path|Delivered-To|Received): [^\n]*\n(?:[ \t][^\n]*\n)*)*",
                b"",
                data,
            )
            body = re.sub(rb"^X-getmail-retrieved-from-mailbox: [^\n]*\n", b"", body, flags=re.M)
            out[subject(body)] = body
        return out

    run(getmail, env=env)
    expected = [raw for messages in MESSAGES.values() for raw in messages]
    got = delivered()
    assert set(got) == {subject(raw) for raw in expected}
    for raw in expected:
        assert same_message(got[subject(raw)], raw.replace(b"\r\n", b"\n"))

    run(getmail, env=env)
    assert len(delivered()) == len(expected)

    client = imap(gateway.port)
    try:
        assert client.append("Work", None, None, b"Subject: later\r\n\r\nNew.\r\n")[0] == "OK"
    finally:
        client.logout()
    run(getmail, env=env)
    got = delivered()
    assert len(got) == len(expected) + 1
    assert got[b"later"] == b"Subject: later\n\nNew.\n"
