"""Operating popgate (issue 8): SIGHUP reload of the user table, and, end to end with the
real `popgate serve` process and a real Dovecot upstream, /metrics counters that move,
`popgate status --json`, and `popgate backup` taken during an active import."""

from __future__ import annotations

import imaplib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import structlog
from twisted.internet.testing import MemoryReactorClock

from gateway.app import config as configmod
from gateway.app import control
from gateway.app.service import build_service, reload
from gateway.cli import main as cli
from gateway.security.passwords import hash_password
from gateway.store.sqlite import SQLiteStore
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.ports import free_port

WAIT = 90.0
BIG = 3000
"""Messages in the import during which the backup is taken (each is its own fsynced
transaction, so the import lasts long enough to be caught in flight)."""


def upstream_entry(server, **extra) -> dict:
    """The Dovecot test account as a plain-POP3 upstream on loopback."""
    return {
        "name": "alice-isp",
        "owner": "alice",
        "host": "127.0.0.1",
        "port": server.pop3_port,
        "tls": "none",
        "username": "alice",
        "password": "secret",
        **extra,
    }


# ---- SIGHUP reload, in process ------------------------------------------------------------


def write_config(path: Path, users: dict[str, str], imap_port: int = 1143) -> None:
    lines = [
        "[server]",
        f'state_dir = "{path.parent / "state"}"',
        f'imap = ["tcp:{imap_port}:interface=127.0.0.1"]',
    ]
    for name, password in users.items():
        lines += [f"[users.{name}]", f'password = "{hash_password(password)}"']
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def built(tmp_path):
    cfg_path = tmp_path / "popgate.toml"
    write_config(cfg_path, {"alice": "pw-a"})
    top = build_service(configmod.load(cfg_path), MemoryReactorClock())
    yield cfg_path, top
    top.store.close()


def test_reload_swaps_the_user_table_in_place(built):
    cfg_path, top = built
    auth = top.imap_factory.authenticator
    assert auth.authenticate("alice", b"pw-a") == "alice"
    write_config(cfg_path, {"bob": "pw-b"})
    with structlog.testing.capture_logs() as events:
        assert reload(top) is True
    assert top.imap_factory.authenticator is auth  # same object: sessions keep theirs
    assert auth.authenticate("bob", b"pw-b") == "bob"
    assert auth.authenticate("alice", b"pw-a") is None
    (done,) = [e for e in events if e["event"] == "service.users_reloaded"]
    assert done["added"] == ["bob"] and done["removed"] == ["alice"]
    assert top.store.list_mailboxes("bob")  # bob's INBOX exists before his first login


def test_a_broken_config_on_reload_changes_nothing(built):
    cfg_path, top = built
    cfg_path.write_text("[server]\nstate_dirr = 1\n")
    with structlog.testing.capture_logs() as events:
        assert reload(top) is False
    assert top.imap_factory.authenticator.authenticate("alice", b"pw-a") == "alice"
    (failed,) = [e for e in events if e["event"] == "service.reload_failed"]
    assert any("state_dirr: unknown key" in p for p in failed["problems"])


def test_reload_says_which_changes_need_a_restart(built):
    cfg_path, top = built
    write_config(cfg_path, {"alice": "pw-a"}, imap_port=2143)
    with structlog.testing.capture_logs() as events:
        reload(top)
    (warning,) = [e for e in events if e["event"] == "service.reload_needs_restart"]
    assert "imap" in warning["changed"] and "users" not in warning["changed"]


def test_a_failing_reload_hook_does_not_stop_the_others(built):
    from gateway.app.service import add_reload_hook

    cfg_path, top = built
    seen = []

    def broken(cfg):
        raise RuntimeError("boom")

    top.reload_hooks.insert(0, ("broken", broken))
    add_reload_hook(top, "recorder", lambda cfg: seen.append(cfg.path))
    with structlog.testing.capture_logs() as events:
        assert reload(top) is False
    assert seen == [str(cfg_path)]
    assert any(e["event"] == "service.reload_hook_failed" for e in events)


