"""A real Dovecot 2.3 POP3/IMAP server, run unprivileged under a temp dir, as a test peer.

popgate's upstream is a POP3 server; the tests talk to a real one instead of a fake so that
protocol details (RFC 1939 byte stuffing, RFC 2595 STLS, UIDL) are whatever a deployed server
does. The same instance serves IMAP (RFC 3501) as the reference server for benchmarks.

The instance is entirely private: its own config (never /etc/dovecot), its own base_dir and
state_dir, listeners on 127.0.0.1 at free ports, and every process runs as one unprivileged
system user (Dovecot refuses to open mailboxes as uid 0). Facts this relies on are in
/work/shared/DOVECOT-NOTES.md; the ones that bite are commented where they are used.

This module owns the instance's life (directories, users, mail delivery, start and stop);
:mod:`gateway.testing.dovecot_config` writes its dovecot.conf and
:mod:`gateway.testing.dovecot_process` probes and stops its processes.
"""

from __future__ import annotations

import atexit
import datetime as dt
import email.parser
import email.utils
import math
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.testing.dovecot_config import dovecot_conf
from gateway.testing.dovecot_process import POLL_INTERVAL, answers, group_members, terminate
from gateway.testing.ports import LOOPBACK, free_port
from gateway.testing.tlsca import CA, DEFAULT_SERVER_NAMES, make_ca

DOVECOT_PACKAGES: tuple[str, ...] = ("dovecot-core", "dovecot-pop3d", "dovecot-imapd")
"""Debian packages that provide the master, the POP3 server and the IMAP server."""

DEBIAN_LIBEXEC = Path("/usr/lib/dovecot")
"""Where Debian puts the per-protocol executables (pop3 from dovecot-pop3d, imap from -imapd)."""

TEST_USER = "popgate-test"
"""System user every Dovecot process runs as when the tests run as root."""

START_TIMEOUT = 15.0
"""Seconds to wait for all listeners to answer before declaring the start failed."""

STOP_TIMEOUT = 10.0
"""Upper bound in seconds on stop(): whatever is still alive then gets SIGKILL."""

PORT_ATTEMPTS = 3
"""Start attempts with fresh ports when another process grabbed a port in between."""

LOG_TAIL_LINES = 40
"""Lines of Dovecot's log quoted in start errors."""

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}$")
_MAILDIR_HOST = "popgate-test"
_DATE_HEADER_PARSER = email.parser.BytesHeaderParser()


class DovecotError(Exception):
    """Base class for errors of the Dovecot test harness."""


class DovecotNotInstalled(DovecotError):
    """The dovecot binaries are missing: CI must install the Debian packages, not skip."""


class DovecotStartError(DovecotError):
    """Dovecot exited or never answered on its ports; the message quotes its log."""


def _packages_hint() -> str:
    return "install the Debian packages: apt-get install " + " ".join(DOVECOT_PACKAGES)


def find_dovecot() -> str:
    """Return the path of the `dovecot` master binary, or raise DovecotNotInstalled.

    On Debian's layout the POP3 and IMAP executables are checked too, because a missing
    dovecot-pop3d only shows up as a confusing runtime error inside Dovecot's log.
    """
    binary = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    if binary is None:
        raise DovecotNotInstalled(f"dovecot binary not found; {_packages_hint()}")
    if DEBIAN_LIBEXEC.is_dir():
        for executable, package in (("pop3", "dovecot-pop3d"), ("imap", "dovecot-imapd")):
            if not (DEBIAN_LIBEXEC / executable).exists():
                raise DovecotNotInstalled(
                    f"{DEBIAN_LIBEXEC / executable} missing (package {package}); {_packages_hint()}"
                )
    return binary


def ensure_test_user() -> pwd.struct_passwd:
    """Return the account Dovecot runs as, creating the system user once when root.

    As root that is TEST_USER (created with useradd --system if missing); otherwise the
    current user, since an unprivileged process cannot switch users anyway.
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # A concurrent test process may have created it first; pwd is the arbiter.
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        raise DovecotError(
            f"could not create system user {TEST_USER}: {result.stderr.strip()}"
        ) from None


def _timestamp(when: dt.datetime | float) -> float:
    """Seconds since the epoch; a naive datetime is taken as UTC (as samplemail does)."""
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    return float(when)


def _date_of(raw: bytes) -> float | None:
    """The message's Date: header as a timestamp, or None when absent or unparseable."""
    header_end = raw.find(b"\r\n\r\n")
    if header_end < 0:
        header_end = raw.find(b"\n\n")
    head = raw if header_end < 0 else raw[:header_end]
    value = _DATE_HEADER_PARSER.parsebytes(head).get("Date")
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


