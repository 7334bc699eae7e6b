"""``[server] managesieve`` in the config and the ``popgate sieve`` admin commands
(gateway/app/config/, gateway/cli/sieve.py), offline on a store file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.app import config
from gateway.cli.main import main
from gateway.security.passwords import hash_password
from gateway.store.sqlite import SQLiteStore
from gateway.testing.tlsca import CA

HASH = hash_password("pw")


def write_config(tmp_path: Path, server: str = "", extra: str = "") -> Path:
    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\n{server}\n'
        f'[users.alice]\npassword = "{HASH}"\n\n[shared.family]\nmembers = ["alice"]\n{extra}'
    )
    os.chmod(path, 0o600)
    return path


def test_managesieve_listeners_follow_the_imap_rule(tmp_path: Path) -> None:
    cfg = config.load(write_config(tmp_path, 'managesieve = ["tcp:4190:interface=127.0.0.1"]'))
    (listener,) = cfg.managesieve
    assert (listener.endpoint, listener.tls, listener.plaintext_auth, listener.local) == (
        "tcp:4190:interface=127.0.0.1",
        "starttls",
        True,
        True,
    )
    assert config.load(write_config(tmp_path)).managesieve == ()  # off by default


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ('["tcp:4190"]', "reachable from the network but no TLS"),
        ('["ssl:4190"]', "ManageSieve uses STARTTLS"),
        ("[4190]", "expected an endpoint string"),
    ],
)
def test_managesieve_listeners_refused(tmp_path: Path, value: str, complaint: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(write_config(tmp_path, f"managesieve = {value}"))
    assert any("managesieve[0]" in p and complaint in p for p in e.value.problems), e.value


def test_network_listener_with_tls_wants_starttls_before_passwords(
    tmp_path: Path, tls_ca: CA
) -> None:
    cert, key = tls_ca.issue(tmp_path / "certs")
    tls = f'\n[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    cfg = config.load(write_config(tmp_path, 'managesieve = ["tcp:4190"]', tls))
    assert [(m.plaintext_auth, m.local) for m in cfg.managesieve] == [(False, False)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["sieve", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_admin_commands_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path))
    rules = tmp_path / "rules.sieve"
    rules.write_text(
        'require ["fileinto", "imap4flags", "mailbox"];\nfileinto :create :flags "\\\\Flagged" "Work";\n'
    )
    bad = tmp_path / "bad.sieve"
    bad.write_text('keep;\nvacation "away";\n')
    assert run(capsys, "check", "-c", cfg, str(rules))[0] == 0
    status, _out, err = run(capsys, "check", "-c", cfg, str(bad))
    assert status == 1 and f"{bad}:2:1:" in err and "submission relay" in err
    assert run(capsys, "put", "-c", cfg, "alice", "bad", str(bad))[0] == 1
    assert run(capsys, "put", "-c", cfg, "alice", "rules", str(rules), "--activate")[0] == 0
    assert run(capsys, "list", "-c", cfg, "alice")[1] == "rules  (active)\n"
    assert run(capsys, "get", "-c", cfg, "alice", "rules")[1] == rules.read_text()
    mail = tmp_path / "m.eml"
    mail.write_bytes(b"From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n")
    assert run(capsys, "test", "-c", cfg, "alice", str(mail))[1] == (
        'fileinto :create "Work" flags (\\Flagged)\n'
    )
    other = tmp_path / "other.sieve"
    other.write_text("discard;\n")
    assert run(capsys, "test", "-c", cfg, "alice", str(mail), "--script", str(other))[1] == (
        "discard\n"
    )
    assert run(capsys, "delete", "-c", cfg, "alice", "rules")[0] == 1  # active: refused
    assert run(capsys, "activate", "-c", cfg, "alice", "--none")[0] == 0
    assert run(capsys, "delete", "-c", cfg, "alice", "rules")[0] == 0
    assert run(capsys, "list", "-c", cfg, "alice")[1] == ""
    # a household's script: only through the CLI, under shared:NAME
    assert run(capsys, "put", "-c", cfg, "shared:family", "house", str(rules), "--activate")[0] == 0
    store = SQLiteStore(tmp_path / "state" / "popgate.sqlite3")
    try:
        active = store.active_script("shared:family")
        assert active is not None and active.name == "house"
    finally:
        store.close()
    status, _out, err = run(capsys, "list", "-c", cfg, "mallory")
    assert status == 1 and "no user 'mallory'" in err


def test_run_needs_the_running_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path))
    (tmp_path / "state").mkdir(mode=0o700)
    status, _out, err = run(capsys, "run", "-c", cfg, "alice", "--mailbox", "INBOX")
    assert status == 3 and "not running" in err
