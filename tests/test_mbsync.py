"""Two devices, one account, a real sync client (issue 4 acceptance).

A real Dovecot is the POP3 upstream, the real ``popgate serve`` process is the gateway,
and ``mbsync`` (isync) mirrors the account into two Maildirs, device A and device B, the
way a laptop and a phone each keep their own copy. Device A reads, files and deletes mail
by changing its Maildir (as a Maildir mail client does); after A and then B sync, B's
Maildirs must hold exactly what A's hold, and mail that arrives upstream later must reach
both. mbsync speaks IMAP strictly (UIDPLUS, UIDNEXT, flags, EXPUNGE): any sequence-number
or UID mistake in popgate shows up as a failed run or a diverging Maildir.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.gateway_proc import GatewayProcess

pytestmark = [
    pytest.mark.dovecot,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) is not installed"),
]

IMAP_USER = "alice"
IMAP_PASSWORD = "alice-password"
POLL = "10s"
"""The gateway's upstream poll interval (the configured minimum)."""

ARRIVAL_TIMEOUT = 90.0
"""Seconds to wait for upstream mail to reach the gateway: a safety net, not a measurement."""

MBSYNC_TIMEOUT = 120
FOLDERS = ("INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash")
_U_FIELD = re.compile(r",U=\d+")
_TUID = re.compile(rb"^X-TUID: [^\r\n]*\r?\n", re.MULTILINE)


def mbsync_config(path: Path, maildir: Path, port: int) -> Path:
    """The device's ~/.mbsyncrc: every folder, both directions, expunge both ways."""
    path.write_text(
        f"""IMAPAccount acct
Host 127.0.0.1
Port {port}
User {IMAP_USER}
Pass {IMAP_PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore acct
Account acct

MaildirStore maildir
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :acct:
Near :maildir:
Patterns *
Create Both
Expunge Both
SyncState *
"""
    )
    return path


class Device:
    """One device's Maildir tree and mbsync configuration."""

    def __init__(self, root: Path, port: int) -> None:
        self.maildir = root / "Mail"
        self.maildir.mkdir(parents=True)
        self.config = mbsync_config(root / "mbsyncrc", self.maildir, port)

    def sync(self) -> str:
        """One ``mbsync -a`` run; it must exit 0 and print nothing but the cleartext
        password warning (expected: this test uses a plain loopback connection)."""
        proc = subprocess.run(
            ["mbsync", "-q", "-c", str(self.config), "-a"],
            capture_output=True,
            timeout=MBSYNC_TIMEOUT,
        )
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, (proc.returncode, stderr, proc.stdout)
        unexpected = [
            line
            for line in stderr.splitlines()
            if line.strip() and "Password is being sent in the clear" not in line
        ]
        assert unexpected == [], stderr
        return stderr

    def files(self, folder: str) -> list[Path]:
        box = self.maildir / folder
        return sorted(p for sub in ("cur", "new") for p in (box / sub).iterdir() if p.is_file())

    def find(self, folder: str, subject: bytes) -> Path:
        hits = [p for p in self.files(folder) if subject_of(p.read_bytes()) == subject]
        assert len(hits) == 1, (folder, subject, hits)
        return hits[0]

    def state(self) -> dict[str, Counter[tuple[bytes, str]]]:
        """Per folder, the multiset of (message bytes without mbsync's X-TUID line,
        Maildir flags): what a user of this device sees."""
        out: dict[str, Counter[tuple[bytes, str]]] = {}
        for box in sorted(p for p in self.maildir.iterdir() if p.is_dir()):
            seen: Counter[tuple[bytes, str]] = Counter()
            for path in self.files(box.name):
                _base, _sep, flags = path.name.partition(":2,")
                seen[(_TUID.sub(b"", path.read_bytes()), flags)] += 1
            out[box.name] = seen
        return out


def set_flags(path: Path, flags: str) -> Path:
    """A Maildir client changing flags: the file moves to cur/ with ``:2,FLAGS``."""
    base = path.name.partition(":2,")[0]
    target = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    path.rename(target)
    return target


def move_to(path: Path, folder_root: Path) -> Path:
    """A Maildir client moving a message to another folder. mbsync's ``,U=n`` belongs to
    the old folder's UID space and must not travel along (isync's documented rule)."""
    name = _U_FIELD.sub("", path.name)
    target = folder_root / "cur" / name
    path.rename(target)
    return target


def subject_of(raw: bytes) -> bytes:
    match = re.search(rb"^Subject: ([^\r\n]*)", raw, re.MULTILINE)
    assert match is not None
    return match.group(1)


def server_messages(port: int, folder: str) -> int:
    imap = imaplib.IMAP4("127.0.0.1", port)
    try:
        imap.login(IMAP_USER, IMAP_PASSWORD)
        typ, data = imap.status(folder, "(MESSAGES)")
        assert typ == "OK"
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
    finally:
        imap.logout()