_running: weakref.WeakSet[Dovecot] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Last-resort cleanup if a test run is interrupted before its fixtures finalise."""
    for instance in list(_running):
        instance.stop()


class Dovecot:
    """One private Dovecot instance: POP3 (STLS), POP3S, IMAP (STARTTLS) and IMAPS on loopback.

    Construction prepares the temp dir, TLS files and ports; `start()` launches the server;
    `stop()` ends every process and removes the dir. Use it as a context manager:

        with Dovecot() as server:
            server.add_user("alice", "secret")
            server.deliver("alice", raw)
            poplib.POP3(server.host, server.pop3_port)

    `cert_names` are the names in the server certificate (pass ["wrong.example"] to test
    verification failures); `ca` shares one CA between instances; `extra_config` is appended
    to dovecot.conf verbatim (benchmarks use it to raise process limits).
    """

    host: str = LOOPBACK

    def __init__(
        self,
        *,
        ca: CA | None = None,
        cert_names: Sequence[str] = DEFAULT_SERVER_NAMES,
        extra_config: str = "",
        parent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._binary = find_dovecot()
        self._account = ensure_test_user()
        self._switch_user = os.geteuid() == 0 and self._account.pw_uid != 0
        self._extra_config = extra_config
        self._process: subprocess.Popen[bytes] | None = None
        self.master_pid: int | None = None
        """PID of the last started master; also the process group of all its children."""
        self._users: dict[str, str] = {}
        self._sequence = 0
        self._users_stamp = 0.0
        # Maildir names start with a seconds field that Dovecot sorts new mail by when it
        # assigns UIDs; a strictly increasing value keeps UID order == delivery order.
        self._name_clock = int(time.time())
        if parent_dir is None:
            # Under root the default temp dir could be inside /root, which the unprivileged
            # Dovecot user cannot traverse.
            parent_dir = "/tmp" if self._switch_user else tempfile.gettempdir()
        self.dir = Path(tempfile.mkdtemp(prefix="popgate-dovecot-", dir=parent_dir))
        try:
            self.conf_path = self.dir / "dovecot.conf"
            self.log_path = self.dir / "dovecot.log"
            self.output_path = self.dir / "dovecot.out"
            self.users_path = self.dir / "users"
            self.base_dir = self.dir / "run"
            self.state_dir = self.dir / "state"
            self.mail_dir = self.dir / "mail"
            for directory in (self.base_dir, self.state_dir, self.mail_dir):
                directory.mkdir()
            self.ca = ca if ca is not None else make_ca(self.dir / "ca")
            self.cert_path, self.key_path = self.ca.issue(
                self.dir / "tls", cert_names, stem="server"
            )
            self._write_users()
            self._pick_ports()
            self._chown_tree(self.dir)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Dovecot:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def processes(self) -> dict[int, str]:
        """Live processes of the last started instance (pid -> title); empty after stop()."""
        return {} if self.master_pid is None else group_members(self.master_pid)

    def start(self) -> Dovecot:
        """Launch Dovecot and wait until every listener answers; raise DovecotStartError."""
        if self.running:
            return self
        if not self.dir.is_dir():
            raise DovecotError("this instance was stopped and its directory removed")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._launch()
                return self
            except DovecotStartError as error:
                if attempt == PORT_ATTEMPTS or "Address already in use" not in str(error):
                    raise
                self._pick_ports()
        raise AssertionError("unreachable")

    def restart(self) -> Dovecot:
        """Stop and start again on the same ports, keeping users and mail."""
        self.stop(keep_dir=True)
        return self.start()

    def stop(self, *, keep_dir: bool = False) -> None:
        """End all Dovecot processes, then remove the directory unless `keep_dir`.

        Safe to call more than once and on an instance that never started.
        """
        process = self._process
        self._process = None
        _running.discard(self)
        if process is not None:
            terminate(process, STOP_TIMEOUT)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- users and mail ----------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add (or re-password) a passwd-file user with a PLAIN password and an empty Maildir.

        Dovecot notices the changed users file by itself, but stats it at most once per
        second of its clock; while running, this therefore returns only once a new second
        has begun, so the next login sees the change.
        """
        if not _USER_NAME.match(name):
            raise ValueError(f"unsupported user name {name!r}")
        if any(c in password for c in ":\r\n"):
            raise ValueError("passwd-file passwords cannot contain ':' or line breaks")
        self._users[name] = password
        maildir = self.maildir(name)
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self._chown_tree(self.mail_dir / name)
        self._write_users()
        if self.running:
            now = time.time()
            time.sleep(math.floor(now) + 1.0 - now)

    def maildir(self, user: str) -> Path:
        """The user's Maildir (mail_location = maildir:~/Maildir, home = mail/<user>)."""
        return self.mail_dir / user / "Maildir"

    def deliver(self, user: str, raw: bytes, *, when: dt.datetime | float | None = None) -> str:
        """Put one message into the user's INBOX (Maildir/new); return its file name.

        Written to tmp/ then renamed into new/ so Dovecot never sees half a file (the
        Maildir delivery protocol). The file's mtime becomes INTERNALDATE: `when` if
        given, else the message's Date: header, else now. No ,S=/,W= size fields go in
        the name: Dovecot would trust them for LIST and RFC822.SIZE.
        """
        if user not in self._users:
            raise KeyError(f"no such user {user!r}; call add_user first")
        maildir = self.maildir(user)
        self._sequence += 1
        name = (
            f"{self._name_clock + self._sequence}.P{os.getpid()}Q{self._sequence}.{_MAILDIR_HOST}"
        )
        temporary = maildir / "tmp" / name
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if self._switch_user:
                os.fchown(fd, self._account.pw_uid, self._account.pw_gid)
            view = memoryview(raw)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        stamp = _timestamp(when) if when is not None else _date_of(raw)
        if stamp is not None:
            os.utime(temporary, (stamp, stamp))
        os.rename(temporary, maildir / "new" / name)
        return name

    def deliver_many(
        self,
        user: str,
        messages: Iterable[bytes],
        *,
        whens: Iterable[dt.datetime | float | None] | None = None,
    ) -> list[str]:
        """Deliver messages in order (UIDs follow this order); return their file names."""
        if whens is None:
            return [self.deliver(user, raw) for raw in messages]
        return [
            self.deliver(user, raw, when=when) for raw, when in zip(messages, whens, strict=True)
        ]

    def maildir_count(self, user: str) -> int:
        """Messages in the user's INBOX on disk (new/ and cur/), whatever Dovecot has seen."""
        maildir = self.maildir(user)
        return sum(
            1 for sub in ("new", "cur") for entry in (maildir / sub).iterdir() if entry.is_file()
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of Dovecot's log, for assertion messages."""
        return _tail(self.log_path, lines)

    # -- internals ---------------------------------------------------------------------

    def _pick_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        self.pop3_port, self.pop3s_port, self.imap_port, self.imaps_port = sorted(ports)
        self._write_config()

    def _chown_tree(self, root: Path) -> None:
        if not self._switch_user:
            return
        uid, gid = self._account.pw_uid, self._account.pw_gid
        os.chown(root, uid, gid)
        for parent, dirs, files in os.walk(root):
            for entry in (*dirs, *files):
                os.chown(os.path.join(parent, entry), uid, gid, follow_symlinks=False)

    def _write_users(self) -> None:
        """passwd-file format (user:password, scheme=PLAIN as the default scheme)."""
        text = "".join(f"{name}:{password}\n" for name, password in self._users.items())
        temporary = self.users_path.with_suffix(".tmp")
        temporary.write_text(text)
        if self._switch_user:
            os.chown(temporary, self._account.pw_uid, self._account.pw_gid)
        # Dovecot re-reads the file when its mtime changes; two edits within one second
        # must still look different, so the stamp only ever moves forward.
        self._users_stamp = max(time.time(), self._users_stamp + 1.0)
        os.utime(temporary, (self._users_stamp, self._users_stamp))
        os.replace(temporary, self.users_path)

    def _write_config(self) -> None:
        self.conf_path.write_text(dovecot_conf(self, self._account, self._extra_config))
        if self._switch_user:
            os.chown(self.conf_path, self._account.pw_uid, self._account.pw_gid)

    def _launch(self) -> None:
        """Run `dovecot -F -c CONF` as the test user and wait for the listeners.

        -F keeps the master in the foreground as our child, so we can wait for it and
        reap it. Its output goes to a file: Dovecot keeps stderr open for its whole life,
        and a pipe would block whoever reads it.
        """
        environment = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if "TZ" in os.environ:
            environment["TZ"] = os.environ["TZ"]
        switch: dict[str, object] = {}
        if self._switch_user:
            switch = {
                "user": self._account.pw_uid,
                "group": self._account.pw_gid,
                "extra_groups": [],
            }
        with open(self.output_path, "wb") as output:
            process = subprocess.Popen(
                [self._binary, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=environment,
                start_new_session=True,
                **switch,  # type: ignore[arg-type]
            )
        self._process = process
        self.master_pid = process.pid
        _running.add(self)
        try:
            self._wait_ready(process)
        except BaseException:
            self._process = None
            _running.discard(self)
            terminate(process, STOP_TIMEOUT)
            raise

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait for each port; the plaintext ones must also send their greeting.

        A greeting means the login process reached the auth service, i.e. really ready
        (RFC 1939 §4 "+OK", RFC 3501 §7.1.1 "* OK").
        """
        deadline = time.monotonic() + START_TIMEOUT
        pending = [
            (self.pop3_port, b"+OK"),
            (self.imap_port, b"* OK"),
            (self.pop3s_port, None),
            (self.imaps_port, None),
        ]
        while pending:
            if process.poll() is not None:
                raise DovecotStartError(self._start_failure(f"exited with {process.returncode}"))
            if time.monotonic() > deadline:
                raise DovecotStartError(
                    self._start_failure(f"no answer within {START_TIMEOUT:g}s on {pending}")
                )
            port, greeting = pending[0]
            if answers(port, greeting):
                pending.pop(0)
            else:
                time.sleep(POLL_INTERVAL)

    def _start_failure(self, what: str) -> str:
        return (
            f"Dovecot {what} (config {self.conf_path}).\n"
            f"--- output ---\n{_tail(self.output_path)}\n"
            f"--- log ---\n{_tail(self.log_path)}"
        )
