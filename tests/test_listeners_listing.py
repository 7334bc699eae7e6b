"""Every configured listener is listed, with its kind (issue 20 item 12): `check-config`,
`popgate status` and the `service.built` event show IMAPS and ``[[listeners]]`` too, all from
one function (gateway/app/config/listeners.py served_listeners)."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock

from gateway.app import config, status
from gateway.app.config.listeners import ServedListener, served_listeners
from gateway.app.service import build_service
from gateway.cli import main as cli
from gateway.testing.ports import free_port
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import CA


def _config(tmp_path: Path, tls_ca: CA, ports: list[int]) -> Path:
    cert, key = tls_ca.issue(tmp_path / "certs")
    a, b, c, d = ports
    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\n'
        f'imap = ["tcp:{a}:interface=127.0.0.1"]\n'
        f'imaps = ["tcp:{b}:interface=127.0.0.1"]\n'
        f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
        f'[[listeners]]\nendpoint = "tcp:{c}:interface=127.0.0.1"\ntls = "implicit"\n'
        f'[[listeners]]\nendpoint = "tcp:{d}:interface=127.0.0.1"\nplaintext_auth = false\n'
    )
    os.chmod(path, 0o600)
    return path


def _expected(ports: list[int]) -> list[ServedListener]:
    a, b, c, d = ports
    kinds = ["imap", "imaps", "imaps", "imap"]
    return [
        ServedListener(kind, f"tcp:{port}:interface=127.0.0.1")
        for kind, port in zip(kinds, (a, b, c, d), strict=True)
    ]


def test_served_listeners_lists_imap_imaps_and_listener_tables(tmp_path, tls_ca) -> None:
    ports = [free_port() for _ in range(4)]
    cfg = config.load(_config(tmp_path, tls_ca, ports))
    assert list(served_listeners(cfg)) == _expected(ports)


def test_check_config_lists_every_listener(tmp_path, tls_ca, capsys) -> None:
    ports = [free_port() for _ in range(4)]
    assert cli.main(["check-config", str(_config(tmp_path, tls_ca, ports))]) == 0
    out = capsys.readouterr().out
    assert "listeners: " + ", ".join(str(x) for x in _expected(ports)) + ")" in out


def test_status_shows_every_listener_with_its_kind() -> None:
    source = status.StatusSource(
        reactor=Clock(),
        version="1",
        config_path="/etc/popgate/popgate.toml",
        state_dir="/var/lib/popgate",
        served_listeners=[("imap", "tcp:143"), ("imaps", "tcp:993"), ("imaps", "tcp:994")],
        factory=None,
        pollers={},
        store_path=None,
    )
    report = source.collect()
    assert report["listeners"]["served"] == [
        {"kind": "imap", "endpoint": "tcp:143"},
        {"kind": "imaps", "endpoint": "tcp:993"},
        {"kind": "imaps", "endpoint": "tcp:994"},
    ]
    assert report["listeners"]["imap"] == ["tcp:143"]
    assert "Listeners: imap tcp:143; imaps tcp:993, tcp:994" in status.render(report)


def test_service_built_event_lists_every_listener(tmp_path, tls_ca) -> None:
    ports = [free_port() for _ in range(4)]
    cfg = config.load(_config(tmp_path, tls_ca, ports))
    rt = ReactorThread.shared(global_reactor)
    with structlog.testing.capture_logs() as captured:
        top = rt.call(lambda: build_service(cfg, global_reactor))
    rt.call(lambda: top.store.close())
    (built,) = [e for e in captured if e["event"] == "service.built"]
    assert built["listeners"] == [str(x) for x in _expected(ports)]
