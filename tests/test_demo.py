"""User story: a newcomer runs `make demo` on a fresh clone and reads mail in a client.

Runs the README's command in a copy of this checkout with no venv, so it proves the
set-up steps too (venv creation, install), then looks with curl and imaplib, and at the
web page whose address the banner prints.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.testing.ports import free_port

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow
SETUP_TIMEOUT = 600.0


def copy_checkout(dest: Path) -> None:
    """What a fresh clone would hold: tracked files plus new files not ignored."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def test_make_demo_on_a_fresh_checkout(tmp_path):
    clone = tmp_path / "popgate"
    copy_checkout(clone)
    assert not (clone / ".venv").exists()
    port = free_port()
    web_port = free_port()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["make", "demo", f"DEMO_ARGS=--port {port} --web-port {web_port} --interval 3"],
            cwd=clone,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT
        while b"popgate demo is running" not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "demo did not start in time"
            time.sleep(0.5)
        banner = log_path.read_text(errors="replace")
        assert f"127.0.0.1:{port}" in banner and "curl" in banner

        # the web page: its address is in the banner, and it answers with the sign-in page
        address = f"http://127.0.0.1:{web_port}/"
        assert address in banner
        with urllib.request.urlopen(address, timeout=20) as page:  # redirected to /signin
            assert page.geturl() == address + "signin"
            text = page.read().decode()
        assert 'name="password"' in text and 'name="csrf"' in text

        # the seeded mail arrives (first poll right after start)
        count = 0
        deadline = time.monotonic() + 60
        while count < 25 and time.monotonic() < deadline:
            imap = imaplib.IMAP4("127.0.0.1", port)
            imap.login("demo", "demo")
            count = int(imap.select("INBOX", readonly=True)[1][0])
            imap.logout()
            time.sleep(0.5)
        assert count >= 25

        # curl, as the banner says, lists the folders
        listing = subprocess.run(
            ["curl", "-s", "--max-time", "20", f"imap://demo:demo@127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "INBOX" in listing

        # new upstream mail keeps arriving (every 3 s here; the gateway polls every 15 s)
        deadline = time.monotonic() + 60
        newer = count
        while newer <= count and time.monotonic() < deadline:
            time.sleep(2)
            imap = imaplib.IMAP4("127.0.0.1", port)
            imap.login("demo", "demo")
            newer = int(imap.select("INBOX", readonly=True)[1][0])
            imap.logout()
        assert newer > count
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc in (0, 2, 130, -signal.SIGINT), log_path.read_text(errors="replace")[-3000:]
    assert "Traceback" not in log_path.read_text(errors="replace")
