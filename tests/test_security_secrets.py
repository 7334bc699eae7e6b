"""Secrets stay secret: no password (IMAP or upstream, plain or base64 in SASL) in any
log output or reply, secret files refused unless 0600, and the state dir is 0700.

The fast tests capture every structlog event of an in-process server; the slow one runs
the real ``popgate serve`` with TLS, IMAPS, an upstream with a right and one with a wrong
password, failed and successful logins and a SIGHUP certificate reload, then scans the
process's whole log.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import shutil
import signal
import ssl
import stat
import time
from pathlib import Path

import pytest
import structlog

from gateway.app import config as configmod
from gateway.app.storage import prepare_state_dir
from gateway.security.passwords import hash_password
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.imapclient import PASSWORD, USER, ensure_reactor, running_server
from gateway.testing.ports import free_port
from gateway.testing.tlsca import CA


def _forms(secret: str, user: str = USER) -> list[str]:
    """The secret as it may leak: plain, and inside a base64 SASL PLAIN response."""
    sasl = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
    return [secret, sasl]


def test_no_password_in_captured_logs_or_replies(tmp_path: Path) -> None:
    wrong = "wrong-Passw0rd-xyzzy"
    with structlog.testing.capture_logs() as events, running_server(tmp_path, scrypt=True) as s:
        with s.connect() as client:
            client.greeting()
            replies = client.command("a", f"LOGIN {USER} {wrong}")
            replies += client.command("b", f"LOGIN nosuchuser {PASSWORD}")
            sasl = _forms(wrong)[1]
            replies += client.command("c", f"AUTHENTICATE PLAIN {sasl}")
            client.send(b"d AUTHENTICATE PLAIN\r\n")
            replies += client.read_line()
            client.send(_forms(PASSWORD)[1].encode() + b"\r\n")
            replies += client.read_until_tagged("d")
            assert b"d OK" in replies
    text = "\n".join(repr(e) for e in events)
    assert "imap.auth_failed" in text and "imap.login" in text  # the events were captured
    for secret in _forms(wrong) + _forms(PASSWORD):
        assert secret not in text
        assert secret.encode() not in replies


def test_secret_files_must_be_0600_and_are_named(tmp_path: Path) -> None:
    """Upstream passwords come only from files nobody else can read (the config too,
    when it holds one inline); the error names the file."""
    secret = tmp_path / "up.pass"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    text = f"""
[server]
state_dir = "{tmp_path}/state"
[users.alice]
password = "{hash_password("pw", salt=b"0123456789abcdef")}"
[[upstreams]]
name = "isp"
owner = "alice"
host = "pop.example.net"
username = "alice"
password_file = "{secret}"
"""
    path = tmp_path / "popgate.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(path)
    assert any(str(secret) in p and "0644" in p for p in e.value.problems)
    assert all("s3cret" not in p for p in e.value.problems)


def test_state_dir_is_created_0700_and_tightened(tmp_path: Path) -> None:
    fresh = prepare_state_dir(str(tmp_path / "new" / "state"))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert stat.S_IMODE(prepare_state_dir(str(loose)).stat().st_mode) == 0o700


# ---- the real process ----------------------------------------------------------------


def _serial(port: int, context: ssl.SSLContext) -> int:
    from cryptography import x509

    imap = imaplib.IMAP4_SSL("localhost", port, ssl_context=context)
    try:
        der = imap.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        imap.logout()


@pytest.mark.slow
def test_real_gateway_tls_reload_and_logs_free_of_secrets(tmp_path: Path, tls_ca: CA) -> None:
    from gateway.testing.fakepop3 import FakePOP3Server

    upstream_secret = "Upstream-Secret-42"
    stale_secret = "Stale-Upstream-Secret-77"
    imap_password = "Imap-Password-99"
    wrong_password = "Wrong-Imap-Password-13"
    reactor_thread = ensure_reactor()
    pop = FakePOP3Server(
        "alice-up", upstream_secret, messages=[b"Subject: hi\r\n\r\nbody\r\n"], sasl=()
    )
    listening = reactor_thread.call(lambda: pop.listen(reactor_thread.reactor))
    pop_port = listening.getHost().port
    cert, key = tls_ca.issue(tmp_path / "certs")
    imaps_port = free_port()
    up = {"owner": "alice", "host": "127.0.0.1", "port": pop_port, "tls": "none"}
    gw = GatewayProcess(
        tmp_path / "gw",
        users={"alice": imap_password},
        upstreams=[
            {**up, "name": "good", "username": "alice-up", "password": upstream_secret},
            {**up, "name": "stale", "username": "alice-up", "password": stale_secret},
        ],
        extra_server={"imaps": [f"tcp:{imaps_port}:interface=127.0.0.1"]},
    )
    with open(gw.config_path, "a") as f:
        f.write(f'\n[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
        f.write('\n[security]\nauth_penalty_initial = "0.1s"\nauth_penalty_max = "0.2s"\n')
    context = tls_ca.client_context()
    try:
        with gw:
            assert stat.S_IMODE(gw.state_dir.stat().st_mode) == 0o700
            gw.wait_for_event("pop3.fetched", timeout=60)
            plain = imaplib.IMAP4("127.0.0.1", gw.port)
            with pytest.raises(imaplib.IMAP4.error):
                plain.login("alice", wrong_password)
            plain.starttls(ssl_context=context)
            assert plain.login("alice", imap_password)[0] == "OK"
            plain.logout()
            secure = imaplib.IMAP4_SSL("localhost", imaps_port, ssl_context=context)
            with pytest.raises(imaplib.IMAP4.error):
                secure.authenticate("PLAIN", lambda _: f"\0alice\0{wrong_password}".encode())
            secure.authenticate("PLAIN", lambda _: f"\0alice\0{imap_password}".encode())
            assert secure.select("INBOX")[0] == "OK"

            before = _serial(imaps_port, context)
            new_cert, new_key = tls_ca.issue(tmp_path / "renewed")
            shutil.copy(new_cert, cert)
            shutil.copy(new_key, key)
            assert gw.process is not None
            gw.process.send_signal(signal.SIGHUP)
            gw.wait_for_event("tls.reloaded", timeout=30)
            assert _serial(imaps_port, context) != before
            assert secure.noop()[0] == "OK"  # the open connection kept its TLS session
            secure.logout()
            deadline = time.monotonic() + 30
            while not any(e.get("upstream") == "stale" for e in gw.events()):
                assert time.monotonic() < deadline, "no log event about the stale upstream"
                time.sleep(0.2)
    finally:
        reactor_thread.call(listening.stopListening)
    log = gw.log_text()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "imap.auth_failed" for e in events)
    for secret in (upstream_secret, stale_secret, imap_password, wrong_password):
        for form in _forms(secret, "alice") + _forms(secret, "alice-up"):
            assert form not in log, f"{form!r} leaked into the gateway log"
