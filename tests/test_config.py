"""Config loading: every problem is reported as FILE: key: problem, nothing starts half-configured."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.app import config
from gateway.security.passwords import hash_password

HASH = hash_password("pw", salt=b"0123456789abcdef")


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "popgate.toml"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def secret_file(tmp_path: Path, mode: int = 0o600) -> Path:
    p = tmp_path / "up.pass"
    p.write_text("upstream-secret\n")
    os.chmod(p, mode)
    return p


def minimal(tmp_path: Path, upstream_extra: str = "", pwfile: Path | None = None) -> str:
    pwfile = pwfile or secret_file(tmp_path)
    return f"""
[server]
state_dir = "{tmp_path}/state"
imap = ["tcp:1143:interface=127.0.0.1"]

[users.alice]
password = "{HASH}"

[[upstreams]]
name = "alice-isp"
owner = "alice"
host = "pop.example.net"
username = "alice@example.net"
password_file = "{pwfile}"
{upstream_extra}
"""


def problems(path: Path) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    return e.value.problems


def test_valid_minimal_config_gets_documented_defaults(tmp_path):
    cfg = config.load(write(tmp_path, minimal(tmp_path)))
    (up,) = cfg.upstreams
    assert up.tls == "implicit" and up.port == 995
    assert up.password == "upstream-secret"
    assert up.poll_interval == 300 and up.keep_on_server is True and up.folder == "INBOX"
    assert cfg.users["alice"].password_hash == HASH
    assert cfg.imap == ("tcp:1143:interface=127.0.0.1",)


def test_starttls_defaults_to_port_110(tmp_path):
    cfg = config.load(write(tmp_path, minimal(tmp_path, 'tls = "starttls"')))
    assert cfg.upstreams[0].port == 110


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, minimal(tmp_path, "keep_on_sever = false"))
    assert problems(p) == [f"{p}: upstreams.alice-isp.keep_on_sever: unknown key"]


def test_bad_type_names_key_and_expected_type(tmp_path):
    p = write(tmp_path, minimal(tmp_path, 'keep_on_server = "no"'))
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: upstreams.alice-isp.keep_on_server: expected true or false")


def test_missing_required_key(tmp_path):
    p = write(tmp_path, minimal(tmp_path).replace('host = "pop.example.net"\n', ""))
    assert problems(p) == [f"{p}: upstreams.alice-isp.host: is required"]


def test_all_problems_reported_at_once(tmp_path):
    text = minimal(tmp_path, 'tls = "sometimes"\npoll_interval = "1s"\nbogus = 1')
    p = write(tmp_path, text)
    keys = sorted(m.split(": ")[1] for m in problems(p))
    assert keys == [
        "upstreams.alice-isp.bogus",
        "upstreams.alice-isp.poll_interval",
        "upstreams.alice-isp.tls",
    ]


def test_missing_password_file_is_an_error(tmp_path):
    text = minimal(tmp_path, pwfile=tmp_path / "nope.pass")
    msgs = problems(write(tmp_path, text))
    assert len(msgs) == 1 and "upstreams.alice-isp.password_file: cannot read" in msgs[0]


def test_group_readable_password_file_is_refused(tmp_path):
    pw = secret_file(tmp_path, mode=0o640)
    (msg,) = problems(write(tmp_path, minimal(tmp_path, pwfile=pw)))
    assert "password_file" in msg and "0640" in msg and "chmod 600" in msg


def test_inline_password_requires_private_config_file(tmp_path):
    text = minimal(tmp_path).replace("password_file = ", 'password = "x"\n#')
    (msg,) = problems(write(tmp_path, text, mode=0o644))
    assert "upstreams.password" in msg and "0644" in msg
    assert config.load(write(tmp_path, text, mode=0o600)).upstreams[0].password == "x"


def test_plaintext_refused_for_remote_host_but_allowed_on_loopback(tmp_path):
    (msg,) = problems(write(tmp_path, minimal(tmp_path, 'tls = "none"')))
    assert "upstreams.alice-isp.tls" in msg and "allow_plaintext" in msg
    text = minimal(tmp_path, 'tls = "none"\nallow_plaintext = true')
    assert config.load(write(tmp_path, text)).upstreams[0].allow_plaintext
    local = minimal(tmp_path, 'tls = "none"').replace("pop.example.net", "127.0.0.1")
    assert config.load(write(tmp_path, local)).upstreams[0].tls == "none"


def test_owner_must_be_a_user(tmp_path):
    text = minimal(tmp_path).replace('owner = "alice"', 'owner = "bob"')
    (msg,) = problems(write(tmp_path, text))
    assert "upstreams.alice-isp.owner: no such user 'bob'" in msg


def test_user_password_must_be_a_hash(tmp_path):
    text = minimal(tmp_path).replace(HASH, "plaintext")
    (msg,) = problems(write(tmp_path, text))
    assert "users.alice.password" in msg and "hash-password" in msg


def test_duplicate_upstream_names(tmp_path):
    text = minimal(tmp_path)
    block = text[text.index("[[upstreams]]") :]
    (msg,) = problems(write(tmp_path, text + block))
    assert "is used by another upstream" in msg


def test_bad_listener_endpoint(tmp_path):
    text = minimal(tmp_path).replace('"tcp:1143:interface=127.0.0.1"', '"carrier-pigeon:1"')
    (msg,) = problems(write(tmp_path, text))
    assert "server.imap[0]" in msg and "carrier-pigeon" in msg


def test_not_toml(tmp_path):
    p = write(tmp_path, "[server\n")
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: not valid TOML")


def test_missing_file(tmp_path):
    assert problems(tmp_path / "absent.toml") == [f"{tmp_path / 'absent.toml'}: file not found"]


@pytest.mark.parametrize(
    "text,seconds",
    [("5m", 300), ("30s", 30), ("1h", 3600), ("250ms", 0.25), (42, 42), ("1d", 86400)],
)
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text,size", [("64M", 64 << 20), ("512k", 512 << 10), (1000, 1000), ("1G", 1 << 30)]
)
def test_sizes(text, size):
    assert config.parse_size(text) == size


@pytest.mark.parametrize("bad", ["5 minutes", "-1", True, "m"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        config.parse_duration(bad)


EXAMPLE = Path(__file__).parent.parent / "conf" / "popgate.toml"


def test_example_config_documents_every_key():
    """conf/popgate.toml shows every key the loader accepts (and nothing it does not)."""
    source = "".join(p.read_text() for p in Path(config.__file__).parent.glob("*.py"))
    accepted = set(re.findall(r'\.get\(\s*"([a-z_]+)"', source))
    data = tomllib.loads(EXAMPLE.read_text())
    shown = set(data["server"]) | set(data["limits"]) | set(data["upstreams"][0])
    shown |= set(data["users"]["alice"]) | set(data["metrics"])
    shown |= set(data["submission"]) | set(data["upstreams"][0]["smtp"])
    shown |= set(data["debug"])
    text = EXAMPLE.read_text()
    commented = set(re.findall(r"^# ([a-z_]+) = ", text, re.M))
    tables = {"server", "limits", "users", "upstreams", "metrics", "tls", "security", "listeners"}
    tables.add("shared")  # [shared.NAME] tables, shown commented out
    tables.add("debug")
    tables |= {"store", "cluster"}
    missing = accepted - shown - commented - tables
    assert not missing, f"keys not documented in conf/popgate.toml: {sorted(missing)}"


def test_example_config_validates_once_its_files_exist(tmp_path):
    pw = secret_file(tmp_path)
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    text = EXAMPLE.read_text().replace("/etc/popgate/alice-isp.pass", str(pw))
    text = text.replace('# ca_file = "/etc/popgate/ca.pem"', f'ca_file = "{ca}"')
    cfg = config.load(write(tmp_path, text))
    assert cfg.upstreams[0].name == "alice-isp"


def test_check_config_command_exit_status_and_message(tmp_path):
    good = write(tmp_path, minimal(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(good)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "ok" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(minimal(tmp_path, "nonsense = 1"))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.strip() == f"{bad}: upstreams.alice-isp.nonsense: unknown key"
