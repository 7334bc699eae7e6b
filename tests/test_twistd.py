"""`twistd -n popgate --config FILE` runs the same service in the foreground (issue 2)."""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.security.passwords import hash_password
from gateway.testing.ports import free_port

pytestmark = pytest.mark.slow


def test_twistd_runs_popgate_in_the_foreground(tmp_path):
    port = free_port()
    cfg = tmp_path / "popgate.toml"
    cfg.write_text(
        f"""
[server]
state_dir = "{tmp_path / "state"}"
imap = ["tcp:{port}:interface=127.0.0.1"]
log_format = "json"

[users.alice]
password = "{hash_password("pw")}"
"""
    )
    os.chmod(cfg, 0o600)
    twistd = Path(sys.executable).parent / "twistd"
    log = open(tmp_path / "twistd.out", "wb")  # handed to the child
    proc = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "popgate", "--config", str(cfg)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "twistd.out").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "twistd.out").read_text()
                time.sleep(0.1)
        imap = imaplib.IMAP4("127.0.0.1", port)
        imap.login("alice", "pw")
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data == [b"0"]
        imap.logout()
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    # twistd ends with the signal it got (clean for systemd: SIGTERM is a success status)
    assert rc in (0, -signal.SIGTERM), (tmp_path / "twistd.out").read_text()


def test_twistd_reports_config_errors_and_exits_non_zero(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server]\nstate_dirr = '/tmp/x'\n")
    twistd = Path(sys.executable).parent / "twistd"
    out = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "popgate", "--config", str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert f"{cfg}: server.state_dirr: unknown key" in out.stdout + out.stderr
