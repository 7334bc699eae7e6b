"""The peers popgate is measured against: Dovecot (POP3 upstream and reference IMAP server),
getmail6 and fetchmail (ingest), mbsync (IMAP sync client).

Dovecot comes from the test harness (gateway/testing/dovecot.py: unprivileged, under a temp
dir, auth penalty off, mail_max_userip_connections raised). getmail6 refuses to deliver
into a Maildir as root, so every peer client runs as the harness's unprivileged account
(DOVECOT-NOTES.md). Each runner returns the wall-clock seconds of the peer's whole process,
which is what a user of that tool waits for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.testing.dovecot import Dovecot, ensure_test_user

PEER_TIMEOUT = 600.0
"""Upper bound in seconds on one peer run; a hung peer fails the figure, not the run."""

DOVECOT_EXTRA_CONFIG = """\
# Benchmark settings: enough processes and connections for 100+ concurrent clients.
default_process_limit = 1000
default_client_limit = 2000
service imap {
  process_limit = 1000
}
"""


class PeerMissing(Exception):
    """A peer's binary is not installed: `make bench` installs BENCH_PACKAGES."""


class PeerFailed(Exception):
    """A peer exited non-zero or did not finish; the message quotes its output."""


@dataclass(frozen=True)
class Account:
    """The unprivileged account peer clients and Dovecot run as."""

    uid: int
    gid: int
    name: str

    @classmethod
    def current(cls) -> Account:
        entry = ensure_test_user()
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def own(self, path: Path) -> None:
        """Give a tree to the account (a no-op when not root)."""
        if os.geteuid() != 0:
            return
        os.chown(path, self.uid, self.gid)
        for parent, dirs, files in os.walk(path):
            for entry in (*dirs, *files):
                os.chown(os.path.join(parent, entry), self.uid, self.gid, follow_symlinks=False)


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise PeerMissing(f"{binary} not found: apt-get install {package} (make bench does)")
    return path


def run_timed(
    argv: list[str],
    *,
    account: Account | None,
    cwd: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> float:
    """Run a peer to completion as ``account``; return its wall-clock seconds."""
    switch: dict[str, object] = {}
    if account is not None and os.geteuid() == 0:
        switch = {"user": account.uid, "group": account.gid, "extra_groups": []}
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "LC_ALL": "C.UTF-8",
    }
    environment.update(env or {})
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **switch,  # type: ignore[arg-type]
        )
        try:
            code = process.wait(PEER_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise PeerFailed(f"{argv[0]} did not finish in {PEER_TIMEOUT:g}s") from None
        seconds = time.perf_counter() - started
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise PeerFailed(f"{' '.join(argv[:3])} exited {code}:\n{tail}")
    return seconds


def start_dovecot(parent: Path) -> Dovecot:
    """A running private Dovecot with the benchmark's connection limits."""
    server = Dovecot(extra_config=DOVECOT_EXTRA_CONFIG, parent_dir=parent)
    return server


def count_files(directory: Path) -> int:
    return sum(1 for entry in directory.iterdir() if entry.is_file())


# -- ingest peers ------------------------------------------------------------------------


def getmail_import(
    work: Path, account: Account, host: str, port: int, user: str, password: str
) -> tuple[float, Path]:
    """getmail6 keep mode into a fresh Maildir (SimplePOP3Retriever, read_all, no delete).

    Returns (seconds, the Maildir). A fresh getmail dir each run, so nothing is "old mail".
    """
    binary = require("getmail", "getmail6")
    work.mkdir(parents=True)
    maildir = work / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    rc = work / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        "type = SimplePOP3Retriever\n"
        f"server = {host}\n"
        f"port = {port}\n"
        f"username = {user}\n"
        f"password = {password}\n"
        "\n[destination]\n"
        "type = Maildir\n"
        f"path = {maildir}/\n"
        "\n[options]\n"
        "verbose = 0\n"
        "read_all = true\n"
        "delete = false\n"
        "message_log_syslog = false\n"
    )
    os.chmod(rc, 0o600)
    account.own(work)
    seconds = run_timed(
        [binary, "--getmaildir", str(work), "--rcfile", str(rc)],
        account=account,
        cwd=work,
        log_path=work.parent / f"{work.name}.log",
    )
    return seconds, maildir


def fetchmail_import(
    work: Path, account: Account, host: str, port: int, user: str, password: str
) -> tuple[float, Path]:
    """fetchmail keep mode into a plain BSMTP file (no delivery at all), no STLS.

    Returns (seconds, the output file). ``sslproto ''`` stops fetchmail from upgrading
    to TLS on its own, so it speaks plain POP3 like the other clients here.
    """
    binary = require("fetchmail", "fetchmail")
    work.mkdir(parents=True)
    output = work / "mail.bsmtp"
    rc = work / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\n"
        f"poll {host} protocol pop3 port {port} auth password\n"
        f'  user "{user}" password "{password}" is "{user}" here\n'
        "  keep fetchall sslproto ''\n"
    )
    os.chmod(rc, 0o600)  # fetchmail refuses a readable rc file
    account.own(work)
    seconds = run_timed(
        [
            binary,
            "--fetchmailrc",
            str(rc),
            "--idfile",
            str(work / "fetchids"),
            "--pidfile",
            str(work / "fetchmail.pid"),
            "--bsmtp",
            str(output),
            "--nosyslog",
            "--nodetach",
            "--silent",
        ],
        account=account,
        cwd=work,
        log_path=work.parent / f"{work.name}.log",
    )
    return seconds, output


# -- IMAP sync peer ----------------------------------------------------------------------


def mbsync_full_sync(
    work: Path, host: str, port: int, user: str, password: str, *, compress: bool = True
) -> float:
    """First full sync of INBOX by mbsync into an empty Maildir; returns seconds.

    Far = the IMAP server, Near = a fresh Maildir store; SyncState in the Maildir, so each
    run is a first sync. Plain IMAP with LOGIN on loopback, as for every client here.
    """
    binary = require("mbsync", "isync")
    work.mkdir(parents=True)
    near = work / "near"
    near.mkdir()
    rc = work / "mbsyncrc"
    rc.write_text(
        "IMAPAccount far\n"
        f"Host {host}\n"
        f"Port {port}\n"
        f"User {user}\n"
        f'Pass "{password}"\n'
        "SSLType None\n"
        "AuthMechs LOGIN\n" + ("" if compress else "DisableExtensions COMPRESS=DEFLATE\n") + "\n"
        "IMAPStore far-store\n"
        "Account far\n"
        "\n"
        "MaildirStore near-store\n"
        f"Path {near}/\n"
        f"Inbox {near}/INBOX\n"
        "SubFolders Verbatim\n"
        "\n"
        "Channel bench\n"
        "Far :far-store:\n"
        "Near :near-store:\n"
        "Patterns INBOX\n"
        "Create Both\n"
        "Expunge Both\n"
        "SyncState *\n"
    )
    os.chmod(rc, 0o600)
    return run_timed(
        [binary, "-c", str(rc), "-q", "bench"],
        account=None,
        cwd=work,
        log_path=work.parent / f"{work.name}.log",
    )


def mbsync_count(work: Path) -> int:
    inbox = work / "near" / "INBOX"
    return count_files(inbox / "cur") + count_files(inbox / "new")
