"""`popgate status`: what the gateway collects, the ring buffer of recent errors, the
table for humans, and the CLI talking to a real control socket."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import structlog
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from gateway.app import logs
from gateway.app.control import SOCKET_NAME, ControlService
from gateway.app.status import StatusSource, duration, render, upstream_state
from gateway.cli import main as cli
from gateway.imap.states import State
from gateway.pop3.poller import PollerHealth


def session(state: State, user: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(session=SimpleNamespace(state=state, user=user))


def poller_without_health_dict(name: str, **health) -> SimpleNamespace:
    up = SimpleNamespace(name=name, owner="bob", folder="INBOX", host="pop.example.net")
    return SimpleNamespace(upstream=up, health=PollerHealth(**health))


def source(clock: task.Clock, tmp_path: Path, **kwargs) -> StatusSource:
    store = tmp_path / "store.sqlite3"
    store.write_bytes(b"x" * 2048)
    defaults = dict(
        reactor=clock,
        version="1.2.3",
        config_path="/etc/popgate/popgate.toml",
        state_dir=str(tmp_path),
        imap_listeners=["tcp:1143:interface=127.0.0.1"],
        factory=SimpleNamespace(protocols=set()),
        pollers={},
        store_path=store,
    )
    defaults.update(kwargs)
    return StatusSource(**defaults)


def test_status_counts_clients_by_state_and_by_user(tmp_path):
    clock = task.Clock()
    factory = SimpleNamespace(
        protocols=[
            session(State.SELECTED, "alice"),
            session(State.AUTHENTICATED, "alice"),
            session(State.SELECTED, "bob"),
            session(State.NOT_AUTHENTICATED),
        ]
    )
    status = source(clock, tmp_path, factory=factory).collect()
    assert status["clients"]["total"] == 4
    assert status["clients"]["by_state"] == {
        "not authenticated": 1,
        "authenticated": 1,
        "selected": 2,
        "logout": 0,
    }
    assert status["clients"]["by_user"] == {
        "alice": {"selected": 1, "authenticated": 1},
        "bob": {"selected": 1},
    }


def test_status_reports_uptime_listeners_store_size_and_is_plain_json(tmp_path):
    clock = task.Clock()
    clock.advance(1000)
    src = source(clock, tmp_path, metrics_listener="tcp:9143:interface=127.0.0.1")
    clock.advance(3725)
    status = src.collect()
    assert status["uptime_seconds"] == 3725
    assert status["version"] == "1.2.3"
    assert status["pid"] == os.getpid()
    assert status["listeners"]["imap"] == ["tcp:1143:interface=127.0.0.1"]
    assert status["listeners"]["metrics"] == "tcp:9143:interface=127.0.0.1"
    assert status["store"]["size_bytes"] == 2048
    assert json.loads(json.dumps(status)) == status


def test_each_upstream_shows_its_health_and_when_it_polls_next(tmp_path):
    clock = task.Clock()
    clock.advance(500)
    pollers = {
        "bob-isp": poller_without_health_dict(
            "bob-isp",
            last_success=400.0,
            next_poll_at=560.0,
            fetched_total=12,
            bytes_total=3400,
            passes=3,
        ),
        "bob-work": poller_without_health_dict(
            "bob-work",
            consecutive_failures=2,
            last_error="pop.example.net: login refused",
            last_error_kind="auth",
            last_error_at=490.0,
            next_poll_at=620.0,
        ),
    }
    status = source(clock, tmp_path, pollers=pollers).collect()
    isp, work = status["upstreams"]
    assert isp["name"] == "bob-isp" and isp["state"] == "ok"
    assert isp["next_poll_in"] == 60 and isp["messages_fetched"] == 12
    assert work["state"] == "failing" and work["last_error_kind"] == "auth"
    assert work["next_poll_in"] == 120


def test_a_pollers_own_health_dict_is_used_when_it_has_one(tmp_path):
    class Poller:
        upstream = SimpleNamespace(owner="carol", folder="INBOX", host="h")

        def health_dict(self):
            return {"state": "fetching", "in_flight": True, "next_poll_at": None, "backlog": 4}

    status = source(task.Clock(), tmp_path, pollers={"c": Poller()}).collect()
    (up,) = status["upstreams"]
    assert up["state"] == "fetching" and up["backlog"] == 4 and up["next_poll_in"] is None


def test_upstream_state_words():
    assert upstream_state({"in_flight": True, "consecutive_failures": 3}) == "fetching"
    assert upstream_state({"consecutive_failures": 1, "last_success": 5.0}) == "failing"
    assert upstream_state({"last_success": 5.0}) == "ok"
    assert upstream_state({}) == "waiting"


# ---- recent errors ------------------------------------------------------------------------


def test_recent_errors_keep_only_the_last_warnings_and_errors_scrubbed():
    ring = logs.RecentErrors(size=3)
    out = io.StringIO()
    logs.configure("debug", "json", stream=out, recent=ring)
    try:
        log = structlog.get_logger("t")
        log.info("ignored.info", upstream="a")
        for i in range(5):
            log.warning("pop3.fetch_failed", upstream="a", attempt=i, password="hunter2")
        log.error("imap.boom", detail=object())
    finally:
        logs.configure_for_tests()
    kept = ring.snapshot()
    assert [e["event"] for e in kept] == ["pop3.fetch_failed", "pop3.fetch_failed", "imap.boom"]
    assert [e.get("attempt") for e in kept[:2]] == [3, 4]
    assert all(e.get("password") in (None, "***") for e in kept)
    assert "hunter2" not in json.dumps(kept)
    assert isinstance(kept[-1]["detail"], str)  # made JSON-safe
    assert kept[-1]["level"] == "error" and "timestamp" in kept[-1]


def test_status_includes_the_recent_errors(tmp_path):
    errors = [{"event": "pop3.fetch_failed", "level": "warning", "upstream": "x"}]
    status = source(task.Clock(), tmp_path, recent_errors=lambda: errors).collect()
    assert status["recent_errors"] == errors


# ---- the table ----------------------------------------------------------------------------


def test_the_table_shows_summary_upstreams_and_errors(tmp_path):
    clock = task.Clock()
    clock.advance(500)
    pollers = {
        "bob-work": poller_without_health_dict(
            "bob-work",
            consecutive_failures=2,
            last_error="login refused",
            last_error_kind="auth",
            next_poll_at=620.0,
        )
    }
    errors = [{"event": "pop3.fetch_failed", "level": "warning", "upstream": "bob-work"}]
    factory = SimpleNamespace(protocols=[session(State.SELECTED, "bob")])
    status = source(
        clock, tmp_path, pollers=pollers, factory=factory, recent_errors=lambda: errors
    ).collect()
    text = render(status)
    lines = text.splitlines()
    assert lines[0].startswith("popgate 1.2.3, up 0s")
    assert "Clients: 1 connected: bob (1 selected)" in text
    header = next(line for line in lines if line.startswith("UPSTREAM"))
    row = lines[lines.index(header) + 1]
    assert row.split()[:3] == ["bob-work", "bob/INBOX", "failing"]
    assert "in 2m 0s" in row and "auth: login refused" in row
    assert "Recent errors (last 1 of 1 kept):" in text
    assert "pop3.fetch_failed upstream=bob-work" in text


def test_durations_read_naturally():
    assert duration(5) == "5s"
    assert duration(125) == "2m 5s"
    assert duration(7260) == "2h 1m"
    assert duration(90000) == "1d 1h"
    assert duration(None) == "-"


# ---- the CLI over a real control socket ---------------------------------------------------


def test_cli_status_asks_the_running_gateway_over_the_control_socket(rt, state_dir, capsys):
    src = source(global_reactor, state_dir)
    control = ControlService(state_dir / SOCKET_NAME, reactor=global_reactor)
    control.register("status", src.handle)
    rt.call(control.startService)
    try:
        assert cli.main(["status", "--state-dir", str(state_dir), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["version"] == "1.2.3" and status["pid"] == os.getpid()
        assert cli.main(["status", "--state-dir", str(state_dir)]) == 0
        assert capsys.readouterr().out.startswith("popgate 1.2.3, up ")
    finally:
        rt.call(control.stopService)


def test_cli_status_says_when_the_gateway_is_not_running(state_dir, capsys):
    assert cli.main(["status", "--state-dir", str(state_dir)]) == 3
    assert "not running" in capsys.readouterr().err


def test_status_shows_each_users_folders_with_counts_and_sizes(tmp_path):
    """Issue 6: per user (and household), the folders with message counts and sizes."""
    from gateway.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        store.ensure_user("alice")
        inbox = store.get_mailbox("alice", "INBOX")
        store.append(inbox.id, b"Subject: a\r\n\r\nhello\r\n")
        store.append(inbox.id, b"Subject: b\r\n\r\nworld!\r\n", flags=["\\Seen"])
        source = StatusSource(
            reactor=task.Clock(),
            version="test",
            config_path="c.toml",
            state_dir=str(tmp_path),
            imap_listeners=[],
            factory=SimpleNamespace(protocols=()),
            pollers={},
            store_path=None,
            store=store,
            owners=lambda: ["alice"],
        )
        status = json.loads(json.dumps(source.collect()))
    finally:
        store.close()
    (alice,) = status["users"]
    assert alice["owner"] == "alice" and alice["messages"] == 2
    assert alice["size_bytes"] == len(b"Subject: a\r\n\r\nhello\r\n") + len(
        b"Subject: b\r\n\r\nworld!\r\n"
    )
    inbox_row = next(f for f in alice["mailboxes"] if f["mailbox"] == "INBOX")
    assert inbox_row == {
        "mailbox": "INBOX",
        "messages": 2,
        "unseen": 1,
        "size_bytes": alice["size_bytes"],
    }
    assert {f["mailbox"] for f in alice["mailboxes"]} >= {"INBOX", "Sent", "Trash"}
    text = render(status)
    assert "USER" in text and "alice" in text and "INBOX 2" in text


def test_a_version_given_as_a_callable_is_asked_at_the_first_status_only(tmp_path):
    asked = []

    def version() -> str:
        asked.append(1)
        return "4.5.6"

    status = source(task.Clock(), tmp_path, version=version)
    assert asked == []
    assert status.collect()["version"] == "4.5.6"
    assert status.collect()["version"] == "4.5.6"
    assert asked == [1]
