"""Runs Pigeonhole's `sieve-test` (Debian dovecot-sieve) as the reference Sieve interpreter.

Everything lives in a private temp dir: a minimal dovecot.conf (`-c`), a Maildir whose
folders are the mailboxes that "exist" for `mailboxexists` and fileinto, and the scripts
and messages. As root, sieve-test drops to the unprivileged test user (mail_uid), as
tests/support/dovecot.py does for the POP3 peer. Nothing global is started.

`sieve-test` prints the actions it would take; `parse_output` reduces that to the outcome
popgate's `Result` is compared with: mailbox → set of flags, and whether discard ran.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.testing.dovecot import ensure_test_user

EXTENSIONS = "+regex"
"""Pigeonhole leaves regex off by default; popgate offers it (issue 16)."""


class SieveTestNotInstalled(Exception):
    """sieve-test is missing: install Debian dovecot-sieve (CI must, not skip)."""


@dataclass(frozen=True)
class Outcome:
    """Where a message goes: mailbox → normalised flags, plus whether discard ran, where
    it is redirected to, and the period (seconds) of a vacation action. The vacation
    action is compared, not whether a reply is sent: sieve-test prints the action before
    the RFC 5230 §4.5 checks that run when it is executed."""

    folders: frozenset[tuple[str, frozenset[str]]]
    discarded: bool
    redirects: frozenset[str] = frozenset()
    vacation: int | None = None


def normalise_flags(flags: Iterable[str]) -> frozenset[str]:
    """System flags compare case-insensitively; Pigeonhole prints them lower-case."""
    return frozenset(f.lower() if f.startswith("\\") else f for f in flags)


def normalise_mailbox(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


def find_sieve_test() -> str:
    binary = shutil.which("sieve-test")
    if binary is None:
        raise SieveTestNotInstalled("sieve-test not found; apt-get install dovecot-sieve")
    return binary


_STORE = re.compile(r"^ \* store message in folder: (.*)$")
_FLAGS = re.compile(r"^\s+\+ add IMAP flags: (.*)$")
_REDIRECT = re.compile(r"^ \* redirect message to: <?([^>]*)>?$")
_VACATION_SECONDS = re.compile(r"^\s+=> seconds : (\d+)$")


def parse_output(text: str) -> Outcome:
    """Read the "Performed actions" and "Implicit keep" sections of sieve-test's output."""
    folders: dict[str, set[str]] = {}
    current: str | None = None
    discarded = False
    redirects: set[str] = set()
    vacation: int | None = None
    for line in text.splitlines():
        redirect = _REDIRECT.match(line)
        if redirect:
            redirects.add(redirect.group(1).lower())
        seconds = _VACATION_SECONDS.match(line)
        if seconds:
            vacation = int(seconds.group(1))
        store = _STORE.match(line)
        if store:
            current = normalise_mailbox(store.group(1))
            folders.setdefault(current, set())
            continue
        flags = _FLAGS.match(line)
        if flags and current is not None:
            folders[current].update(normalise_flags(flags.group(1).split()))
            continue
        if line.startswith(" * "):
            current = None
            if line.strip() == "* discard":
                discarded = True
    return Outcome(
        frozenset((k, frozenset(v)) for k, v in folders.items()),
        discarded,
        frozenset(redirects),
        vacation,
    )


class Pigeonhole:
    """A private sieve-test setup under `root`; `run` and `run_many` evaluate pairs."""

    def __init__(self, root: Path, mailboxes: Iterable[str]) -> None:
        self.binary = find_sieve_test()
        self.root = root
        user = ensure_test_user()
        self.uid, self.gid = user.pw_uid, user.pw_gid
        maildir = root / "home" / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for name in mailboxes:
            if normalise_mailbox(name) != "INBOX":
                for sub in ("cur", "new", "tmp"):
                    (maildir / f".{name}" / sub).mkdir(parents=True, exist_ok=True)
        self.config = root / "dovecot.conf"
        self.config.write_text(
            "log_path = /dev/stderr\n"
            f"mail_uid = {self.uid}\nmail_gid = {self.gid}\n"
            f"first_valid_uid = {self.uid}\nlast_valid_uid = {self.uid}\n"
            f"mail_home = {root}/home\nmail_location = maildir:{maildir}\n"
            "plugin {\n  sieve_extensions = +regex\n}\n"
        )
        (root / "scripts").mkdir(exist_ok=True)
        (root / "messages").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in [root, *root.rglob("*")]:
                os.chown(path, self.uid, self.gid)
        os.chmod(root, 0o755)

    def add_file(self, kind: str, name: str, data: bytes) -> Path:
        path = self.root / kind / name
        path.write_bytes(data)
        os.chmod(path, 0o644)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)
        return path

    def run(self, script: Path, message: Path, mail_from: str, rcpt_to: str) -> Outcome:
        """One sieve-test run; a script Pigeonhole refuses raises RuntimeError."""
        proc = subprocess.run(
            [
                self.binary,
                "-c",
                str(self.config),
                "-x",
                EXTENSIONS,
                "-f",
                mail_from,
                "-r",
                rcpt_to,
                str(script),
                str(message),
            ],
            capture_output=True,
            text=True,
            env={"TZ": "UTC", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=False,
            timeout=60,
        )
        if proc.returncode != 0 or "Performed actions" not in proc.stdout:
            raise RuntimeError(f"sieve-test failed for {script.name}: {proc.stderr.strip()}")
        return parse_output(proc.stdout)

    def run_many(self, pairs: list[tuple[Path, Path, str, str]], workers: int = 2) -> list[Outcome]:
        """Run many pairs, `workers` processes at a time (the machine has 2 cores)."""
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda p: self.run(*p), pairs))


@contextmanager
def pigeonhole(mailboxes: Iterable[str]) -> Iterator[Pigeonhole]:
    """A Pigeonhole setup in a fresh temp dir under /tmp (traversable by the test user)."""
    root = Path(tempfile.mkdtemp(prefix="popgate-sieve-", dir="/tmp"))
    try:
        yield Pigeonhole(root, mailboxes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