# ---- end to end ----------------------------------------------------------------------------


def popgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scrape(port: int) -> dict[str, float]:
    """The exposition as ``{'name{labels}': value}`` (the line's text before the value;
    prometheus-client writes a sample's labels in alphabetical order)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def wait_until(predicate, what: str, gw: GatewayProcess, timeout: float = WAIT, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} within {timeout}s:\n{gw.log_text()[-4000:]}")


def importing(gw: GatewayProcess) -> bool:
    """A fetch pass is running and has stored part of its mail (asked over the socket)."""
    (up,) = control.request(gw.state_dir, {"command": "status"})["upstreams"]
    progress = up.get("progress") or {}
    return bool(up["in_flight"] and progress.get("stored"))


def status_json(gw: GatewayProcess) -> dict:
    out = popgate("status", "--json", "--config", str(gw.config_path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def enable_metrics(gw: GatewayProcess) -> int:
    port = free_port()
    with open(gw.config_path, "a") as f:
        f.write(f'\n[metrics]\nenabled = true\nlisten = "tcp:{port}:interface=127.0.0.1"\n')
    return port


@pytest.mark.slow
def test_metrics_status_and_backup_of_a_running_gateway(dovecot, tmp_path, capsys):
    from gateway.testing import samplemail

    dovecot.deliver_many("alice", samplemail.generate(5, seed=11))
    gw = GatewayProcess(
        tmp_path / "gw",
        users={"alice": "alice-password"},
        upstreams=[upstream_entry(dovecot, poll_interval="1h")],
    )
    metrics_port = enable_metrics(gw)
    fetched = 'popgate_fetched_messages_total{upstream="alice-isp"}'
    with gw:
        # -- metrics: the first pass's counters
        first = wait_until(
            lambda: (s := scrape(metrics_port)).get(fetched, 0) >= 5 and s, "5 fetched", gw
        )
        assert first['popgate_fetch_passes_total{result="ok",upstream="alice-isp"}'] >= 1
        assert first['popgate_upstream_last_success_timestamp_seconds{upstream="alice-isp"}'] > 0
        assert first["popgate_store_size_bytes"] > 0
        assert "popgate_reactor_lag_seconds_count" in first

        # -- IMAP activity moves the IMAP counters; a wrong password is an auth failure
        bad = imaplib.IMAP4("127.0.0.1", gw.port)
        with pytest.raises(imaplib.IMAP4.error):
            bad.login("alice", "wrong")
        bad.logout()
        imap = imaplib.IMAP4("127.0.0.1", gw.port)
        imap.login("alice", "alice-password")
        imap.select("INBOX")  # also asks the upstream for new mail (fetch on demand)

        # -- status over the control socket, while a client is connected
        status = status_json(gw)
        assert status["listeners"]["imap"] == [f"tcp:{gw.port}:interface=127.0.0.1"]
        assert status["listeners"]["metrics"] == f"tcp:{metrics_port}:interface=127.0.0.1"
        assert status["clients"]["by_user"] == {"alice": {"selected": 1}}
        (up,) = status["upstreams"]
        assert up["name"] == "alice-isp" and up["owner"] == "alice"
        assert up["last_success"] is not None and up["messages_fetched"] >= 5
        assert status["uptime_seconds"] > 0 and status["pid"] == gw.process.pid
        (alice,) = status["users"]
        assert alice["owner"] == "alice" and alice["messages"] >= 5
        table = popgate("status", "--config", str(gw.config_path))
        assert table.returncode == 0 and "alice-isp" in table.stdout

        # -- a big delivery upstream, fetched on demand: metrics move, backup during it
        dovecot.deliver_many("alice", samplemail.generate(BIG, seed=12))
        imap.noop()  # fetch on demand
        wait_until(
            lambda: importing(gw),
            "an import under way (some of the new mail stored)",
            gw,
            poll=0.02,
        )
        # `popgate backup`'s own code, run in this process so that it starts at once
        # (the import lasts about two seconds here; an interpreter start takes half of it)
        copy = tmp_path / "backup.sqlite3"
        assert cli.main(["backup", str(copy), "--config", str(gw.config_path)]) == 0
        assert "integrity ok" in capsys.readouterr().out

        after = wait_until(
            lambda: (s := scrape(metrics_port)).get(fetched, 0) >= 5 + BIG and s, "all fetched", gw
        )
        assert after[fetched] > first[fetched]
        assert after["popgate_imap_auth_failures_total"] >= 1
        assert after['popgate_imap_commands_total{command="SELECT",status="OK"}'] >= 1
        assert after["popgate_imap_connections_total"] >= 2
        assert (
            after['popgate_fetched_bytes_total{upstream="alice-isp"}']
            > first['popgate_fetched_bytes_total{upstream="alice-isp"}']
        )
        # and the command itself, as an operator runs it
        copy2 = tmp_path / "backup2.sqlite3"
        out = popgate("backup", str(copy2), "--config", str(gw.config_path))
        assert out.returncode == 0 and "integrity ok" in out.stdout, out.stderr
        imap.logout()

    # -- the backup is a consistent store: integrity ok, one ledger row per message,
    # and the messages read back whole
    conn = sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        messages = conn.execute("SELECT count(*) FROM mailbox_message").fetchone()[0]
        ledger = conn.execute("SELECT count(*) FROM ledger WHERE state = 'delivered'").fetchone()[0]
    finally:
        conn.close()
    assert 5 <= messages <= 5 + BIG and ledger == messages
    with SQLiteStore(copy) as store:
        inbox = store.get_mailbox("alice", "INBOX")
        rows = store.message_rows(inbox.id)
        assert len(rows) == messages
        for row in rows:
            raw = store.message_bytes(inbox.id, row.uid)
            assert b"\r\n\r\n" in raw  # header and body, as delivered
    assert "secret" not in gw.log_text() and "alice-password" not in gw.log_text()


@pytest.mark.slow
def test_sighup_reloads_users_without_dropping_connections(tmp_path):
    gw = GatewayProcess(tmp_path / "gw", users={"alice": "alice-password"})
    with gw:
        alice = imaplib.IMAP4("127.0.0.1", gw.port)
        alice.login("alice", "alice-password")
        alice.select("INBOX")
        text = gw.config_path.read_text()
        text += f'\n[users.bob]\npassword = "{hash_password("bob-password")}"\n'
        gw.config_path.write_text(text)
        os.chmod(gw.config_path, 0o600)
        gw.process.send_signal(signal.SIGHUP)
        event = gw.wait_for_event("service.users_reloaded")
        assert event["added"] == ["bob"]
        assert alice.noop()[0] == "OK"  # the existing connection lives on
        bob = imaplib.IMAP4("127.0.0.1", gw.port)
        assert bob.login("bob", "bob-password")[0] == "OK"
        bob.logout()
        alice.logout()


@pytest.mark.slow
def test_the_units_twistd_command_logs_json_lines_only_and_reloads_on_sighup(tmp_path):
    """The systemd unit's ExecStart, run here: every stdout line is JSON (Twisted's own
    events included), and SIGHUP reloads instead of killing the process."""
    unit = (Path(__file__).parent.parent / "systemd" / "popgate.service").read_text()
    (exec_start,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    argv = exec_start.removeprefix("ExecStart=").split()
    argv[0] = str(Path(sys.executable).parent / "twistd")
    gw = GatewayProcess(tmp_path / "gw", users={"alice": "alice-password"})
    argv[argv.index("--config") + 1] = str(gw.config_path)
    with open(gw.log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    gw.process = proc
    try:
        gw.wait_for_event("control.listening")
        proc.send_signal(signal.SIGHUP)
        gw.wait_for_event("service.reloaded")
        assert proc.poll() is None
    finally:
        gw.stop()
    lines = [line for line in gw.log_text().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") and json.loads(line) for line in lines), lines
    assert any(json.loads(line)["event"] == "twisted.log" for line in lines)  # routed, as JSON
