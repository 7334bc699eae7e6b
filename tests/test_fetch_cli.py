"""`popgate fetch` (gateway.cli.fetch, gateway.app.fetchcmd): a pass triggered on the
running gateway through the control socket, its progress bar and summary, its exit status;
in-process against FakePOP3Server, and end to end with a real `popgate serve` and Dovecot."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor

from gateway.app.config import Upstream
from gateway.app.control import SOCKET_NAME, ControlService
from gateway.app.fetchcmd import fetch_handler
from gateway.cli import fetch as fetchcli
from gateway.cli import main as cli
from gateway.pop3.poller import UpstreamPoller
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.fakepop3 import FakePOP3Server
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.reactor_thread import ReactorThread


class MiniGateway:
    """Pollers for two fake upstreams and the control socket: the parts `fetch` uses."""

    def __init__(self, rt: ReactorThread, state_dir: Path) -> None:
        self.rt = rt
        self.state_dir = state_dir
        self.store = rt.call(SQLiteStore, state_dir / "store.db")
        self.servers = {
            "good": FakePOP3Server("u", "p", messages=samplemail.generate(12, seed=3)),
            "bad": FakePOP3Server("u", "p", messages=samplemail.generate(2, seed=4)),
        }
        self.ports = {n: rt.call(s.listen, global_reactor) for n, s in self.servers.items()}
        self.pollers = {}
        for name, port in self.ports.items():
            up = Upstream(
                name=name,
                owner="alice",
                host="127.0.0.1",
                port=port.getHost().port,
                tls="none",
                username="u",
                password="p" if name == "good" else "wrong",
                timeout=10.0,
            )
            self.pollers[name] = UpstreamPoller(
                up, self.store, reactor=global_reactor, first_delay=3600
            )
        self.control = ControlService(state_dir / SOCKET_NAME, reactor=global_reactor)
        self.control.register("fetch", fetch_handler(self.pollers))

        def start() -> None:
            for p in self.pollers.values():
                p.startService()
            self.control.startService()

        rt.call(start)

    def close(self) -> None:
        def stop() -> Any:
            for p in self.pollers.values():
                p.stopService()
            return self.control.stopService()

        self.rt.call(stop)
        for name, port in self.ports.items():
            self.rt.call(port.stopListening)
            self.rt.call(self.servers[name].when_idle)
        self.rt.call(self.store.close)


@pytest.fixture
def gateway(rt, state_dir) -> Iterator[MiniGateway]:
    g = MiniGateway(rt, state_dir)
    yield g
    g.close()


def run_fetch(state_dir: Path, upstream: str | None, *, tty: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = fetchcli.run(str(state_dir), upstream, out=out, err=err, tty=tty, timeout=30)
    return status, out.getvalue(), err.getvalue()


def test_fetch_one_upstream_prints_progress_and_a_summary_and_exits_zero(gateway) -> None:
    status, out, err = run_fetch(gateway.state_dir, "good")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("good: 12 new messages (")
    assert any(line.startswith("good [") and "12/12" in line for line in lines)
    assert err == ""
    again = run_fetch(gateway.state_dir, "good")
    assert again[0] == 0 and again[1].splitlines()[-1].startswith("good: 0 new messages")


def test_fetch_all_upstreams_exits_non_zero_when_one_fails(gateway) -> None:
    status, out, err = run_fetch(gateway.state_dir, None)
    assert status == 1
    assert "good: 12 new messages" in out
    assert err.startswith("bad: FAILED (auth): 127.0.0.1 refused the login")


def test_unknown_upstream_is_a_clear_error(gateway) -> None:
    status, _out, err = run_fetch(gateway.state_dir, "nope")
    assert status == 1
    assert "no upstream named 'nope' (configured: bad, good)" in err


def test_gateway_not_running_exits_3(state_dir) -> None:
    status, _out, err = run_fetch(state_dir, None)
    assert status == 3 and "popgate is not running (no control socket at" in err


def test_terminal_output_redraws_one_line_and_ends_it(gateway) -> None:
    status, out, _err = run_fetch(gateway.state_dir, "good", tty=True)
    assert status == 0
    bar, summary = out.rsplit("\n", 2)[0], out.rstrip("\n").rsplit("\n", 1)[1]
    assert bar.startswith("\r\x1b[K") and "\n" not in bar
    assert summary.startswith("good: 12 new messages")


def test_cli_subcommand_reads_the_state_dir_option(gateway, capsys) -> None:
    assert cli.main(["fetch", "--state-dir", str(gateway.state_dir), "-u", "good"]) == 0
    assert "good: 12 new messages" in capsys.readouterr().out


def test_progress_text_shows_count_bytes_and_rate() -> None:
    text = fetchcli.progress_text(
        {
            "upstream": "isp",
            "phase": "fetching",
            "received": 50,
            "to_fetch": 200,
            "bytes": 5 * 1024 * 1024,
            "elapsed": 2.0,
        }
    )
    assert text == "isp [######..................] 50/200 5.0 MB 25 msg/s 2.5 MB/s"


def test_plain_output_prints_a_line_every_n_messages_and_at_the_end() -> None:
    out = io.StringIO()
    view = fetchcli.ProgressView(out, tty=False)
    for i in range(1, 1201):
        view({"upstream": "x", "phase": "fetching", "received": i, "to_fetch": 1200})
    view({"upstream": "x", "phase": "done", "received": 1200, "to_fetch": 1200})
    counts = [line.split()[2] for line in out.getvalue().splitlines()]
    assert counts == ["1/1200", "501/1200", "1001/1200", "1200/1200"]


def test_summary_of_a_failed_pass_says_what_it_achieved() -> None:
    text = fetchcli.summary_text(
        {
            "upstream": "isp",
            "ok": False,
            "kind": "timeout",
            "error": "pop.example did not answer",
            "result": {"fetched": 3, "bytes": 2048, "seconds": 1.0, "backlog": 9},
        }
    )
    assert text.startswith("isp: FAILED (timeout): pop.example did not answer (before failing:")
    assert "3 new messages (2.0 KB)" in text and "9 left for the next pass" in text


@pytest.mark.slow
def test_popgate_fetch_against_a_running_gateway_and_dovecot(dovecot: Dovecot, tmp_path) -> None:
    upstream = {
        "name": "dove",
        "owner": "owner",
        "host": "127.0.0.1",
        "port": dovecot.pop3_port,
        "tls": "none",
        "username": "alice",
        "password": "secret",
        "poll_interval": "1h",
    }
    gw = GatewayProcess(tmp_path / "gw", users={"owner": "pw"}, upstreams=[upstream])
    with gw:
        gw.wait_for_event("pop3.fetched")
        dovecot.deliver_many("alice", samplemail.generate(30, seed=9))
        command = [sys.executable, "-m", "gateway", "fetch", "--config", str(gw.config_path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1].startswith("dove: 30 new messages")
        assert "30/30" in done.stdout
    stopped = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 3 and "popgate is not running" in stopped.stderr
