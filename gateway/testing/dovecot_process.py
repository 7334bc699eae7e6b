"""Process control of a Dovecot test instance: readiness probes and stopping its process group.

The master is started in its own session, so its process group holds exactly the processes
one instance started; these helpers find them in /proc (Linux only, like Dovecot's Debian
packages), signal them, and stop them without waiting on lingering login processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.testing.ports import LOOPBACK

MAIL_SERVICES = frozenset({"pop3", "imap", "lmtp", "indexer-worker", "doveadm"})
"""Services that write mail or indexes: stop() lets them exit on SIGTERM before any SIGKILL."""

POLL_INTERVAL = 0.02
"""Seconds between checks while waiting for a port or for processes to exit."""

REAP_GRACE = 0.1
"""Seconds the master gets to reap its exited children before the group gets SIGKILL."""


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the master, then make sure no process of this instance survives.

    The master leads its own session (start_new_session), so its process group holds
    exactly the processes this instance started. After SIGTERM the mail processes (the
    only ones that write mail and indexes) exit at once, but login processes can
    linger for seconds on half-open connections and the master then sleeps 1-6 s
    before exiting. Once no mail process is left nothing can be half-written, so the
    rest gets SIGKILL instead of a wait that would slow every test.
    """
    group = process.pid
    deadline = time.monotonic() + timeout
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        settled_at: float | None = None
        while process.poll() is None:
            now = time.monotonic()
            services = [
                service_of(command)
                for pid, command in group_members(group, zombies=True).items()
                if pid != group
            ]
            if any(service in MAIL_SERVICES for service in services):
                settled_at = None
            elif settled_at is None:
                settled_at = now
            # A short grace lets the master reap its exited children, which would
            # otherwise linger as zombies under PID 1.
            only_log = all(service == "log" for service in services)
            if settled_at is not None and (only_log or now - settled_at >= REAP_GRACE):
                break
            if now > deadline:
                break
            time.sleep(POLL_INTERVAL)
        signal_group(group, signal.SIGKILL)
        process.wait()
    while group_members(group):
        if time.monotonic() > deadline:
            signal_group(group, signal.SIGKILL)
            break
        time.sleep(POLL_INTERVAL)


def service_of(command: str) -> str:
    """The service name in a child's title ("dovecot-INSTANCE/imap-login [...]" -> "imap-login")."""
    _, _, title = command.partition("/")
    return title.split(" ", 1)[0]


def group_members(group: int, *, zombies: bool = False) -> dict[int, str]:
    """Processes of a process group, with their command lines (a zombie's is empty).

    Orphaned Dovecot children are reparented to PID 1, which may be slow to reap them;
    zombies hold nothing, so they only count when asked for. Reads /proc (Linux only,
    like Dovecot's Debian packages).
    """
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[2]) != group or (fields[0] == "Z" and not zombies):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, IndexError, ValueError):
            continue
        members[int(entry.name)] = command.decode(errors="replace")
    return members


def signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def answers(port: int, greeting: bytes | None) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            if greeting is None:
                return True
            return sock.recv(256).startswith(greeting)
    except OSError:
        return False