def wait_for_messages(port: int, folder: str, count: int) -> None:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while server_messages(port, folder) < count:
        assert time.monotonic() < deadline, f"{folder} never reached {count} messages"
        time.sleep(0.5)


def unique_messages(count: int, seed: int) -> list[bytes]:
    """Sample messages with distinct, simple subjects (the test finds files by them)."""
    out = []
    for index, raw in enumerate(samplemail.generate(count, seed=seed)):
        head, sep, body = raw.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"subject:")]
        out.append(b"Subject: mbsync-%d-%d\r\n" % (seed, index) + b"\r\n".join(lines) + sep + body)
    return out


def two_devices_story(
    upstream: Dovecot,
    root: Path,
    first: list[bytes],
    port_a: int,
    port_b: int,
    *,
    fetch: Callable[[], None] = lambda: None,
) -> None:
    """Device A on ``port_a`` and device B on ``port_b`` (one gateway, or two nodes of
    one store): A marks one read, files one in Archive, deletes one; after A and B sync,
    B's Maildirs equal A's; B flags one, both sync, A sees it; new POP3 mail (``fetch``
    asks for it now, or the poll brings it) appears on both; a sync with nothing to do
    changes nothing. ``first`` is what the upstream held when the gateway started."""
    wait_for_messages(port_b, "INBOX", len(first))
    a = Device(root / "A", port_a)
    b = Device(root / "B", port_b)
    a.sync()
    b.sync()
    assert sorted(a.state()) == sorted(FOLDERS)
    assert a.state() == b.state()
    assert len(a.files("INBOX")) == len(first)

    read, filed, deleted = (subject_of(raw) for raw in first[:3])
    set_flags(a.find("INBOX", read), "S")
    move_to(a.find("INBOX", filed), a.maildir / "Archive")
    set_flags(a.find("INBOX", deleted), "T")
    a.sync()
    b.sync()
    state = b.state()
    assert state == a.state()
    inbox = {subject_of(raw): flags for (raw, flags) in state["INBOX"]}
    assert inbox[read] == "S"
    assert filed not in inbox and deleted not in inbox
    assert [subject_of(raw) for (raw, _f) in state["Archive"]] == [filed]
    assert len(state["INBOX"]) == len(first) - 2
    assert server_messages(port_b, "INBOX") == len(first) - 2
    assert server_messages(port_b, "Archive") == 1

    # The other direction: B flags a message and replies to another.
    flagged, answered = (subject_of(raw) for raw in first[3:5])
    set_flags(b.find("INBOX", flagged), "F")
    set_flags(b.find("INBOX", answered), "RS")
    b.sync()
    a.sync()
    assert a.state() == b.state()
    inbox = {subject_of(raw): flags for (raw, flags) in a.state()["INBOX"]}
    assert (inbox[flagged], inbox[answered]) == ("F", "RS")

    # New upstream mail, fetched by the gateway (``fetch`` or its poll), reaches both devices.
    later = unique_messages(3, seed=12)
    for raw in later:
        upstream.deliver("alice", raw)
    fetch()
    wait_for_messages(port_b, "INBOX", len(first) - 2 + len(later))
    a.sync()
    b.sync()
    assert a.state() == b.state()
    subjects = {subject_of(raw) for (raw, _f) in b.state()["INBOX"]}
    assert {subject_of(raw) for raw in later} <= subjects
    for raw in later:
        # byte-identical and unread (mbsync writes Maildir files with LF line ends)
        assert (raw.replace(b"\r\n", b"\n"), "") in b.state()["INBOX"]

    # A sync with nothing to do changes nothing on either side.
    before = a.state()
    a.sync()
    b.sync()
    assert a.state() == before == b.state()


@pytest.fixture
def upstream():
    with Dovecot() as server:
        server.add_user("alice", "secret")
        yield server


def test_two_devices_converge_through_popgate(upstream: Dovecot, tmp_path: Path) -> None:
    """RFC 3501 flags/EXPUNGE, RFC 4315 UIDPLUS and RFC 6851-style moves as mbsync uses
    them: A marks one read, files one in Archive, deletes one; after A and B sync, B's
    Maildirs equal A's; B flags one, both sync, A sees it; new POP3 mail appears on both."""
    first = unique_messages(6, seed=11)
    for raw in first:
        upstream.deliver("alice", raw)
    gateway = GatewayProcess(
        tmp_path / "gw",
        users={IMAP_USER: IMAP_PASSWORD},
        upstreams=[
            {
                "name": "isp",
                "owner": "alice",
                "host": "127.0.0.1",
                "port": upstream.pop3_port,
                "tls": "none",
                "username": "alice",
                "password": "secret",
                "poll_interval": POLL,
            }
        ],
    )
    with gateway:
        two_devices_story(upstream, tmp_path, first, gateway.port, gateway.port)
    assert "secret" not in gateway.log_text() and IMAP_PASSWORD not in gateway.log_text()
